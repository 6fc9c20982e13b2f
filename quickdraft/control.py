"""How much to draft: the cost model, what each source of drafts has learned, and the choice of
every request's draft length in a step.

The engine owns one :class:`ForwardCost` per memory: the seconds of a target forward by the
number of new tokens it carries (every running request's pending token and draft together).
Each step, every request *offers* what it could draft (:class:`Offer`: per source, the chance
that each further token is accepted and what a token costs to draft, or a length it must
draft), and :func:`allocate` picks the lengths, zero included, that maximise the step's expected
tokens per second. With one request that is :func:`best_rate`; with many, drafting is weighed
against the whole batch's forward, so speculation backs off as the batch fills the machine.

A source's offer comes from its learner, :class:`AdaptiveBudget` (the ``adaptive`` controller,
and each of auto's sources); a :class:`FixedBudget` offers a forced length.
"""

from __future__ import annotations

import bisect
import statistics
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from .errors import InvalidParameterError
from .records import Acceptance, StepTimes


@dataclass(frozen=True)
class Offer:
    """What one source could draft for one request in the next step.

    accept[i]: the probability that draft token i is accepted given tokens 0..i-1 were; its
    length caps the draft. draft_token_s: seconds to draft one token. setup_s: seconds paid once
    before the first token can be drafted (a draft model catching up with the context it has not
    seen). horizon: the tokens a setup is spread over (a draft model that caught up keeps
    drafting for the rest of the request): a draft expected to give E tokens bears
    ``setup_s * min(1, E / horizon)``; None: the whole setup falls on this step. forced: a length
    that must be drafted (a fixed budget), or None. probe: a length to draft when nothing else
    would be drafted for this request (a source checking whether it pays again), or None.
    """

    source: str
    accept: tuple[float, ...]
    draft_token_s: float = 0.0
    setup_s: float = 0.0
    forced: int | None = None
    probe: int | None = None
    horizon: int | None = None

    def spend(self, k: int) -> tuple[float, float]:
        """(expected tokens, drafting seconds) of a step drafting k of this offer's tokens (k > 0),
        the setup's share included."""
        tokens = expected_tokens(self.accept, k)
        share = 1.0 if self.horizon is None else min(1.0, tokens / self.horizon)
        return tokens, self.setup_s * share + k * self.draft_token_s


class Controller(Protocol):
    def offer(self, cap: int) -> Offer:
        """What the next step could draft, at most ``cap`` tokens."""

    def decide(self, k: int) -> None:
        """The step drafts k tokens."""

    def observe(self, acceptance: Acceptance, times: StepTimes) -> None:
        """The outcome and cost of the last step."""


@dataclass
class FixedBudget:
    """Always draft up to ``num_draft`` tokens."""

    num_draft: int = 4

    def __post_init__(self) -> None:
        if self.num_draft < 0:
            raise InvalidParameterError(f"num_draft must be >= 0, got {self.num_draft}", param="num_draft")

    def offer(self, cap: int) -> Offer:
        k = min(self.num_draft, cap)
        return Offer("fixed", (1.0,) * k, forced=k)

    def decide(self, k: int) -> None:
        pass

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


# Every second speculation adds to a step (drafting, and the rows it adds to the forward) is
# weighed as 1 + RISK seconds: acceptance is estimated from a few noisy observations, so a draft
# promising barely more than it costs loses as often as it wins, and a user who switched
# speculation on must not lose time. Seen on the bench's everyday prose (AMD Zen 5): without it,
# drafts of short suffix matches promising about 5% more tokens per second than a plain step were
# mostly rejected, 2-3% of the decode time lost (with it, with per-position rates: README, bench).
RISK = 0.2

# A source graded in the shadow (a suffix class, lookahead's pool: hybrid.py) learns its acceptance
# from every step, without bias, yet is drafted only on the steps its estimate is at its highest,
# so what it is chosen on overstates it (the winner's curse: an estimate that forgets quickly
# fluctuates, and a draft that barely pays is sent on its highs). Seen on the bench's prose at 2
# clients (AMD Zen 4): sent suffix drafts were predicted 96 accepted tokens and had 61, each
# step's rows slowing both requests, while the shadow's estimates matched what the target emitted
# within 0.07 at every class and position seen more than 5 times. Such a source also keeps what
# its sent drafts were predicted to give and what they gave (AdaptiveBudget.realized), and its
# offers are scaled by that ratio; a ratio of 1 weighs as this many predicted tokens before any
# draft was sent.
SENT_WEIGHT = 4.0

# A source whose calibrated prior alone predicts at least this many times a plain step's tokens per
# second (RISK included) drafts from a request's first steps, before anything was observed
# (AdaptiveBudget.trusted): the machine measured the costs and the agreement for exactly this
# decision. Below it, the prior is not trusted and the source enters by probes only.
TRUST = 1.1


def best_rate(accept: Sequence[float], draft_token_s: float, forward_s: Sequence[float],
              risk: float = RISK) -> tuple[int, float]:
    """The draft length k (0 = a plain step) maximising expected tokens per second, with the
    seconds drafting adds weighed by 1 + ``risk`` (see RISK), and that rate.

    forward_s[k]: seconds of one target forward over k + 1 new tokens (the pending token plus k
    drafts), for k = 0 .. len(forward_s) - 1 (k is also capped by len(accept)). Cost of a step:
    forward_s[0] + (1 + risk) (k * draft_token_s + forward_s[k] - forward_s[0]).
    Example: with free drafts, a flat forward cost and any acceptance > 0 the longest k wins;
    with forward_s = [1, 2] and accept = [0.5], k = 0 wins (1 token/s against 1.5 / 2, risk 0).
    """
    ks = range(min(len(forward_s), len(accept) + 1))
    rates = [expected_tokens(accept, k) / (forward_s[0] + (1 + risk) * (k * draft_token_s + forward_s[k] - forward_s[0]))
             for k in ks]
    k = int(max(ks, key=rates.__getitem__))
    return k, rates[k]


def best_budget(accept: Sequence[float], draft_token_s: float, forward_s: Sequence[float], risk: float = RISK) -> int:
    """The k of :func:`best_rate`."""
    return best_rate(accept, draft_token_s, forward_s, risk)[0]


def allocate(offers: Sequence[Sequence[Offer]], forward_s: Callable[[int], float],
             sweeps: int = 2, risk: float = RISK, limit_s: float | None = None) -> list[tuple[int | None, int]]:
    """Every request's choice for the next step, (the index of its chosen offer or None for a
    plain step, its draft length), maximising the step's expected tokens per second:

        sum of expected tokens / (sum of drafting time + forward_s(total new tokens)),

    where a request drafting k tokens of an offer adds ``offer.spend(k)``: expected tokens and
    drafting seconds (k draft tokens and the setup's share), and k + 1 new tokens (its pending token and the draft),
    and the seconds a request's draft adds (its drafting, and the forward's growth) count 1 + ``risk``
    times (RISK).
    It starts from plain steps (forced lengths forced) and improves one request at a time,
    exhaustively over that request's offers and lengths (coordinate ascent, ``sweeps`` rounds):
    never worse than plain continuous batching, and :func:`best_rate` exactly for one request.
    A request alone left with a plain step drafts its probe, if an offer has one (in a batch, a
    probe's rows would slow every request, and its loss budget is counted per request).
    ``limit_s``: the step's predicted seconds (drafting and forward) may not pass it; a draft that
    would make them is not taken (plain steps are, whatever they cost): the time a step keeps for
    the prompt tokens it carries (Engine.step with a step time).

    Example: one request offering [0.9, 0.9] at no drafting cost, forward_s(n) = 1 + 0.25 (n - 1),
    risk 0: drafting 2 gives 2.71 tokens for 1.5 s (1.81/s) against 1 token for 1 s: [(0, 2)].
    """
    choices: list[tuple[int | None, int]] = []
    gains: list[float] = []  # expected tokens per request
    spends: list[float] = []  # drafting seconds per request
    options: list[list[tuple[int | None, int, float, float]]] = []  # (offer, k, expected tokens, drafting s)
    for request in offers:
        forced = [(i, o) for i, o in enumerate(request) if o.forced is not None]
        if forced:
            i, o = forced[0]
            k = min(o.forced, len(o.accept))
            opts = [(i, k, *o.spend(k)) if k > 0 else (i, 0, 1.0, 0.0)]
        else:
            opts = [(None, 0, 1.0, 0.0)] + [(i, k, *o.spend(k))
                                            for i, o in enumerate(request) for k in range(1, len(o.accept) + 1)]
        options.append(opts)
        choices.append(opts[0][:2])
        gains.append(opts[0][2])
        spends.append(opts[0][3])
    tokens = sum(1 + k for _, k in choices)
    for _ in range(sweeps if len(offers) > 1 else 1):
        for r, opts in enumerate(options):
            base_tokens = tokens - 1 - choices[r][1]
            rest_gain, rest_spend = sum(gains) - gains[r], sum(spends) - spends[r]
            plain = forward_s(base_tokens + 1)
            fits = [o for o in opts if limit_s is None or o[1] == 0
                    or rest_spend + o[3] + forward_s(base_tokens + 1 + o[1]) <= limit_s] or opts  # forced: kept
            best = max(fits, key=lambda o: (rest_gain + o[2]) / (
                rest_spend + plain + (1 + risk) * (o[3] + forward_s(base_tokens + 1 + o[1]) - plain)))
            choices[r], gains[r], spends[r] = best[:2], best[2], best[3]
            tokens = base_tokens + 1 + best[1]
    if len(offers) == 1:  # probes only alone: in a batch a probe's rows slow every request
        probes = [(i, o.probe) for i, o in enumerate(offers[0]) if o.probe]
        if choices[0][1] == 0 and probes:
            choices[0] = probes[0]
    return choices


# A forward may carry more rows at no cost on some machines (llama.cpp's repacked kernels take rows
# four at a time: on the Intel profile a forward over 4 tokens costs 0.94 of one over 1; a GPU
# verifies 16 for about one). Rows costing at most this share more than the forward without them
# are free (ForwardCost.free_rows, which engine.ride_free_rows fills), up to MAX_FREE_ROWS.
FREE_ROWS = 0.02
MAX_FREE_ROWS = 16


# A prompt chunk riding beside running requests never shrinks below this many tokens, so a prompt
# always gets in, even when the running requests' rows alone fill a step's time (prompt_room).
MIN_PROMPT_CHUNK = 16


def prompt_room(seconds: Callable[[int], float], left_s: float, limit: int) -> int:
    """Prompt tokens a step may carry in the ``left_s`` seconds its rows (the running requests'
    pending tokens and drafts) leave of its time: the most m <= ``limit`` with ``seconds(m) <=
    left_s`` (``seconds``: a prompt forward's predicted time by its tokens, taken as rising with
    them), yet at least ``MIN_PROMPT_CHUNK`` (or ``limit``, if less). The running requests' rows
    come first, prompts get the time they leave: a step, a pause in every running stream, stays
    within its time however long the prompts waiting.

    Example: with seconds(m) = 0.01 * m: prompt_room(seconds, 0.92, 512) == 92,
    prompt_room(seconds, 0.92, 50) == 50, prompt_room(seconds, -0.2, 512) == 16.
    """
    fits = bisect.bisect_right(range(limit + 1), left_s, key=seconds)  # m = 0 .. fits - 1 fit
    return min(limit, max(fits - 1, MIN_PROMPT_CHUNK))


@dataclass(frozen=True)
class Prior:
    """What was measured on this machine before any request (calibrate.py, cached): ``curve[n-1]``
    the target's forward over n new tokens relative to one; ``step_s`` the seconds of one;
    ``draft_token`` the draft model's time per token relative to a target step; ``draft_accept``
    how often the draft model's greedy token is the target's on the calibration text;
    ``draft_prefill`` the draft model's time per token of a long forward (a prompt) relative to its
    one-token time; ``draft_ahead`` the two models' costs on split threads, per split measured
    (:class:`Split`; empty: none measured). None where not measured (then: a curve of
    1 + (n - 1)/2, a scale of 1, free drafts, acceptance 0.5, a catch-up priced by the curve's
    end, :func:`catch_up`)."""

    curve: Sequence[float] | None = None
    step_s: float | None = None
    draft_token: float | None = None
    draft_accept: float | None = None
    draft_prefill: float | None = None
    draft_ahead: tuple[Split, ...] = ()

    def draft_token_s(self) -> float:
        return (self.draft_token or 0.0) * (self.step_s or 1.0)


@dataclass(frozen=True)
class Split:
    """What drafting ahead costs on one split of the cores (calibrate.split_costs): the target
    computing on ``target_threads`` while the draft model computes on ``draft_threads``.
    ``target_scale``: a target forward there over the same forward on the engine's threads;
    ``draft_token``: the draft model's seconds per token there, relative to a target step on the
    engine's threads."""

    target_threads: int
    draft_threads: int
    target_scale: float
    draft_token: float


def ahead_rate(accept: Sequence[float], k: int, draft_token: float, forward: Sequence[float], split: Split) -> float:
    """Expected tokens per target step of drafting ``k`` tokens per step and drafting ahead
    (parallel drafting: the next step's draft made during this step's verification), all times
    relative to a one-token target step on the engine's threads.

    accept[i]: the chance draft token i is accepted given the ones before it; accept[k] is also
    the chance the draft model guesses the target's own next token. ``draft_token``: a draft
    token on the engine's threads; ``forward[n]``: a forward over n + 1 tokens there. With r the
    chance a step's draft is ready (every token accepted and the next guessed), a step takes
    (1 - r) k d (drafting in turn, when not ready) + r max(s F, (k + 1) d') (the verification
    on split threads, waiting for the draft ahead when it is used) + (1 - r) s F (stopped when
    not). Example: with every token accepted (r = 1), the step is max(s F(k + 1), (k + 1) d').
    """
    ready = 1.0
    for a in accept[:k + 1]:
        ready *= a
    verify = split.target_scale * forward[k]
    step = (1 - ready) * (k * draft_token + verify) + ready * max(verify, (k + 1) * split.draft_token)
    return expected_tokens(accept, k) / step


def ahead_gain(accept: Sequence[float], draft_token: float, forward: Sequence[float],
               splits: Sequence[Split]) -> tuple[Split | None, int, float]:
    """The best split and draft length for drafting ahead, and its expected tokens per second
    over the best of drafting in turn or a plain step (:func:`best_rate` without RISK: the two
    are compared as they are). (None, 0, 0.0) without splits. ``accept``: [K + 1] (a draft of up
    to K and the guess after it); ``forward[n]``: n + 1 tokens, n = 0 .. K; times relative to a
    target step (:func:`ahead_rate`)."""
    _, in_turn = best_rate(accept, draft_token, forward, risk=0.0)
    best = (None, 0, 0.0)
    for split in splits:
        for k in range(1, min(len(accept) - 1, len(forward) - 1) + 1):
            gain = ahead_rate(accept, k, draft_token, forward, split) / in_turn
            if gain > best[2]:
                best = (split, k, gain)
    return best


def catch_up(n: int, relative_at: Callable[[int], float], prefill: float | None, curve_end: int = 17) -> float:
    """A draft model's forward over n new tokens (catching up with a context), in its one-token
    times: the target curve's shape (``relative_at``) up to the curve's end, then ``prefill`` per
    further token (its measured rate on a prompt, relative to one token), or, unmeasured, the
    curve's cost per row at its end (an upper bound: long forwards use the cores better).

    Example: with relative_at(n) = n / 2 and prefill 0.25, catch_up(21, ..., 0.25) == 8.5 + 1.0.
    """
    if n <= curve_end:
        return relative_at(n)
    per_token = prefill if prefill is not None else relative_at(curve_end) / curve_end
    return relative_at(curve_end) + per_token * (n - curve_end)


def curve_slope(curve: Sequence[float]) -> float:
    """How much each token past the end of a calibrated cost curve adds (``curve[n-1]``: a forward
    over n tokens): the whole curve's least-squares slope, at least 0 (0.5 for a single point).

    Not the slope of its last few points, which is noise: on one calibration (AMD Zen 5) 14 to 17
    tokens took 0.176, 0.187, 0.126 and 0.164 s, which priced every prompt chunk past 17 tokens
    like 17, so a step offered 512 prompt tokens for 1.25 s and took 3.9 s.

    Example: curve_slope([1.0, 3.0, 5.0]) == 2.0."""
    if len(curve) < 2:
        return 0.5
    return max(statistics.linear_regression(range(len(curve)), curve).slope, 0.0)


@dataclass
class ForwardCost:
    """The target's seconds for one forward of n new tokens (all of a step's requests together),
    learned online (exponential forgetting with ``decay`` per observation). A size not yet
    observed is estimated from the calibrated ``relative`` curve (``relative[n-1]``: n tokens
    relative to one; beyond it, the whole curve's least-squares slope) scaled to the nearest sizes
    observed on either side (weighted by closeness; one side only: that side's), or by the calibrated
    ``step_s`` before any: a batch's forwards (many sequences, long contexts, a prompt chunk
    riding along) cost more per token than the one-sequence curve says, and the nearest
    observations know it. One per engine memory: every method and request shares it."""

    relative: Sequence[float] | None = None
    step_s: float | None = None
    decay: float = 0.9
    _seen: dict[int, float] = field(default_factory=dict)  # n -> seconds, observed
    _sizes: list[int] = field(default_factory=list)  # the observed n, sorted

    def __post_init__(self) -> None:
        curve = list(self.relative or [1.0 + (n - 1) / 2 for n in range(1, 18)])
        if not curve or curve[0] <= 0:
            raise InvalidParameterError(f"a relative cost curve must start with a positive cost, got {curve[:1]}")
        self._slope = curve_slope(curve)
        self.relative = curve

    @classmethod
    def from_prior(cls, prior: Prior) -> "ForwardCost":
        return cls(prior.curve, prior.step_s)

    def relative_at(self, n: int) -> float:
        curve = self.relative
        return curve[n - 1] if n <= len(curve) else curve[-1] + self._slope * (n - len(curve))

    def seconds(self, n: int) -> float:
        """Estimated seconds of a forward over n new tokens (relative units when nothing was
        calibrated or observed)."""
        if n in self._seen:
            return self._seen[n]
        sizes, r = self._sizes, self.relative_at(n)
        i = bisect.bisect(sizes, n)
        near = sizes[max(i - 1, 0):i + 1]  # the observed sizes just below and above n
        if not near:
            return r * (self.step_s or 1.0)
        if len(near) == 1:
            return r * self._seen[near[0]] / self.relative_at(near[0])
        (a, b), w = near, (near[1] - n) / (near[1] - near[0])
        return r * (w * self._seen[a] / self.relative_at(a) + (1 - w) * self._seen[b] / self.relative_at(b))

    def curve(self, max_k: int) -> list[float]:
        """Seconds of a single request's step drafting k tokens, k = 0 .. max_k (n = k + 1)."""
        return [self.seconds(k + 1) for k in range(max_k + 1)]

    @property
    def measured(self) -> bool:
        """Whether any forward was observed (else the calibrated curve alone)."""
        return bool(self._seen)

    def observe(self, n: int, seconds: float) -> None:
        if seconds > 0:  # a clock too coarse to see the forward says nothing
            if n not in self._seen:
                bisect.insort(self._sizes, n)
            self._seen[n] = _ewma(self._seen.get(n), seconds, self.decay)

    def free_rows(self, n: int, base: int | None = None) -> int:
        """How many rows a forward of ``n`` new tokens carries for free: the most (up to
        ``MAX_FREE_ROWS``) that keep it within ``FREE_ROWS`` more than a forward of ``base`` tokens
        (default ``n``: the forward without them; a step whose earlier generations took rows
        already measures against the forward before any)."""
        limit = (1 + FREE_ROWS) * self.seconds(n if base is None else base)
        return max((m for m in range(1, MAX_FREE_ROWS + 1) if self.seconds(n + m) <= limit), default=0)


@dataclass
class AdaptiveBudget:
    """What one source of drafts has learned, and its offers (the ``adaptive`` controller).

    It learns online, with exponential forgetting (``decay`` per observation): the acceptance
    probability at each draft position (one rate for all positions when ``positional`` is False:
    a source whose tokens are equally likely right wherever they stand, such as copied text) and
    the source's seconds per draft token (``draft_token_s``, a calibrated prior until measured).
    ``prior_accept`` is the rate assumed before any draft, weighted as ``prior_weight`` observations. The
    target's forward cost is the engine's (``cost``, shared), which the engine observes.

    A source whose prior alone predicts a clear gain (``TRUST`` times a plain step's rate, at
    ``prior_accept`` on every position, on the calibrated costs) is *trusted*: it offers its prior
    acceptance from the first step, and what the request shows overrides the prior within a few
    steps (with a prior weight of 3, two first tokens rejected bring a rate of 0.8 below 0.5).

    When drafting does not pay it still *probes* (offers a forced short draft, :meth:`short`) after
    ``probe_every`` steps without drafting, so it notices when drafts become good again, but
    only where drafting could pay at the best acceptance a source may reach
    (``optimistic_accept``) and only while what probes have lost, plus what this one could lose,
    stays within ``explore`` of the time observed: exploring costs at most that share of the
    time, and nothing where the numbers say it cannot pay. Each probe that does not turn drafting
    back on doubles the wait (up to 32 times). A source that has never been graded offers nothing
    but such probes: its prior is a guess about other text (a draft model's agreement measured at
    load is lowest on an answer's first tokens, where a fresh request would try it), so a fresh
    engine explores within the same bound (unless trusted). The engine keeps one per method and budget in its
    memory, so later requests start from what earlier ones learned.
    """

    max_k: int = 8
    cost: ForwardCost = field(default_factory=ForwardCost)
    draft_token_s: float = 0.0
    positional: bool = True
    prior_accept: float = 0.5
    prior_weight: float = 1.0
    recover: float = 1.0  # a trusted source's observations fade by this each step it does not draft
    source: str = "adaptive"
    decay: float = 0.9
    probe_every: int = 16
    probe: int = 4  # the longest short draft (probes, and a first draft)
    optimistic_accept: float = 0.95
    explore: float = 0.02
    _accept: list[list[float]] = field(default_factory=list)  # position -> [accepted, weight reached]
    _since_draft: int = 0
    _interval: int = 0  # steps without drafting before the next probe; doubles while probes fail
    _elapsed: float = 0.0  # seconds of every step observed
    _lost: float = 0.0  # seconds probes cost beyond plain steps' worth of their tokens
    _probing: bool = False
    _sent: tuple[float, float] = (0.0, 0.0)  # sent drafts: (accepted tokens predicted, accepted), forgetting

    def __post_init__(self) -> None:
        if self.max_k < 0:
            raise InvalidParameterError(f"num_draft must be >= 0, got {self.max_k}", param="num_draft")
        self._interval = self.probe_every
        self._accept = [[0.0, 0.0] for _ in range(self.max_k if self.positional else 1)]

    def acceptance(self) -> list[float]:
        """Probability that draft token i is accepted given the ones before were, i < max_k: what
        was seen at position i, with ``prior_weight`` observations' weight of a prior (``prior_accept`` for
        the first position, the estimate of position i - 1 after it, so a position never drafted
        yet is expected to do as its predecessor does)."""
        rates, prior, weight = [], self.prior_accept, self.prior_weight
        for accepted, reached in self._accept:
            prior = min(1.0, (accepted + weight * prior) / (reached + weight))
            rates.append(prior)
        return rates if self.positional else rates * self.max_k

    @property
    def graded(self) -> bool:
        """Whether any draft of this source (sent, or graded in the shadow) was seen."""
        return any(reached for _, reached in self._accept)

    def realized(self) -> float:
        """What this source's sent drafts gave over what they were predicted to give when chosen
        (at most 1; ``SENT_WEIGHT`` predicted tokens given in full before any): see SENT_WEIGHT."""
        predicted, accepted = self._sent
        return min(1.0, (accepted + SENT_WEIGHT) / (predicted + SENT_WEIGHT))

    def sent(self, predicted: float, accepted: int) -> None:
        """A sent draft of this source was predicted to have ``predicted`` tokens accepted (before
        :meth:`realized` scaled it) and had ``accepted``; what earlier ones showed forgets at
        ``decay`` per sent draft (a suffix class's is hybrid.SUFFIX_DECAY)."""
        self._sent = (self.decay * self._sent[0] + predicted, self.decay * self._sent[1] + accepted)

    def predicted(self) -> tuple[int, float]:
        """What the prior alone predicts: the best draft length at ``prior_accept`` on every
        position, and its speedup over a plain step (RISK included)."""
        k, rate = best_rate([self.prior_accept] * self.max_k, self.draft_token_s, self.cost.curve(self.max_k))
        return k, rate * self.cost.seconds(1)

    @property
    def trusted(self) -> bool:
        """Whether the prior alone predicts a clear gain (``TRUST``; see the class)."""
        k, speedup = self.predicted()
        return k > 0 and speedup >= TRUST

    def offer(self, cap: int, setup_s: float = 0.0, horizon: int | None = None) -> Offer:
        """Its learned acceptance and cost, or a forced probe when one is due (see the class);
        until graded, only the probe unless the prior is trusted. ``setup_s``: what drafting would
        first cost this request, spread over ``horizon`` tokens (:class:`Offer`), and counted
        whole in what a probe may lose."""
        accept = tuple(self.acceptance()[:cap]) if self.graded or self.trusted else ()
        probe = self.short(cap) if cap > 0 and self.probe_due(setup_s) else None
        return Offer(self.source, accept, self.draft_token_s, setup_s, probe=probe, horizon=horizon)

    def short(self, cap: int) -> int:
        """The short draft (1 to ``probe`` tokens, at most ``cap``: 0 if that is 0) that would give the most tokens
        per second were every token accepted: on CPUs a forward's cost is not smooth in its size
        (repacked kernels take rows four at a time), so 3 drafted tokens may cost less than 2."""
        n = min(self.probe, cap, self.max_k)
        if n < 1:
            return 0
        curve = self.cost.curve(n)
        return max(range(1, n + 1), key=lambda k: (k + 1) / (curve[k] + k * self.draft_token_s))

    def could_pay(self) -> bool:
        """Whether drafting would beat a plain step at the best acceptance a source may reach."""
        return best_rate([self.optimistic_accept] * self.max_k, self.draft_token_s, self.cost.curve(self.max_k))[0] > 0

    def probe_due(self, setup_s: float = 0.0) -> bool:
        """No draft for ``_interval`` steps, drafting could pay, and a probe that gains nothing
        (its ``setup_s`` included) would keep what probing has lost within ``explore`` of the time."""
        if self._since_draft < self._interval or not self.could_pay():
            return False
        probe = self.short(self.max_k)
        worst = setup_s + probe * self.draft_token_s + self.cost.seconds(probe + 1) - self.cost.seconds(1)
        return self._lost + worst <= self.explore * self._elapsed

    def decide(self, k: int) -> None:
        """Record that the next step drafts k tokens: a probe (drafting although drafting does
        not pay, or before any grade) doubles the wait before the next one, and what it loses is
        counted; drafting that pays resets the wait."""
        if k > 0:
            pays = best_rate(self.acceptance(), self.draft_token_s, self.cost.curve(self.max_k))[0] > 0
            self._probing = not (pays and (self.graded or self.trusted))
            self._interval = self.probe_every if pays else min(2 * self._interval, 32 * self.probe_every)

    def budget(self) -> int:
        """The length this source alone would draft now (a single request's step)."""
        k = allocate([[self.offer(self.max_k)]], self.cost.seconds)[0][1]
        self.decide(k)
        return k

    def observe(self, acceptance: Acceptance, times: StepTimes, own_step: bool = True, learn: bool = True,
                setup: bool = False) -> None:
        """The last step's outcome. ``own_step`` False: a step drafted by another source; only
        the clocks run. ``learn`` False: the caller learns acceptance itself (:meth:`learn`).
        ``setup``: the step's drafting time includes a setup (:attr:`Offer.setup_s`), so it says
        nothing about the cost per token (what a probe lost still counts all of it). A step shared
        by ``times.batch`` generations counts as 1/batch of a step (its time and its forgetting),
        so a batch of 8 does not forget 8 steps' worth of what it learned each step."""
        step_s = times.draft_s + times.verify_s
        self._elapsed += times.draft_s + times.verify_s / times.batch
        n = acceptance.drafted if own_step else 0
        self._since_draft = 0 if n else self._since_draft + 1
        if not n and self.recover < 1.0 and self.trusted:  # back towards the measured prior, slowly
            for stats in self._accept:
                stats[0] *= self.recover ** (1 / times.batch)
                stats[1] *= self.recover ** (1 / times.batch)
        if own_step and self._probing:  # what it cost beyond plain steps for the tokens it gave
            self._lost += max(0.0, step_s - (acceptance.accepted + 1) * self.cost.seconds(1))
        self._probing = False
        if n:
            if not setup:
                self.draft_token_s = _ewma(self.draft_token_s or None, times.draft_s / n, self.decay)
            if learn:
                self.learn(acceptance.accepted, acceptance.positions, share=1 / times.batch)

    def learn(self, accepted: int, reached: int, weights: Sequence[float] | None = None, share: float = 1.0) -> None:
        """Acceptance only: of the first ``reached`` positions of a draft the first ``accepted``
        were accepted (``reached`` counts the rejected one). ``weights`` [reached]: what each
        position was expected to be worth (a suffix draft's trie probabilities): the rate then
        learns acceptance relative to them. Also for drafts that were only offered, never sent
        (shadow learning: the tokens the target emitted say how such a draft would have fared).
        ``share``: the observation's weight in forgetting (1/batch for a step shared by a batch)."""
        decay = self.decay ** share
        for stats in self._accept:  # every position forgets, so one not reached lately drifts back
            stats[0] *= decay  # to what its predecessor shows (acceptance())
            stats[1] *= decay
        for i in range(min(reached, self.max_k)):
            stats = self._accept[i if self.positional else 0]
            stats[0] += i < accepted
            stats[1] += weights[i] if weights is not None else 1.0


def _ewma(old: float | None, new: float, decay: float) -> float:
    return new if old is None else decay * old + (1 - decay) * new


# name -> factory(num_draft, cost, draft_token_s); chosen per request by ``controller=`` / ``--controller``.
CONTROLLERS = {
    "fixed": lambda num_draft, cost, draft_token_s: FixedBudget(num_draft),
    "adaptive": lambda num_draft, cost, draft_token_s: AdaptiveBudget(max_k=num_draft, cost=cost,
                                                                       draft_token_s=draft_token_s),
}


def create_controller(name: str, num_draft: int, cost: ForwardCost | None = None,
                      draft_token_s: float = 0.0) -> Controller:
    if name not in CONTROLLERS:
        raise InvalidParameterError(f"unknown controller {name!r}; choose one of: {', '.join(CONTROLLERS)}",
                                    param="controller")
    return CONTROLLERS[name](num_draft, cost or ForwardCost(), draft_token_s)
