"""Greedy verification: keep the longest draft prefix the target's argmax agrees with."""

from __future__ import annotations

import numpy as np

from ..sampling import SamplingParams
from ..records import Acceptance, Draft


def verify_greedy(draft: Draft, target_logits: np.ndarray, sampling: SamplingParams | None = None,
                  rng: np.random.Generator | None = None) -> Acceptance:
    """Accept draft tokens while each equals the target's argmax, then emit the target's own token.

    draft: n tokens. target_logits: [n + 1, V]. Returns ``accepted`` = length of the agreeing
    prefix and ``tokens`` = that prefix plus argmax(target_logits[accepted]).

    Example: draft (5, 7, 9), target argmax per row (5, 7, 2, 4) -> accepted 2, tokens (5, 7, 2).
    Output equals plain greedy decoding by construction: every emitted token is an argmax of the
    target given exactly the tokens before it.
    """
    n = len(draft)
    assert target_logits.shape[0] == n + 1, (target_logits.shape, n)
    best = np.argmax(target_logits, axis=-1)
    matches = best[:n] == np.asarray(draft.tokens, dtype=best.dtype)
    accepted = n if matches.all() else int(np.argmin(matches))
    return Acceptance(tokens=tuple(draft.tokens[:accepted]) + (int(best[accepted]),),
                      accepted=accepted, drafted=n)
