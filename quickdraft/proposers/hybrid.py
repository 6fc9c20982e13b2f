"""Hybrid drafting: each step, the best of a plain step, a suffix draft and a draft-model draft.

The choice is the cost model of control.py applied per source: a suffix draft's tokens are
accepted with probability (the trie's frequency of that token) x (the acceptance learned for
suffix drafts of that position and match strength); a draft-model draft with the acceptance
learned for it by position. Each source's cost per draft token is measured, and all share one
estimate of the target's forward cost by size. The source (and length) with the most expected
tokens per second wins; a plain step wins when nothing beats it. Sources that lose for a while
are probed now and then with a short draft (back-off as in AdaptiveBudget), so a change in the
text (a stretch of copying starts) is noticed.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..control import AdaptiveBudget, ForwardCost, best_rate
from ..sampling import SamplingParams
from ..types import Acceptance, Draft
from .base import register
from .draft_model import DraftModelProposer
from .suffix import SuffixProposer

# Suffix drafts by the length of the match they continue: (name, shortest match, acceptance
# assumed before any was seen). One acceptance rate per class, the same at every position.
SUFFIX_CLASSES = (("suffix-long", 8, 0.9), ("suffix-medium", 3, 0.7), ("suffix-short", 1, 0.5))


def match_strength(match_length: int) -> str:
    return next(name for name, shortest, _ in SUFFIX_CLASSES if match_length >= shortest)


@register("auto")
class AutoProposer:
    """``auto``: a suffix drafter (this request and earlier outputs) plus, when ``draft`` names a
    model, that draft model; per step the source with the highest expected tokens per second, or
    none. It decides its own draft lengths (``decides_budget``): the engine's budget is only the
    upper bound. ``decisions`` counts the chosen sources in the current request.

    ``relative_cost``: the target's calibrated forward cost curve (see calibrate.py).
    """

    decides_budget = True
    needs_draft_model = True  # uses one when given; drafts from suffixes alone without
    default_budget = 16

    def __init__(self, target, draft: str | None = None, min_confidence: float = 0.0,
                 relative_cost: Sequence[float] | None = None, max_draft: int = 16, **options) -> None:
        self.suffix = SuffixProposer(**options)
        self.drafter = DraftModelProposer(target, draft, min_confidence) if draft else None
        self.cost = ForwardCost(max_draft, relative_cost)
        self.control = {name: AdaptiveBudget(max_k=max_draft, cost=self.cost, positional=False, prior_accept=prior)
                        for name, _, prior in SUFFIX_CLASSES}
        if self.drafter:
            self.control["draft"] = AdaptiveBudget(max_k=max_draft, cost=self.cost)
        self.decisions: dict[str, int] = {}
        self._source, self._draft_time, self._proposed_at = "plain", 0.0, None
        self.clock = time.perf_counter

    @property
    def model(self):
        """The draft model's backend, or None (as ``DraftModelProposer.model``)."""
        return self.drafter.model if self.drafter else None

    def begin(self, prompt: Sequence[int]) -> None:
        self.suffix.begin(prompt)
        if self.drafter:
            self.drafter.begin(prompt)
        self.decisions = {}

    def plan(self, context: Sequence[int], budget: int) -> tuple[str, int, list[int]]:
        """(source, k, suffix tokens): the choice for the next step."""
        forward_s = self.cost.seconds()[:budget + 1]
        best = ("plain", 0, 1.0 / forward_s[0])
        candidate, match = self.suffix.candidate(context, budget)
        if candidate.tokens:
            control = self.control[match_strength(match)]
            accept = [a * p for a, p in zip(control.acceptance(), candidate.probs)]
            k, rate = best_rate(accept, control.draft_token_s, forward_s)
            if k == 0 and control.probe_due():
                k, rate = min(control.probe, len(candidate.tokens)), float("inf")
            if k and rate > best[2]:
                best = (match_strength(match), k, rate)
        if self.drafter:
            k, rate = self.control["draft"].plan()
            if k and rate > best[2]:
                best = ("draft", min(k, budget), rate)
        return best[0], best[1], candidate.tokens

    def propose(self, context: Sequence[int], budget: int, sampling: SamplingParams,
                rng: np.random.Generator) -> Draft:
        start = self.clock()
        self._source, k, suffix_tokens = self.plan(context, budget) if budget > 0 else ("plain", 0, [])
        if self._source in self.control:
            self.control[self._source].decide(k)
        if self._source == "draft":
            draft = self.drafter.propose(context, k, sampling, rng)
        else:
            draft = Draft(tuple(suffix_tokens[:k]))
        self.decisions[self._source] = self.decisions.get(self._source, 0) + 1
        self._proposed_at = self.clock()
        self._draft_time = self._proposed_at - start
        return draft

    def observe(self, acceptance: Acceptance) -> None:
        """Learn from the step just verified; its forward cost is the time since ``propose``
        returned (the engine verifies in between). Steps without a ``propose`` teach nothing."""
        if self._proposed_at is None:  # the engine did not ask for a draft (no room left)
            return
        verify_time, self._proposed_at = self.clock() - self._proposed_at, None
        if self._source == "plain":
            self.cost.observe(0, verify_time)
        for name, control in self.control.items():
            control.observe(acceptance, self._draft_time, verify_time, own_step=name == self._source)
