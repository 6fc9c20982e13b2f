"""Pure summaries of benchmark samples (see the schema in ``quickdraft.bench``)."""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import median
from typing import Iterable, Sequence

CHECK_KINDS = ("exact", "near-tie", "real divergence")
AR_METHOD = "ar"  # plain decoding: every speedup is against it
WARM = " (warm)"  # the suffix of a method's warm rows: after the task's earlier prompt-turns
EXACT = "exact"  # the lossless acceptance rule: its rows carry the method's name alone


def run_label(method: str, rule: str = EXACT) -> str:
    """A bench row's name: the method, and the acceptance rule unless it is the lossless one.

    Example: run_label("draft") == "draft"; run_label("draft", "typical") == "draft (typical)".
    """
    return method if rule == EXACT else f"{method} ({rule})"


def unit_key(sample: dict) -> tuple:
    """The prompt-turn a sample answers: samples with the same key share a prompt."""
    return sample["task"], sample["prompt_id"], sample["turn"]


def sample_key(sample: dict) -> tuple:
    """Identifies one run: resume skips samples whose key is already recorded."""
    return (*unit_key(sample), sample["repeat"], sample["method"])


def seconds_per_token(sample: dict) -> float:
    return sample["decode_time_s"] / max(sample["new_tokens"], 1)


def with_speedups(samples: Sequence[dict]) -> list[dict]:
    """Copies of ``samples`` with ``speedup`` = AR seconds per token / the sample's, pairing each
    sample with the ``ar`` sample of the same prompt-turn and repeat (None while that is missing).

    Per-token times make the ratio fair when a near-tie made the two outputs differ in length.
    """
    ar = {sample_key(s)[:-1]: s for s in samples if s["method"] == AR_METHOD}
    out = []
    for s in samples:
        base = ar.get(sample_key(s)[:-1])
        speedup = seconds_per_token(base) / seconds_per_token(s) if base and seconds_per_token(s) > 0 else None
        out.append({**s, "speedup": speedup})
    return out


def geometric_mean(values: Iterable[float | None]) -> float | None:
    """Geometric mean of the positive values (None and NaN skipped); None if there are none.

    Example: geometric_mean([1, 4, None]) == 2.0.
    """
    logs = [math.log(v) for v in values if v is not None and v > 0]
    return math.exp(sum(logs) / len(logs)) if logs else None


def summarize(samples: Sequence[dict]) -> list[dict]:
    """One row per (task, method), in first-seen order; samples must carry ``speedup``."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for s in samples:
        groups[s["task"], s["method"]].append(s)
    return [_row(task, method, group) for (task, method), group in groups.items()]


def _row(task: str, method: str, group: list[dict]) -> dict:
    by_unit: dict[tuple, list[float]] = defaultdict(list)
    for s in group:
        if s.get("speedup") is not None:
            by_unit[unit_key(s)].append(s["speedup"])
    unit_speedups = [median(v) for v in by_unit.values()]
    drafted = _sum_lists(s.get("drafted_by_position", []) for s in group)
    accepted = _sum_lists(s.get("accepted_by_position", []) for s in group)
    tps = [s["tokens_per_second"] for s in group]
    total = lambda key: sum(s[key] for s in group)  # noqa: E731
    checks = {kind: sum(1 for s in group if (s.get("check") or {}).get("result") == kind) for kind in CHECK_KINDS}
    return {
        "task": task, "method": method,
        "prompts": len({unit_key(s) for s in group}), "samples": len(group),
        "speedup": geometric_mean(unit_speedups),
        "speedup_median": median(unit_speedups) if unit_speedups else None,
        "speedup_min": min(unit_speedups) if unit_speedups else None,
        "speedup_max": max(unit_speedups) if unit_speedups else None,
        "mean_accepted_length": (total("new_tokens") + sum(s.get("ended_on_eos", False) for s in group))
        / max(total("target_forwards"), 1),
        "acceptance_rate": total("accepted_tokens") / total("drafted_tokens") if total("drafted_tokens") else 0.0,
        "acceptance_by_position": [a / d if d else 0.0 for a, d in zip(accepted, drafted)],
        "tokens_per_second": median(tps), "tokens_per_second_min": min(tps), "tokens_per_second_max": max(tps),
        "draft_time_s": total("draft_time_s"), "verify_time_s": total("verify_time_s"),
        "checks": checks,
        "valid": sum(1 for s in group if s.get("valid")),  # answers valid against their schema
        "constrained": sum(1 for s in group if s.get("valid") is not None),  # of those that had one
        "lossless": all(s.get("lossless", True) for s in group),
        "tv_per_token": tv_per_token(group),
    }


def tv_per_token(samples: Sequence[dict]) -> float | None:
    """How far a lossy rule's outputs moved from plain sampling: the samples' total variation
    summed over their tokens, per token (verifiers/typical.py); None when every sample is lossless.

    Example: 10 tokens at 0.02 and 30 at 0.06 per token -> 0.05.
    """
    lossy = [s for s in samples if not s.get("lossless", True)]
    tokens = sum(s["new_tokens"] for s in lossy)
    return sum(s["tv_per_token"] * s["new_tokens"] for s in lossy) / tokens if tokens else None


def _sum_lists(lists: Iterable[list[int]]) -> list[int]:
    """Element-wise sum of lists of different lengths: [[1, 2], [3]] -> [4, 2]."""
    out: list[int] = []
    for values in lists:
        out += [0] * (len(values) - len(out))
        for i, v in enumerate(values):
            out[i] += v
    return out
