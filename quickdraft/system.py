"""What machine this is: the CPU and its instruction sets, the cores we may use, where caches live.

A neutral module: it imports nothing else of quickdraft (the Makefile runs it as a script before
anything is installed: ``python3 quickdraft/system.py signature``), and every layer may import it.

Instruction sets matter because llama.cpp is compiled for the machine it is built on (see the
Makefile): a build is only safe on a CPU that has every instruction set the build machine had.
:func:`cpu_info` reads them from ``/proc/cpuinfo``; :data:`ISA_FLAGS` lists the ones a compiler
may use, and ``CpuInfo.signature`` names that set, so a build (or a cached measurement) made on
another kind of CPU is never mistaken for this one's.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

# x86 instruction-set extensions as /proc/cpuinfo names them, the ones `gcc -march=native` may
# enable (ordered roughly by age). Flags not listed (vmx, hypervisor, ...) do not change code.
ISA_FLAGS = (
    "sse", "sse2", "pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "aes", "pclmulqdq", "avx", "f16c",
    "fma", "fma4", "xop", "sse4a", "abm", "bmi1", "bmi2", "movbe", "adx", "rdrand", "rdseed", "sha_ni", "avx2",
    "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi", "avx512_vbmi2",
    "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq", "avx512_bf16", "avx512_vp2intersect",
    "avx512_fp16", "gfni", "vaes", "vpclmulqdq", "avx_vnni", "avx_vnni_int8", "avx_ifma", "avx_ne_convert",
    "amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "avx10",
)
# The ones worth naming to a user (what llama.cpp's kernels are chosen by).
NOTABLE_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vnni",
                 "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


# (vendor, family, models) -> microarchitecture, for the CPUs we meet (a guess for reports only).
_MICROARCHITECTURES = (
    ("AuthenticAMD", 25, range(0x10, 0x20), "Zen 4"), ("AuthenticAMD", 25, range(0x60, 0x80), "Zen 4"),
    ("AuthenticAMD", 25, range(0xA0, 0xB0), "Zen 4"), ("AuthenticAMD", 25, range(0x00, 0x60), "Zen 3"),
    ("AuthenticAMD", 26, range(0x00, 0x100), "Zen 5"), ("AuthenticAMD", 23, range(0x00, 0x100), "Zen 1/2"),
    ("GenuineIntel", 6, (143,), "Sapphire Rapids"), ("GenuineIntel", 6, (207,), "Emerald Rapids"),
    ("GenuineIntel", 6, (173, 174), "Granite Rapids"), ("GenuineIntel", 6, (106, 108), "Ice Lake"),
    ("GenuineIntel", 6, (85,), "Skylake/Cascade Lake"),
)


@dataclass(frozen=True)
class CpuInfo:
    """``model``: the CPU's marketing name; ``flags``: every flag the kernel reports; ``family`` and
    ``model_number``: what cpuid says (None where unknown)."""

    model: str
    vendor: str
    flags: frozenset[str]
    cores: int  # cores this process may run on
    family: int | None = None
    model_number: int | None = None

    @property
    def microarchitecture(self) -> str | None:
        return next((name for vendor, family, models, name in _MICROARCHITECTURES
                     if (vendor, family) == (self.vendor, self.family) and self.model_number in models), None)

    @property
    def name(self) -> str:
        """'AMD EPYC (Zen 5, family 26 model 2)': the marketing name, which says little in a VM, and
        what cpuid says."""
        if self.family is None:
            return self.model
        arch = f"{self.microarchitecture}, " if self.microarchitecture else ""
        return f"{self.model} ({arch}family {self.family} model {self.model_number})"

    @property
    def isa(self) -> tuple[str, ...]:
        """The instruction-set extensions of :data:`ISA_FLAGS` this CPU has, in that order."""
        return tuple(f for f in ISA_FLAGS if f in self.flags)

    @property
    def notable(self) -> tuple[str, ...]:
        return tuple(f for f in NOTABLE_FLAGS if f in self.flags)

    @property
    def signature(self) -> str:
        """A short name for the instruction-set set: equal for CPUs a build can be shared by.
        Example: ``x86_64-5f3a9c1e2b``."""
        digest = hashlib.sha256(" ".join(self.isa).encode()).hexdigest()[:10]
        return f"{platform.machine()}-{digest}"

    def to_dict(self) -> dict:
        return {"model": self.name, "vendor": self.vendor, "cores": self.cores, "signature": self.signature,
                "instruction_sets": list(self.notable)}


def default_threads() -> int:
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def hand_over_compute() -> bool:
    """Free the calling thread's OpenMP team before other threads compute from now on; True when
    there was an OpenMP runtime (libgomp, which llama.cpp's CPU kernels run on) to ask.

    libgomp keeps one team of threads per thread that ever computed, idle for as long as that
    thread lives. While the threads of every team outnumber the cores, each team waits at its
    barriers by sleeping instead of spinning, and a decode passes hundreds of barriers: after one
    decode on the main thread (loading, calibrating), every later 1-token decode on the server's
    worker took ~40% longer (median 27.0 -> 38.8 ms; handed over 28.3; AMD Zen 5, 2 threads:
    ``scripts/thread_handover.py``).
    ``omp_pause_resource_all`` ends the calling thread's team; a later decode there builds a new one.
    """
    import ctypes

    try:  # only an OpenMP runtime already loaded (RTLD_NOLOAD): never load one for this
        gomp = ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except (OSError, AttributeError):  # not loaded, or not on Linux
        return False
    gomp.omp_pause_resource_all(2)  # omp_pause_hard; refused (-1) inside a parallel region
    return True


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (from /proc/cpuinfo on Linux; elsewhere only its name, no flags)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if not line.strip():
                break  # the first processor is enough
            fields.setdefault(key, value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    number = lambda key: int(fields[key]) if fields.get(key, "").isdigit() else None  # noqa: E731
    return CpuInfo(model=model, vendor=fields.get("vendor_id", ""), flags=frozenset(fields.get("flags", "").split()),
                   cores=default_threads(), family=number("cpu family"), model_number=number("model"))


def cache_dir() -> Path:
    """Where assembled models and other downloads live: ``$QUICKDRAFT_CACHE``, else ``~/.cache/quickdraft``."""
    return Path(os.environ.get("QUICKDRAFT_CACHE") or "~/.cache/quickdraft").expanduser()


def calibration_dir() -> Path:
    """Where measured cost curves and tolerances live: ``$QUICKDRAFT_CALIBRATION``, else
    ``<cache>/calibration``. They are keyed by CPU and build, so another machine never reads them;
    the test suite points this at an empty directory."""
    override = os.environ.get("QUICKDRAFT_CALIBRATION")
    return Path(override).expanduser() if override else cache_dir() / "calibration"


# --- the llama.cpp build ------------------------------------------------------------------------
# `make` compiles llama-cpp-python for the CPU at hand and then writes this stamp into the installed
# package (see the Makefile): which CPU, which instruction sets, which CMake arguments.
LLAMA_STAMP = "quickdraft-build.json"


def llama_package_dir() -> Path | None:
    """Where llama_cpp is installed (found, not imported: importing it runs its code), or None."""
    spec = importlib.util.find_spec("llama_cpp")
    return Path(spec.origin).parent if spec and spec.origin else None


def quickdraft_version() -> str:
    try:
        return importlib.metadata.version("quickdraft")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def llama_version() -> str | None:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def llama_build() -> dict | None:
    """The stamp of quickdraft's build of llama.cpp, or None (a build from elsewhere)."""
    where = llama_package_dir()
    try:
        return json.loads((where / LLAMA_STAMP).read_text()) if where else None
    except (OSError, ValueError):
        return None


def describe_llama_build() -> str:
    """One line for reports: the version and what the build is for."""
    stamp, version = llama_build(), llama_version()
    if stamp is None:
        return f"llama-cpp-python {version} (not built by quickdraft's Makefile: instruction sets unknown)"
    patches = stamp.get("patches") or []
    digest = hashlib.sha256("\n".join(patches).encode()).hexdigest()[:8]  # calibrations of other patches differ
    patched = (f", {len(patches)} patch{'es' * (len(patches) != 1)} to llama.cpp (patches/llama.cpp, {digest})"
               if patches else "")
    return f"llama-cpp-python {version}, {stamp['variant']} build for {stamp['cpu_model']} ({stamp['signature']}){patched}"


def llama_build_mismatch() -> list[str]:
    """The instruction sets quickdraft's llama.cpp build was compiled with that this CPU lacks
    (empty when it is safe to run, or when there is no stamp)."""
    stamp = llama_build()
    if stamp is None:
        return []
    return [flag for flag in stamp["instruction_sets"] if flag not in cpu_info().flags]


def check_llama_build() -> None:
    """Refuse a llama.cpp build made for a CPU with instruction sets this one lacks: run before any
    of llama.cpp's code, which would otherwise die of "Illegal instruction" somewhere in it."""
    missing = llama_build_mismatch()
    if missing:
        from .errors import BuildMismatchError

        raise BuildMismatchError(
            f"llama-cpp-python in this environment was built for another CPU ({llama_build()['cpu_model']}): "
            f"this one ({cpu_info().name}) lacks {', '.join(missing)}. Rebuild it here: `make install` (or "
            f"`make test`) does, or delete the virtual environment and run make again.")


def native_build_dir(name: str, version: str, root: Path | None = None) -> Path:
    """``<root>/build/<name>-<version>-<cpu signature>``: where the Makefile builds ``name`` for this
    kind of CPU (root: this checkout), so a build made for another CPU is never found."""
    return (root or Path(__file__).resolve().parents[1]) / "build" / f"{name}-{version}-{cpu_info().signature}"


def batch_invariant_llama_dir(root: Path | None = None) -> Path:
    """Where ``make batch-invariant`` puts the batch-invariant build of llama.cpp's libraries for this
    CPU (``<checkout>/build/llama-invariant-<llama-cpp-python version>-<signature>/lib``)."""
    return native_build_dir("llama-invariant", llama_version(), root) / "lib"


def use_batch_invariant_llama() -> Path:
    """Make llama_cpp load the batch-invariant build of llama.cpp (``make batch-invariant``: the same
    version without llamafile's GEMM kernels) instead of its own libraries, through
    llama-cpp-python's ``LLAMA_CPP_LIB_PATH``. It must run before llama_cpp is imported."""
    from .errors import QuickdraftError  # not at the top: the Makefile runs this file before installing

    libs = batch_invariant_llama_dir()
    if not (libs / "libllama.so").is_file():
        raise QuickdraftError(f"the batch-invariant build of llama.cpp is not here ({libs}): run `make batch-invariant`",
                              param="batch_invariant")
    loaded = sys.modules.get("llama_cpp.llama_cpp")
    if loaded is not None and Path(loaded._base_path) != libs:
        raise QuickdraftError("llama.cpp is loaded already (its own build): choose batch-invariant mode before "
                              "any model is loaded in this process", param="batch_invariant")
    os.environ["LLAMA_CPP_LIB_PATH"] = str(libs)
    return libs


def llama_patches() -> list[str]:
    """This checkout's patches to llama.cpp (``patches/llama.cpp/*.patch``, which the Makefile
    applies before building), sorted as the Makefile applies them: each its file name and the
    start of its contents' SHA-256 ("0004-x.patch 1f2e3d4c5b6a"), so an edited patch is another."""
    folder = Path(__file__).resolve().parents[1] / "patches" / "llama.cpp"
    return [f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()[:12]}" for p in sorted(folder.glob("*.patch"))]


def write_llama_build_stamp(variant: str, cmake_args: str) -> Path:
    """Record that the installed llama_cpp was just built on this CPU, and with which of our patches
    to llama.cpp (``patches/llama.cpp``; run by the Makefile)."""
    where = llama_package_dir()
    if where is None:
        raise SystemExit("llama_cpp is not installed in this environment")
    cpu = cpu_info()
    stamp = {"variant": variant, "cpu_model": cpu.name, "signature": cpu.signature,
             "instruction_sets": list(cpu.isa), "cmake_args": cmake_args, "llama_cpp_python": llama_version(),
             "patches": llama_patches()}
    (where / LLAMA_STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    return where / LLAMA_STAMP


if __name__ == "__main__":  # used by the Makefile, before quickdraft itself is installed
    if sys.argv[1:] == ["signature"]:
        print(cpu_info().signature)
    elif sys.argv[1:2] == ["stamp-llama"] and len(sys.argv) == 4:
        print(f"wrote {write_llama_build_stamp(sys.argv[2], sys.argv[3])}")
    else:
        sys.exit("usage: python3 quickdraft/system.py signature | stamp-llama VARIANT CMAKE_ARGS")
