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


@dataclass(frozen=True)
class Prior:
    """What was measured on this machine before any request (calibrate.py, cached): ``curve[k]``
    the target's forward over k + 1 new tokens relative to one; ``step_s`` the seconds of one;
    ``draft_token`` the draft model's time per token relative to a target step; ``draft_accept``
    how often the draft model's greedy token is the target's on the calibration text. None where
    not measured (then: a curve of 1 + k/2, a scale of 1, free drafts, acceptance 0.5)."""

    curve: Sequence[float] | None = None
    step_s: float | None = None
    draft_token: float | None = None
    draft_accept: float | None = None

    def draft_token_s(self) -> float:
        return (self.draft_token or 0.0) * (self.step_s or 1.0)


@dataclass
class ForwardCost:
    """The target's seconds per forward of k + 1 new tokens, learned online (exponential forgetting
    with ``decay`` per observation). A size not yet observed is estimated from the ``relative_cost``
    curve (calibrated: cost of k + 1 tokens / cost of 1; default prior 1 + k/2, what llama.cpp
    shows on small CPUs), scaled by the median ratio of the sizes that were observed, or by the
    calibrated ``step_s`` before any. Several controllers of one target can share one."""

    max_k: int = 8
    relative_cost: Sequence[float] | None = None  # [>= max_k + 1]
    decay: float = 0.9
    step_s: float | None = None  # seconds of a one-token forward, calibrated
    _forward: dict[int, float] = field(default_factory=dict)  # k -> seconds, observed

    def __post_init__(self) -> None:
        if self.max_k < 0:
            raise InvalidParameterError(f"num_draft must be >= 0, got {self.max_k}", param="num_draft")
        prior = list(self.relative_cost or [1.0 + k / 2 for k in range(self.max_k + 1)])
        if not prior or prior[0] <= 0:
            raise InvalidParameterError(f"relative_cost must start with a positive cost, got {prior[:1]}")
        slope = prior[-1] - prior[-2] if len(prior) > 1 else 0.5
        while len(prior) < self.max_k + 1:  # a short calibrated curve is extended linearly
            prior.append(prior[-1] + max(slope, 0.0))
        self.relative_cost = prior[:self.max_k + 1]

    @classmethod
    def from_prior(cls, max_k: int, prior: Prior) -> "ForwardCost":
        return cls(max_k, prior.curve, step_s=prior.step_s)

    def seconds(self) -> list[float]:
        """Estimated seconds of a forward over k + 1 tokens, k = 0 .. max_k (relative units when
        nothing was calibrated or observed)."""
        scales = sorted(t / self.relative_cost[k] for k, t in self._forward.items())
        scale = scales[len(scales) // 2] if scales else self.step_s or 1.0
        return [self._forward.get(k, self.relative_cost[k] * scale) for k in range(self.max_k + 1)]

    def observe(self, k: int, seconds: float) -> None:
        if k <= self.max_k:
            self._forward[k] = _ewma(self._forward.get(k), seconds, self.decay)


@dataclass
class AdaptiveBudget:
    """Cost-model control: each step drafts the k that maximises expected tokens per second.

    It learns online, with exponential forgetting (``decay`` per observation): the acceptance
    probability at each draft position (one rate for all positions when ``positional`` is False:
    a source whose tokens are equally likely right wherever they stand, such as copied text), the
    proposer's seconds per draft token (``draft_token_s``, a calibrated prior until measured), and
    the target's forward cost (:class:`ForwardCost`, shared when ``cost`` is given).
    ``prior_accept`` is the rate assumed before any draft, weighted as one observation.

    When a plain step wins it still *probes* (drafts ``probe`` tokens) after ``probe_every`` plain
    steps in a row, so it notices when drafts become good again, but only when drafting could pay
    at the best acceptance a source may reach (``optimistic_accept``) and only while what probes
    have lost so far, plus what this one could lose, stays within ``explore`` of the time observed:
    exploring costs at most that share of the time, and nothing where the numbers say it cannot
    pay. Each probe that does not turn drafting back on doubles the wait (up to 32 times).
    The engine keeps one controller per method and budget in its memory, so later requests start
    from what earlier ones learned.
    """

    max_k: int = 8
    relative_cost: Sequence[float] | None = None  # [>= max_k + 1]
    decay: float = 0.9
    probe_every: int = 16
    probe: int = 2
    draft_token_s: float = 0.0
    cost: ForwardCost | None = None
    positional: bool = True
    prior_accept: float = 0.5
    optimistic_accept: float = 0.95
    explore: float = 0.02
    _accept: list[list[float]] = field(default_factory=list)  # position -> [accepted, weight reached]
    _since_draft: int = 0
    _interval: int = 0  # plain steps before the next probe; doubles while probes fail
    _elapsed: float = 0.0  # seconds of every step observed
    _lost: float = 0.0  # seconds probes cost beyond plain steps' worth of their tokens
    _probing: bool = False

    def __post_init__(self) -> None:
        self._interval = self.probe_every
        self.cost = self.cost or ForwardCost(self.max_k, self.relative_cost, self.decay)
        self.relative_cost = self.cost.relative_cost
        self._accept = [[0.0, 0.0] for _ in range(self.max_k if self.positional else 1)]

    def acceptance(self) -> list[float]:
        """Probability that draft token i is accepted given the ones before were, i < max_k: what
        was seen at position i, with one observation's weight of a prior (``prior_accept`` for
        the first position, the estimate of position i - 1 after it, so a position never drafted
        yet is expected to do as its predecessor does)."""
        rates, prior = [], self.prior_accept
        for accepted, reached in self._accept:
            prior = min(1.0, (accepted + prior) / (reached + 1.0))
            rates.append(prior)
        return rates if self.positional else rates * self.max_k

    def forward_s(self) -> list[float]:
        return self.cost.seconds()

    def plan(self) -> tuple[int, float]:
        """The next budget and its expected tokens per second (inf for a probe)."""
        k, rate = best_rate(self.acceptance(), self.draft_token_s, self.forward_s())
        if k == 0 and self.probe_due():
            return min(self.probe, self.max_k), float("inf")
        return k, rate

    def could_pay(self) -> bool:
        """Whether drafting would beat a plain step at the best acceptance a source may reach."""
        return best_rate([self.optimistic_accept] * self.max_k, self.draft_token_s, self.forward_s())[0] > 0

    def probe_due(self) -> bool:
        """Plain steps have won ``_interval`` times in a row, drafting could pay, and a probe that
        gains nothing would keep what probing has lost within ``explore`` of the time."""
        if self._since_draft < self._interval or not self.could_pay():
            return False
        forward = self.forward_s()
        worst = self.probe * self.draft_token_s + forward[min(self.probe, self.max_k)] - forward[0]
        return self._lost + worst <= self.explore * self._elapsed

    def budget(self) -> int:
        k = self.plan()[0]
        self.decide(k)
        return k

    def decide(self, k: int) -> None:
        """Record that the next step drafts k tokens: a probe (drafting although plain steps
        win) doubles the wait before the next one; drafting that pays resets it."""
        if k > 0:
            pays = best_rate(self.acceptance(), self.draft_token_s, self.forward_s())[0] > 0
            self._probing = not pays
            self._interval = self.probe_every if pays else min(2 * self._interval, 32 * self.probe_every)

    def observe(self, acceptance: Acceptance, times: StepTimes, own_step: bool = True, learn: bool = True) -> None:
        """The last step's outcome. ``own_step`` False: a step drafted by another source sharing
        this forward cost (which that source learns); only the clocks run. ``learn`` False: the
        caller learns acceptance itself (:meth:`learn`)."""
        step_s = times.draft_s + times.verify_s
        self._elapsed += step_s
        n = acceptance.drafted if own_step else 0
        self._since_draft = 0 if n else self._since_draft + 1
        if own_step:
            self.cost.observe(acceptance.drafted, times.verify_s)
            if self._probing:  # what it cost beyond plain steps for the tokens it gave
                self._lost += max(0.0, step_s - (acceptance.accepted + 1) * self.forward_s()[0])
        self._probing = False
        if n:
            self.draft_token_s = _ewma(self.draft_token_s or None, times.draft_s / n, self.decay)
            if learn:
                self.learn(acceptance.accepted, acceptance.positions)

    def learn(self, accepted: int, reached: int, weights: Sequence[float] | None = None) -> None:
        """Acceptance only: of the first ``reached`` positions of a draft the first ``accepted``
        were accepted (``reached`` counts the rejected one). ``weights`` [reached]: what each
        position was expected to be worth (a suffix draft's trie probabilities): the rate then
        learns acceptance relative to them. Also for drafts that were only offered, never sent
        (shadow learning: the tokens the target emitted say how such a draft would have fared)."""
        for i in range(min(reached, self.max_k)):
            stats = self._accept[i if self.positional else 0]
            stats[0] = self.decay * stats[0] + (i < accepted)
            stats[1] = self.decay * stats[1] + (weights[i] if weights is not None else 1.0)


def _ewma(old: float | None, new: float, decay: float) -> float:
    return new if old is None else decay * old + (1 - decay) * new


# name -> factory(num_draft, prior); chosen per request by ``controller=`` / ``--controller``.
CONTROLLERS = {
    "fixed": lambda num_draft, prior: FixedBudget(num_draft),
    "adaptive": lambda num_draft, prior: AdaptiveBudget(max_k=num_draft, cost=ForwardCost.from_prior(num_draft, prior),
                                                        draft_token_s=prior.draft_token_s()),
}


def create_controller(name: str, num_draft: int, prior: Prior | None = None) -> Controller:
    if name not in CONTROLLERS:
        raise InvalidParameterError(f"unknown controller {name!r}; choose one of: {', '.join(CONTROLLERS)}",
                                    param="controller")
    return CONTROLLERS[name](num_draft, prior or Prior())
