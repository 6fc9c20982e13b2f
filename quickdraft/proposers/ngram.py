"""Prompt lookup decoding (Saxena 2023): copy what followed an earlier occurrence of the
context's last few tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..backends.base import TREE
from ..errors import InvalidParameterError
from ..tree import trie
from ..records import Draft
from .base import BaseProposer, ProposerSpec


def ngram_match(context: Sequence[int], budget: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Tokens that followed the most recent earlier occurrence of the longest matching suffix.

    Tries suffix lengths from ``max_ngram`` down to ``min_ngram``; for the first length with an
    earlier occurrence (the most recent one wins), returns up to ``budget`` tokens after it.

    Example: context = [1, 2, 3, 9, 1, 2], budget 2 -> suffix [1, 2] occurred at index 0,
    followed by [3, 9] -> returns [3, 9]. With no earlier occurrence of any suffix -> [].
    """
    found = ngram_continuations(context, budget, max_ngram, min_ngram, branches=1)
    return found[0] if found else []


def ngram_continuations(context: Sequence[int], length: int, max_ngram: int = 3, min_ngram: int = 1,
                        branches: int = 4) -> list[list[int]]:
    """Up to ``branches`` distinct continuations (each up to ``length`` tokens) of earlier
    occurrences of the context's suffix, best first: longer matching suffixes first, and for one
    suffix length the most recent occurrence first.

    Example: context = [1, 2, 3, 9, 1, 2, 4, 1, 2], length 2 -> [[4, 1], [3, 9]]: the suffix
    [1, 2] occurred at 4 and at 0; the suffix [2] then only repeats those continuations.
    """
    n = len(context)
    found: list[list[int]] = []
    if length <= 0 or n < 2:
        return found
    ctx = np.asarray(context)
    for size in range(min(max_ngram, n - 1), min_ngram - 1, -1):
        suffix = ctx[n - size:]
        # windows[i] = ctx[i : i + size] for i in 0 .. n - size - 1 (excluding the suffix itself)
        windows = np.lib.stride_tricks.sliding_window_view(ctx[:n - 1], size)
        for hit in np.flatnonzero((windows == suffix).all(axis=1))[::-1]:
            start = int(hit) + size
            cont = [int(t) for t in ctx[start:start + length]]
            if cont not in found:
                found.append(cont)
                if len(found) == branches:
                    return found
    return found


@dataclass(frozen=True)
class NgramOptions:
    """``max_ngram`` .. ``min_ngram``: the suffix lengths matched, longest first."""

    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise InvalidParameterError(f"ngram lengths need 1 <= min_ngram <= max_ngram, got "
                                        f"{self.min_ngram} and {self.max_ngram}", param="min_ngram")


@dataclass(frozen=True)
class NgramTreeOptions(NgramOptions):
    """``branches``: how many earlier continuations are merged into one tree at most."""

    branches: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.branches < 1:
            raise InvalidParameterError(f"branches must be >= 1, got {self.branches}", param="branches")


class NgramProposer(BaseProposer):
    """Deterministic drafts from the context itself; costs microseconds, no second model."""

    def __init__(self, options: NgramOptions) -> None:
        self.options = options

    def propose(self, context, budget, sampling, rng) -> Draft:
        return Draft(tuple(ngram_match(context, budget, self.options.max_ngram, self.options.min_ngram)))


class NgramTreeProposer(BaseProposer):
    """Several earlier continuations of the context's suffix merged into one token tree
    (``ngram_continuations`` -> ``trie``): when the context repeated itself in more than one way,
    the target checks every way in the same forward. ``budget`` is the number of tree nodes; a
    single continuation gives a plain chain. Deterministic (q is None), siblings distinct."""

    def __init__(self, options: NgramTreeOptions) -> None:
        self.options = options

    def propose(self, context, budget, sampling, rng) -> Draft:
        o = self.options
        found = ngram_continuations(context, budget, o.max_ngram, o.min_ngram, o.branches)
        if len(found) <= 1:
            return Draft(tuple(found[0]) if found else ())
        tokens, parents = trie(found, budget)
        return Draft(tokens, None, parents=parents)


NGRAM = ProposerSpec("ngram", "prompt lookup: copies what followed the last 1-3 tokens earlier in the context",
                     make=lambda resources, memory, options: NgramProposer(options), options=NgramOptions,
                     tree_variant="ngram-tree")
NGRAM_TREE = ProposerSpec("ngram-tree", "prompt lookup drafting a tree of several earlier continuations",
                          make=lambda resources, memory, options: NgramTreeProposer(options),
                          options=NgramTreeOptions, requires=frozenset({TREE}))
