"""Where `make llama-server` puts llama.cpp's own server, and that Python looks in the same place."""

import re
from pathlib import Path

from quickdraft.bench import llamacpp_server
from quickdraft.system import cpu_info

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_the_makefiles():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^LLAMA_CPP_VERSION\s*:=\s*(\S+)", makefile, re.MULTILINE).group(1) == llamacpp_server.LLAMA_CPP_VERSION
    assert "build/llama.cpp-$(LLAMA_CPP_VERSION)-$(CPU_SIGNATURE)" in makefile
    assert "$(LLAMA_CPP_DIR)/.built" in makefile


def test_the_server_is_found_only_in_a_finished_build_for_this_cpu(tmp_path):
    assert llamacpp_server.llama_server_path(tmp_path) is None
    build = tmp_path / "build" / f"llama.cpp-{llamacpp_server.LLAMA_CPP_VERSION}-{cpu_info().signature}"
    (build / "bin").mkdir(parents=True)
    (build / "bin" / "llama-server").write_text("")
    assert llamacpp_server.llama_server_path(tmp_path) is None  # no stamp: the build did not finish
    (build / ".built").write_text("")
    assert llamacpp_server.llama_server_path(tmp_path) == build / "bin" / "llama-server"
    other = tmp_path / "build" / f"llama.cpp-{llamacpp_server.LLAMA_CPP_VERSION}-x86_64-0000000000"
    assert llamacpp_server.llama_cpp_build_dir(tmp_path) != other
