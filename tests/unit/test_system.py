"""What machine this is, and the guard against a llama.cpp build made for another CPU."""

import json

import pytest

from quickdraft import system
from quickdraft.errors import BuildMismatchError


def test_cpu_info_names_its_instruction_sets_in_a_fixed_order():
    cpu = system.cpu_info()
    assert cpu.cores >= 1 and cpu.model
    assert list(cpu.isa) == [f for f in system.ISA_FLAGS if f in cpu.flags]
    assert cpu.signature.startswith(f"{__import__('platform').machine()}-") and len(cpu.signature.split("-")[-1]) == 10


def test_cpus_with_the_same_instruction_sets_share_a_signature():
    a = system.CpuInfo("A", "AuthenticAMD", frozenset({"avx2", "fma", "vmx"}), 2, 26, 2)
    b = system.CpuInfo("B", "AuthenticAMD", frozenset({"avx2", "fma", "hypervisor"}), 8, 26, 2)
    c = system.CpuInfo("C", "AuthenticAMD", frozenset({"avx2", "fma", "avx_vnni"}), 2, 26, 2)
    assert a.signature == b.signature != c.signature  # flags that change no code do not count
    assert a.name == "A (Zen 5, family 26 model 2)"
    assert system.CpuInfo("X", "GenuineIntel", frozenset(), 2, 6, 143).microarchitecture == "Sapphire Rapids"


@pytest.fixture()
def stamped(tmp_path, monkeypatch):
    """A fake installed llama_cpp whose build stamp the test writes."""
    monkeypatch.setattr(system, "llama_package_dir", lambda: tmp_path)

    def write(instruction_sets):
        (tmp_path / system.LLAMA_STAMP).write_text(json.dumps(
            {"variant": "native", "cpu_model": "Some CPU", "signature": "x86_64-0", "cmake_args": "",
             "instruction_sets": instruction_sets, "llama_cpp_python": "0.3.36"}))
    return write


def test_a_build_for_a_cpu_with_more_instruction_sets_is_refused_before_it_runs(stamped):
    stamped([*system.cpu_info().isa, "amx_fp99"])
    assert system.llama_build_mismatch() == ["amx_fp99"]
    with pytest.raises(BuildMismatchError, match="amx_fp99.*make install"):
        system.check_llama_build()


def test_a_build_for_this_cpu_or_an_unstamped_one_runs(stamped, tmp_path):
    system.check_llama_build()  # no stamp: a build from elsewhere is trusted as is
    assert "not built by quickdraft" in system.describe_llama_build()
    stamped(list(system.cpu_info().isa))
    system.check_llama_build()
    assert "native build for Some CPU" in system.describe_llama_build()


def test_calibration_lives_where_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.setenv("QUICKDRAFT_CALIBRATION", str(tmp_path / "cal"))
    assert system.calibration_dir() == tmp_path / "cal"
    monkeypatch.delenv("QUICKDRAFT_CALIBRATION")
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path / "cache"))
    assert system.calibration_dir() == tmp_path / "cache" / "calibration"


def test_the_makefile_can_run_system_py_as_a_script_in_a_bare_interpreter():
    """The Makefile runs ``python quickdraft/system.py`` before anything is installed: the script's
    folder then comes first on sys.path, so a module of ours named like a standard one (a
    ``types.py`` once) shadows it. ``-S`` skips site, as a fresh venv with no .pth files does."""
    import subprocess
    import sys
    from pathlib import Path

    run = subprocess.run([sys.executable, "-S", str(Path(system.__file__)), "signature"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == system.cpu_info().signature


def test_no_module_of_ours_shadows_a_standard_module():
    import sys
    from pathlib import Path

    root = Path(system.__file__).parent
    names = {p.stem for p in root.rglob("*.py")} | {p.name for p in root.rglob("*") if p.is_dir()}
    assert not names & set(sys.stdlib_module_names)


def test_the_installed_build_carries_every_patch_of_the_checkout():
    """The Makefile patches llama-cpp-python's vendored llama.cpp (patches/llama.cpp) and records
    which patches went in; a build that lacks one (made before it, or by pip alone) is named."""
    build = system.llama_build()
    if build is None:
        pytest.skip("llama-cpp-python was not built by quickdraft's Makefile")
    here = system.llama_patches()
    assert here, "the checkout's patches/llama.cpp is empty"
    assert build.get("patches") == here, "rebuild: make install-dev"
    assert f"{len(here)} patch" in system.describe_llama_build()
