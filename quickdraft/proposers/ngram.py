"""Prompt lookup decoding (Saxena 2023): copy what followed an earlier occurrence of the
context's last few tokens."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..types import Acceptance, Draft
from .base import register


def ngram_match(context: Sequence[int], budget: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Tokens that followed the most recent earlier occurrence of the longest matching suffix.

    Tries suffix lengths from ``max_ngram`` down to ``min_ngram``; for the first length with an
    earlier occurrence (the most recent one wins), returns up to ``budget`` tokens after it.

    Example: context = [1, 2, 3, 9, 1, 2], budget 2 -> suffix [1, 2] occurred at index 0,
    followed by [3, 9] -> returns [3, 9]. With no earlier occurrence of any suffix -> [].
    """
    n = len(context)
    if budget <= 0 or n < 2:
        return []
    ctx = np.asarray(context)
    for size in range(min(max_ngram, n - 1), min_ngram - 1, -1):
        suffix = ctx[n - size:]
        # windows[i] = ctx[i : i + size] for i in 0 .. n - size - 1 (excluding the suffix itself)
        windows = np.lib.stride_tricks.sliding_window_view(ctx[:n - 1], size)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + size
            return [int(t) for t in ctx[start:start + budget]]
    return []


@register("ngram")
class NgramProposer:
    """Deterministic drafts from the context itself; costs microseconds, no second model."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, **_: object) -> None:
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def begin(self, prompt: Sequence[int]) -> None:
        pass

    def propose(self, context, budget, sampling, rng) -> Draft:
        return Draft(tuple(ngram_match(context, budget, self.max_ngram, self.min_ngram)))

    def observe(self, acceptance: Acceptance) -> None:
        pass
