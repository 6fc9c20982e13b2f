"""Drafting with a smaller model of the same vocabulary (Leviathan et al. 2023)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..backends.base import check_same_vocabulary
from ..errors import InvalidParameterError, QuickdraftError
from ..sampling import SamplingParams, sample, warp
from ..types import Acceptance, Draft
from .base import register


@register("draft")
class DraftModelProposer:
    """A chain drafted token by token by a small model with its own KV cache.

    Greedy requests draft the draft model's argmax (deterministic draft, q = None); sampled
    requests draw each token from the draft's warped distribution q and return q for the
    rejection verifier. Drafting stops early when the draft's probability of its own next token
    falls below ``min_confidence`` (its softmax at temperature 1 when greedy, else q), because a
    token it doubts is likely rejected and still costs a draft step and a verify slot.

    The draft cache is kept in step with the target's context by reusing the longest common
    prefix (``Backend.prefill``), which is the rollback after a rejection.
    """

    def __init__(self, target, draft: str | None = None, min_confidence: float = 0.0, **_: object) -> None:
        if not draft:
            raise QuickdraftError("method 'draft' needs a draft model (--draft NAME or PATH)")
        if not 0.0 <= min_confidence < 1.0:
            raise InvalidParameterError(f"min_confidence must be in [0, 1), got {min_confidence}")
        self.model = target.sibling(draft)
        check_same_vocabulary(target, self.model)
        self.min_confidence = min_confidence

    def begin(self, prompt: Sequence[int]) -> None:
        self.model.prefill(prompt[:-1])

    def propose(self, context: Sequence[int], budget: int, sampling: SamplingParams,
                rng: np.random.Generator) -> Draft:
        if budget <= 0:
            return Draft()
        logits = self.model.prefill(context, last_logits=True)  # catch up and predict in one forward
        return draft_chain(logits, lambda token: self.model.forward([token])[0], budget, sampling, rng,
                           self.min_confidence)

    def observe(self, acceptance: Acceptance) -> None:
        pass


def draft_chain(logits: np.ndarray, step, budget: int, sampling: SamplingParams, rng: np.random.Generator,
                min_confidence: float = 0.0) -> Draft:
    """Draft up to ``budget`` tokens one at a time from a model's next-token ``logits`` [V];
    ``step(token) -> logits [V]`` feeds a drafted token and predicts the next.

    Greedy requests take the argmax (q = None); sampled ones draw from the warped distribution q
    and return it for the rejection verifier. Stops early when the probability of the next token
    (softmax at temperature 1 when greedy, else q) is below ``min_confidence``.
    """
    tokens: list[int] = []
    qs: list[np.ndarray] = []
    while True:
        if sampling.greedy:
            token = int(np.argmax(logits))
            confidence = 1.0 / np.exp(logits - logits[token]).sum() if min_confidence else 1.0
        else:
            q = warp(logits, sampling)
            token = sample(q, rng)
            confidence = float(q.max())
        if confidence < min_confidence:
            break
        tokens.append(token)
        if not sampling.greedy:
            qs.append(q)
        if len(tokens) == budget:
            break
        logits = step(token)
    return Draft(tuple(tokens), np.stack(qs) if qs else None)
