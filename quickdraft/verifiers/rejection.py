"""Lossless rejection sampling for a chain draft (Leviathan et al. 2023; Chen et al. 2023).

Terms: p is the target's warped distribution, q the proposer's, both from the same
:func:`~quickdraft.sampling.warp`. Draft token x (drawn from q) is accepted with probability
min(1, p(x) / q(x)); at the first rejection the *recovered* token is drawn from the residual
norm(max(0, p - q)); after a fully accepted draft the *bonus* token is drawn from p. Each emitted
token is then distributed exactly as p given the tokens before it.
"""

from __future__ import annotations

import numpy as np

from ..sampling import SamplingParams, sample, warp
from ..records import Acceptance, Draft


def residual(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """norm(max(0, p - q)) for [V] rows; falls back to p if the difference vanishes numerically
    (it cannot when a rejection happened, since then p(x) < q(x) for the drafted x)."""
    r = np.maximum(p - q, 0.0)
    total = r.sum()
    return r / total if total > 0 else p


def verify_rejection(draft: Draft, target_logits: np.ndarray, sampling: SamplingParams,
                     rng: np.random.Generator) -> Acceptance:
    """Accept, recover or add a bonus token so the output follows p exactly.

    draft: n tokens with q [n, V] (or None for a deterministic draft: q is then a point mass on
    each drafted token, so x is accepted with probability p(x) and the residual is p with x
    removed). target_logits: [n + 1, V].
    """
    n = len(draft)
    assert target_logits.shape[0] == n + 1, (target_logits.shape, n)
    p = warp(target_logits, sampling)  # [n + 1, V]
    for i, x in enumerate(draft.tokens):
        if draft.q is None:
            q = np.zeros_like(p[i])
            q[x] = 1.0
        else:
            q = draft.q[i]
        if q[x] <= 0:
            raise ValueError(f"draft token {x} at position {i} has q(x) = 0: it was not drawn from q")
        if rng.random() >= min(1.0, p[i, x] / q[x]):
            recovered = sample(residual(p[i], q), rng)
            return Acceptance(tokens=tuple(draft.tokens[:i]) + (recovered,), accepted=i, drafted=n)
    return Acceptance(tokens=tuple(draft.tokens) + (sample(p[n], rng),), accepted=n, drafted=n)
