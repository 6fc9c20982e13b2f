"""Acceptance rules: pure functions ``verify(draft, target_logits, sampling, rng) -> Acceptance``.

``target_logits`` is [n + 1, V]: row i is the target's prediction after the context plus the
first i draft tokens, so row i judges draft token i and row n gives the bonus token. For a tree
draft, row j is the prediction after tree node j (node 0 the pending token), see tree.py.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..sampling import SamplingParams
from ..records import Acceptance, Draft
from .greedy import verify_greedy
from .rejection import verify_rejection
from .tree import verify_tree_greedy, verify_tree_sampling

Verifier = Callable[[Draft, np.ndarray, SamplingParams, np.random.Generator], Acceptance]


def select(sampling: SamplingParams, *, tree: bool = False) -> Verifier:
    """The lossless rule for these sampling params and draft shape: exact match when greedy,
    else rejection sampling (multi-draft for a tree)."""
    if tree:
        return verify_tree_greedy if sampling.greedy else verify_tree_sampling
    return verify_greedy if sampling.greedy else verify_rejection


__all__ = ["Verifier", "select", "verify_greedy", "verify_rejection", "verify_tree_greedy",
           "verify_tree_sampling"]
