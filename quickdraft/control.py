"""Draft budget policies: how many tokens to draft in the next step.

A controller sees every step's acceptance and timings and answers with the next budget. The
budget is an upper bound: proposers may draft fewer (a confidence stop, no n-gram match).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from .errors import InvalidParameterError
from .types import Acceptance, StepTimes


class Controller(Protocol):
    def budget(self) -> int:
        """Upper bound on draft tokens for the next step (0 = a plain step)."""

    def observe(self, acceptance: Acceptance, times: StepTimes) -> None:
        """The outcome and cost of the last step."""


@dataclass
class FixedBudget:
    """Always draft up to ``num_draft`` tokens."""

    num_draft: int = 4

    def __post_init__(self) -> None:
        if self.num_draft < 0:
            raise InvalidParameterError(f"num_draft must be >= 0, got {self.num_draft}")

    def budget(self) -> int:
        return self.num_draft

    def observe(self, acceptance: Acceptance, times: StepTimes) -> None:
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


def best_rate(accept: Sequence[float], draft_token_s: float, forward_s: Sequence[float]) -> tuple[int, float]:
    """The draft length k (0 = a plain step) maximising expected tokens per second, and that rate.

    forward_s[k]: seconds of one target forward over k + 1 new tokens (the pending token plus k
    drafts), for k = 0 .. len(forward_s) - 1 (k is also capped by len(accept)). Cost of a step:
    k * draft_token_s + forward_s[k].
    Example: with free drafts, a flat forward cost and any acceptance > 0 the longest k wins;
    with forward_s = [1, 2] and accept = [0.5], k = 0 wins (1 token/s against 1.5 / 2).
    """
    ks = range(min(len(forward_s), len(accept) + 1))
    rates = [expected_tokens(accept, k) / (k * draft_token_s + forward_s[k]) for k in ks]
    k = int(max(ks, key=rates.__getitem__))
    return k, rates[k]


def best_budget(accept: Sequence[float], draft_token_s: float, forward_s: Sequence[float]) -> int:
    """The k of :func:`best_rate`."""
    return best_rate(accept, draft_token_s, forward_s)[0]


@dataclass
class ForwardCost:
    """The target's seconds per forward of k + 1 new tokens, learned online (exponential forgetting
    with ``decay`` per observation). A size not yet observed is estimated from the ``relative_cost``
    curve (calibrated: cost of k + 1 tokens / cost of 1; default prior 1 + k/2, what llama.cpp
    shows on small CPUs), scaled by the median ratio of the sizes that were observed. Several
    controllers of one target can share one."""

    max_k: int = 8
    relative_cost: Sequence[float] | None = None  # [>= max_k + 1]
    decay: float = 0.9
    _forward: dict[int, float] = field(default_factory=dict)  # k -> seconds, observed

    def __post_init__(self) -> None:
        if self.max_k < 0:
            raise InvalidParameterError(f"num_draft must be >= 0, got {self.max_k}")
        prior = list(self.relative_cost or [1.0 + k / 2 for k in range(self.max_k + 1)])
        if not prior or prior[0] <= 0:
            raise InvalidParameterError(f"relative_cost must start with a positive cost, got {prior[:1]}")
        slope = prior[-1] - prior[-2] if len(prior) > 1 else 0.5
        while len(prior) < self.max_k + 1:  # a short calibrated curve is extended linearly
            prior.append(prior[-1] + max(slope, 0.0))
        self.relative_cost = prior[:self.max_k + 1]

    @property
    def measured(self) -> bool:
        return bool(self._forward)

    def seconds(self) -> list[float]:
        """Estimated seconds of a forward over k + 1 tokens, k = 0 .. max_k (relative units
        until the first observation)."""
        scales = [t / self.relative_cost[k] for k, t in self._forward.items()]
        scale = sorted(scales)[len(scales) // 2] if scales else 1.0
        return [self._forward.get(k, self.relative_cost[k] * scale) for k in range(self.max_k + 1)]

    def observe(self, k: int, seconds: float) -> None:
        if k <= self.max_k:
            self._forward[k] = _ewma(self._forward.get(k), seconds, self.decay)


@dataclass
class AdaptiveBudget:
    """Cost-model control: each step drafts the k that maximises expected tokens per second.

    It learns online, with exponential forgetting (``decay`` per observation): the acceptance
    probability at each draft position, the proposer's seconds per draft token, and the target's
    forward cost (:class:`ForwardCost`, seeded from the calibrated ``relative_cost`` curve, or
    ``cost`` when shared). When k = 0 wins it still drafts ``probe`` tokens after ``probe_every``
    plain steps, so it notices when drafts become good again; each probe that does not turn
    drafting back on doubles the wait (up to 32 times), because a probe costs the proposer a
    catch-up over the skipped tokens. With ``positional`` False one acceptance rate is learned
    for all positions (a source whose tokens are equally likely right wherever they stand, such
    as copied text); ``prior_accept`` is the rate assumed before any draft, weighted as one.
    The engine keeps one controller per method and budget in its memory, so later requests start
    from what earlier ones learned.
    """

    max_k: int = 8
    relative_cost: Sequence[float] | None = None  # [>= max_k + 1]
    decay: float = 0.9
    probe_every: int = 16
    probe: int = 2
    first: int = 4  # the first step's draft length, before anything is measured
    draft_token_s: float = 0.0  # optimistic until measured: the first steps draft
    cost: ForwardCost | None = None
    positional: bool = True
    prior_accept: float = 0.5
    _accept: list[list[float]] = field(default_factory=list)  # position -> [accepted, reached]
    _since_draft: int = 0
    _interval: int = 0  # plain steps before the next probe; doubles while probes fail

    def __post_init__(self) -> None:
        self._interval = self.probe_every
        self.cost = self.cost or ForwardCost(self.max_k, self.relative_cost, self.decay)
        self.relative_cost = self.cost.relative_cost
        self._accept = [[self.prior_accept, 1.0] for _ in range(self.max_k if self.positional else 1)]

    def acceptance(self) -> list[float]:
        """Probability that draft token i is accepted given the ones before were, i < max_k."""
        rates = [a / r for a, r in self._accept]
        return rates if self.positional else rates * self.max_k

    def forward_s(self) -> list[float]:
        return self.cost.seconds()

    def plan(self) -> tuple[int, float]:
        """The next budget and its expected tokens per second (seconds as measured; inf for the
        optimistic first steps and for probes, which are due when plain steps have won for
        ``_interval`` steps in a row)."""
        if not self.cost.measured:  # optimistic start: drafting is how it learns
            return min(self.max_k, self.first), float("inf")
        k, rate = best_rate(self.acceptance(), self.draft_token_s, self.forward_s())
        if k == 0 and self.probe_due():
            return min(self.probe, self.max_k), float("inf")
        return k, rate

    def probe_due(self) -> bool:
        return self.cost.measured and self._since_draft >= self._interval

    def budget(self) -> int:
        k = self.plan()[0]
        self.decide(k)
        return k

    def decide(self, k: int) -> None:
        """Record that the next step drafts k tokens: a probe (drafting although plain steps
        win) doubles the wait before the next one; drafting that pays resets it."""
        if k > 0 and self.cost.measured:
            pays = best_rate(self.acceptance(), self.draft_token_s, self.forward_s())[0] > 0
            self._interval = self.probe_every if pays else min(2 * self._interval, 32 * self.probe_every)

    def observe(self, acceptance: Acceptance, times: StepTimes, own_step: bool = True) -> None:
        """The last step's outcome. ``own_step`` False: a step drafted by another source sharing
        this forward cost (which that source learns); only the clock towards the next probe runs."""
        n = acceptance.drafted if own_step else 0
        self._since_draft = 0 if n else self._since_draft + 1
        if own_step:
            self.cost.observe(acceptance.drafted, times.verify_s)
        if n:
            self.draft_token_s = _ewma(self.draft_token_s or None, times.draft_s / n, self.decay)
        for i in range(min(acceptance.positions if n else 0, self.max_k)):  # a tree: its depths
            stats = self._accept[i if self.positional else 0]
            stats[0] = self.decay * stats[0] + (i < acceptance.accepted)
            stats[1] = self.decay * stats[1] + 1


def _ewma(old: float | None, new: float, decay: float) -> float:
    return new if old is None else decay * old + (1 - decay) * new


# name -> factory(num_draft, relative_cost) ; chosen per request by ``controller=`` / ``--controller``.
CONTROLLERS = {
    "fixed": lambda num_draft, relative_cost=None: FixedBudget(num_draft),
    "adaptive": lambda num_draft, relative_cost=None: AdaptiveBudget(max_k=num_draft, relative_cost=relative_cost),
}


def create_controller(name: str, num_draft: int, relative_cost: Sequence[float] | None = None) -> Controller:
    if name not in CONTROLLERS:
        raise InvalidParameterError(f"unknown controller {name!r}; choose one of: {', '.join(CONTROLLERS)}")
    return CONTROLLERS[name](num_draft, relative_cost)
