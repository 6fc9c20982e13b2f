"""Draft budget policies: how many tokens to draft in the next step.

A controller sees every step's acceptance and timings and answers with the next budget. The
budget is an upper bound: proposers may draft fewer (a confidence stop, no n-gram match).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from .errors import InvalidParameterError
from .types import Acceptance


class Controller(Protocol):
    def begin(self) -> None:
        """A new request starts (what was learned about costs and acceptance is kept)."""

    def budget(self) -> int:
        """Upper bound on draft tokens for the next step (0 = a plain step)."""

    def observe(self, acceptance: Acceptance, draft_time: float, verify_time: float) -> None:
        """The outcome and cost of the last step."""


@dataclass
class FixedBudget:
    """Always draft up to ``num_draft`` tokens."""

    num_draft: int = 4

    def __post_init__(self) -> None:
        if self.num_draft < 0:
            raise InvalidParameterError(f"num_draft must be >= 0, got {self.num_draft}")

    def begin(self) -> None:
        pass

    def budget(self) -> int:
        return self.num_draft

    def observe(self, acceptance: Acceptance, draft_time: float, verify_time: float) -> None:
        pass


def expected_tokens(accept: Sequence[float], k: int) -> float:
    """Expected tokens a step emits when drafting k tokens: 1 (the target's own token) plus the
    probability that each draft prefix survives.

    accept[i]: probability that draft token i is accepted given tokens 0..i-1 were.
    Example: expected_tokens([0.5, 0.5], 2) == 1 + 0.5 + 0.25.
    """
    total, survive = 1.0, 1.0
    for a in accept[:k]:
        survive *= a
        total += survive
    return total


def best_budget(accept: Sequence[float], draft_token_s: float, forward_s: Sequence[float]) -> int:
    """The draft length k (0 = a plain step) maximising expected tokens per second.

    forward_s[k]: seconds of one target forward over k + 1 new tokens (the pending token plus k
    drafts), for k = 0 .. len(forward_s) - 1. Cost of a step: k * draft_token_s + forward_s[k].
    Example: with free drafts, a flat forward cost and any acceptance > 0 the longest k wins;
    with forward_s = [1, 2] and accept = [0.5], k = 0 wins (1 token/s against 1.5 / 2).
    """
    rates = [expected_tokens(accept, k) / (k * draft_token_s + forward_s[k]) for k in range(len(forward_s))]
    return int(max(range(len(rates)), key=rates.__getitem__))


@dataclass
class AdaptiveBudget:
    """Cost-model control: each step drafts the k that maximises expected tokens per second.

    It learns online, with exponential forgetting (``decay`` per observation): the acceptance
    probability at each draft position, the proposer's seconds per draft token, and the target's
    seconds per forward of k + 1 new tokens. A forward size not yet observed is estimated from the
    ``relative_cost`` curve (calibrated: cost of k + 1 tokens / cost of 1; default prior 1 + k/2,
    what llama.cpp shows on small CPUs) scaled by the sizes that were observed. When k = 0 wins it
    still drafts ``probe`` tokens after ``probe_every`` plain steps, so it notices when drafts
    become good again; each probe that does not turn drafting back on doubles the wait (up to 32
    times), because a probe costs the proposer a catch-up over the skipped tokens. ``decisions``
    counts the budgets chosen in the current request (reported in stats). The engine keeps one
    controller per method across requests, so later requests start from what earlier ones learned.
    """

    max_k: int = 8
    relative_cost: Sequence[float] | None = None  # [>= max_k + 1]
    decay: float = 0.9
    probe_every: int = 16
    probe: int = 2
    draft_token_s: float = 0.0  # optimistic until measured: the first steps draft
    decisions: dict[int, int] = field(default_factory=dict)
    _forward: dict[int, float] = field(default_factory=dict)  # k -> seconds, observed
    _accept: list[list[float]] = field(default_factory=list)  # position -> [accepted, reached]
    _since_draft: int = 0
    _interval: int = 0  # plain steps before the next probe; doubles while probes fail

    def __post_init__(self) -> None:
        self._interval = self.probe_every
        if self.max_k < 0:
            raise InvalidParameterError(f"num_draft must be >= 0, got {self.max_k}")
        prior = self.relative_cost or [1.0 + k / 2 for k in range(self.max_k + 1)]
        if len(prior) < self.max_k + 1:
            raise InvalidParameterError(f"relative_cost needs {self.max_k + 1} entries, got {len(prior)}")
        self.relative_cost = list(prior[:self.max_k + 1])
        self._accept = [[0.5, 1.0] for _ in range(self.max_k)]  # prior: one half-accepted draft

    def begin(self) -> None:
        self.decisions = {}

    def acceptance(self) -> list[float]:
        return [a / r for a, r in self._accept]

    def forward_s(self) -> list[float]:
        """Estimated seconds of a forward over k + 1 tokens, k = 0 .. max_k (relative units
        until the first observation)."""
        scales = [t / self.relative_cost[k] for k, t in self._forward.items()]
        scale = sorted(scales)[len(scales) // 2] if scales else 1.0
        return [self._forward.get(k, self.relative_cost[k] * scale) for k in range(self.max_k + 1)]

    def budget(self) -> int:
        k = best_budget(self.acceptance(), self.draft_token_s, self.forward_s()) if self._forward else self.max_k
        if k > 0:
            self._interval = self.probe_every
        elif self._since_draft >= self._interval:  # probe, and wait twice as long before the next
            k, self._interval = min(self.probe, self.max_k), min(2 * self._interval, 32 * self.probe_every)
        self.decisions[k] = self.decisions.get(k, 0) + 1
        return k

    def observe(self, acceptance: Acceptance, draft_time: float, verify_time: float) -> None:
        n = acceptance.drafted
        self._since_draft = 0 if n else self._since_draft + 1
        if n <= self.max_k:
            self._forward[n] = _ewma(self._forward.get(n), verify_time, self.decay)
        if n:
            self.draft_token_s = _ewma(self.draft_token_s or None, draft_time / n, self.decay)
        for i in range(min(n, self.max_k)):
            stats = self._accept[i]
            stats[0] = self.decay * stats[0] + (i < acceptance.accepted)
            stats[1] = self.decay * stats[1] + 1


def _ewma(old: float | None, new: float, decay: float) -> float:
    return new if old is None else decay * old + (1 - decay) * new


# name -> factory(num_draft, relative_cost) ; chosen per request by ``controller=`` / ``--controller``.
CONTROLLERS = {
    "fixed": lambda num_draft, relative_cost=None: FixedBudget(num_draft),
    "adaptive": lambda num_draft, relative_cost=None: AdaptiveBudget(
        max_k=num_draft, relative_cost=relative_cost[:num_draft + 1]
        if relative_cost and len(relative_cost) > num_draft else None),
}


def create_controller(name: str, num_draft: int, relative_cost: Sequence[float] | None = None) -> Controller:
    if name not in CONTROLLERS:
        raise InvalidParameterError(f"unknown controller {name!r}; choose one of: {', '.join(CONTROLLERS)}")
    return CONTROLLERS[name](num_draft, relative_cost)
