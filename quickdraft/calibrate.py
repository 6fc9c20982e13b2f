"""The backend's cost curve: target forward time for k new tokens, and the draft's per-token time.

On a GPU the curve is nearly flat (verifying 8 tokens costs about one step); on a CPU it is not,
and that decides whether speculation pays. Measurements are interleaved over k and repeated;
each point reports median, min and max.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from statistics import median
from typing import Sequence

import numpy as np

from .models import cache_dir


def time_forward(backend, context: Sequence[int], k: int) -> float:
    """Seconds for one forward of k new tokens after ``context`` (then rolled back)."""
    backend.prefill(context)
    new = [context[i % len(context)] for i in range(k)]
    start = time.perf_counter()
    backend.forward(new)
    elapsed = time.perf_counter() - start
    backend.rollback(len(context))
    return elapsed


def calibrate(target, context: Sequence[int], draft=None, ks: Sequence[int] = range(1, 17),
              repeats: int = 5, seed: int = 0, on_step=lambda: None) -> dict:
    """Measure the target's forward time for each k in ``ks`` (and the draft's one-token time)
    after ``context``, in a shuffled order per repeat. Returns the ``calibration`` object of
    results.json."""
    rng = np.random.default_rng(seed)
    times: dict[int, list[float]] = {k: [] for k in ks}
    draft_times: list[float] = []
    time_forward(target, context, 1)  # warm-up
    for _ in range(repeats):
        for k in rng.permutation(list(ks)):
            times[int(k)].append(time_forward(target, context, int(k)))
            on_step()
        if draft is not None:
            draft_times.append(time_forward(draft, context, 1))
    med = [median(times[k]) for k in ks]
    return {
        "context_tokens": len(context),
        "target": {"k": list(ks), "median_s": med, "min_s": [min(times[k]) for k in ks],
                   "max_s": [max(times[k]) for k in ks], "relative": [m / med[0] for m in med]},
        "draft": {"token_s": median(draft_times), "relative_to_target_step": median(draft_times) / med[0]}
        if draft_times else None,
    }


# What the curve is measured after: a few hundred tokens of code.
CONTEXT_TEXT = "def merge_sorted(a, b):\n    result = []\n    i = j = 0\n" * 24


def relative_cost(backend, max_k: int = 16, repeats: int = 1, tag: str = "") -> list[float]:
    """The backend's relative forward cost curve (index k: k + 1 new tokens), measured now and
    cached for its model and thread count (and ``tag``: the backend kind and dtype when not
    llama.cpp), unless a cached one exists. A one-repeat curve takes about 20 one-token steps;
    ``quickdraft calibrate`` measures a careful one."""
    cached = cached_relative_cost(backend.path, backend.n_threads, tag)
    if cached is not None and len(cached) > max_k:
        return cached
    context = backend.tokenize(CONTEXT_TEXT, special=False)
    result = calibrate(backend, context, ks=range(1, max_k + 2), repeats=repeats)
    save_calibration(result, calibration_path(backend.path, backend.n_threads, tag))
    return result["target"]["relative"]


def calibration_path(model_path: Path, n_threads: int | None, tag: str = "") -> Path:
    """Where a model's curve is cached for this machine and thread count (``tag``: e.g.
    ``torch-bfloat16`` for another backend; llama.cpp's curves have none)."""
    tag = f"-{tag}" if tag else ""
    return cache_dir() / "calibration" / f"{Path(model_path).stem}{tag}-threads{n_threads or 'default'}.json"


def save_calibration(calibration: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration, indent=1))


def cached_relative_cost(model_path: Path, n_threads: int | None, tag: str = "") -> list[float] | None:
    """The cached curve's relative costs (index k: k + 1 new tokens), or None if not calibrated."""
    path = calibration_path(model_path, n_threads, tag)
    try:
        return json.loads(path.read_text())["target"]["relative"]
    except (OSError, ValueError, KeyError):
        return None
