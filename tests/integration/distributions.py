"""The exact distribution the statistical tests compare speculative sampling against."""

import numpy as np

from quickdraft.sampling import SamplingParams, warp


def two_token_distribution(target, prompt: list[int], params: SamplingParams) -> dict[tuple[int, int], float]:
    """P(first two sampled tokens = (a, b)) after ``prompt``, from the target's own logits and
    the sampling warp: the support is every pair the warp allows (top-k 3: at most 9 pairs)."""
    target.prefill(prompt[:-1])
    p0 = warp(target.forward(prompt[-1:])[0], params)
    exact = {}
    for a in np.flatnonzero(p0):
        target.prefill(prompt)
        p1 = warp(target.forward([int(a)])[0], params)
        for b in np.flatnonzero(p1):
            exact[(int(a), int(b))] = p0[a] * p1[b]
    return exact
