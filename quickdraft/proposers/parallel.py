"""Parallel drafting (PEARL's post-verify, Liu et al. 2024, arXiv 2408.11850): the draft model
drafts the next step's tokens on a thread of its own while the target verifies this step's.

Each step drafts a chain as ``draft`` does; then, while the target's forward runs (llama.cpp
releases the GIL, so the two models compute at once on their own threads), the draft model goes
on from the context *as if the whole draft is accepted*: its guess of the target's next token,
then the tokens after it. If the target accepts the whole draft and its own next token is that
guess, the tokens after it are the next step's draft, already made; otherwise they are dropped
(the draft model's cache rolls back to the common prefix, as after any rejection).

Lossless as any draft: what runs ahead never touches the verifier. Its tokens are the draft
model's argmax (greedy) or samples from its warped distribution q with a random stream of their
own (a seed drawn from the request's stream before the step), kept with q for the rejection
verifier; keeping them only when the guess equals the target's token selects on the guess
alone, and each later token is still drawn from q given the true context.

The threads are split in the steps that draft ahead: the target on ``target_threads`` and the
draft model on ``draft_threads`` (the engine's again in the other steps and at the end), so the
two do not fight over the same cores. Whether a step drafts ahead is measured, not assumed
(``ahead="measure"``, :func:`run_ahead`): the tokens per second of steps with and without it on
this machine, for this kind of text; where it loses, the method is ``draft``. The method runs
one request at a time (``ProposerSpec.alone``): the draft model's context is in use between
steps. On 2 cores it does not pay (README, "Parallel drafting"): the target slows more on one
thread than the overlap saves.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..backends.base import THREADS, common_prefix
from ..errors import InvalidParameterError, UnknownMethodError
from ..records import Acceptance, Draft, StepTimes
from ..sampling import SamplingParams, draft_chain
from .base import BaseProposer, ProposerSpec, Resources
from .draft_model import DraftModelProposer, DraftOptions


AHEAD = ("measure", "always", "never")


@dataclass(frozen=True)
class ParallelOptions(DraftOptions):
    """``draft_threads``: the draft model's threads while it drafts beside the target;
    ``target_threads``: the target's meanwhile (0: the engine's, less ``draft_threads``, at
    least 1). ``ahead``: when the draft model drafts beside the target: ``measure`` (the
    default: in the steps where this machine measured it faster than drafting in turn, see
    :func:`run_ahead`), ``always`` or ``never`` (then it is ``draft`` on the engine's threads)."""

    draft_threads: int = 1
    target_threads: int = 0
    ahead: str = "measure"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.draft_threads < 1 or self.target_threads < 0:
            raise InvalidParameterError(f"draft_threads must be >= 1 and target_threads >= 0, got "
                                        f"{self.draft_threads}, {self.target_threads}", param="draft_threads")
        if self.ahead not in AHEAD:
            raise InvalidParameterError(f"ahead must be one of {', '.join(AHEAD)}, got {self.ahead!r}", param="ahead")


@dataclass
class Rates:
    """What steps yielded with and without drafting ahead, as this engine measured them (the
    method's memory, kept across requests): per mode (True: ahead), tokens emitted and seconds
    (the step's verification and the next step's proposing, which the ahead made shorter or
    not), decayed so the recent steps count most, and the steps taken."""

    tokens: dict[bool, float] = field(default_factory=lambda: {True: 0.0, False: 0.0})
    seconds: dict[bool, float] = field(default_factory=lambda: {True: 0.0, False: 0.0})
    steps: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})

    def observe(self, ahead: bool, tokens: int, seconds: float, decay: float = 0.97) -> None:
        self.tokens[ahead] = decay * self.tokens[ahead] + tokens
        self.seconds[ahead] = decay * self.seconds[ahead] + seconds
        self.steps[ahead] += 1


def run_ahead(rates: Rates, explore: int = 8, every: int = 16) -> bool:
    """Whether the next step drafts ahead: each mode is tried ``explore`` steps first (ahead
    first), then the one of more tokens per second is taken, the other again one step in
    ``every`` (so a change, a new kind of text or a busier machine, is seen)."""
    for mode in (True, False):
        if rates.steps[mode] < explore:
            return mode
    best = rates.tokens[True] * rates.seconds[False] >= rates.tokens[False] * rates.seconds[True]
    return (not best) if (rates.steps[True] + rates.steps[False]) % every == 0 else best


class _Ahead:
    """The draft model drafting on from ``start`` on a thread of its own: ``cap`` tokens, fewer
    where its confidence is below ``min_confidence`` or when told to stop (:meth:`stop`: only
    when nothing of it can be used, so what is used never depends on timing). ``drafted``: a
    Draft of [m] tokens (with q [m, V] when sampled), once joined."""

    def __init__(self, model, start: list[int], cap: int, sampling: SamplingParams, seed: int,
                 min_confidence: float) -> None:
        self.start = start
        self.drafted = Draft()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="quickdraft-draft-ahead", daemon=True,
                                         args=(model, cap, sampling, np.random.default_rng(seed), min_confidence))
        self._thread.start()

    def _run(self, model, cap: int, sampling: SamplingParams, rng: np.random.Generator,
             min_confidence: float) -> None:
        try:
            logits = model.prefill(self.start, last_logits=True)
            self.drafted = draft_chain(logits, lambda token: model.forward([token], outputs="last")[-1], cap, sampling,
                                       rng, min_confidence, stopped=self._stopped.is_set)
        except BaseException as e:  # handed to the engine's thread at join
            self._error = e

    def stop(self) -> None:
        self._stopped.set()

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error

    def following(self, context: Sequence[int]) -> Draft:
        """What of this run is a draft for ``context``: the tokens after its first, when
        ``context`` is ``start`` plus that first token (the target accepted everything and
        guessed alike); else nothing."""
        n, tokens, q = len(self.start), self.drafted.tokens, self.drafted.q
        if len(tokens) < 2 or len(context) != n + 1 or context[n] != tokens[0] or list(context[:n]) != self.start:
            return Draft()
        return Draft(tokens[1:], None if q is None else q[1:])


class ParallelDraftProposer(BaseProposer):
    """A draft model's chain, the next one drafted during this one's verification (module doc)."""

    def __init__(self, resources: Resources, rates: Rates, options: ParallelOptions) -> None:
        self.target, self.model, self.options, self.rates = resources.target, resources.draft, options, rates
        self.in_turn = DraftModelProposer(self.model, options)  # drafting here and now, as ``draft`` does
        self._ahead: _Ahead | None = None
        self._mode: bool | None = None  # whether this step drafts ahead (None: it drafts nothing)
        self._pending: tuple[bool, int, float] | None = None  # the last step's (mode, tokens, verify seconds)
        self._threads = (self.target.n_threads, self.model.n_threads)  # the engine's, restored at end

    def begin(self, prompt: Sequence[int]) -> None:
        self.model.prefill(prompt[:-1])

    def behind(self, context: Sequence[int]) -> int:
        """Tokens of ``context`` the draft model lacks (while it runs ahead: beyond the start it
        was given, which it only adds to)."""
        if self._ahead is None:
            return self.in_turn.behind(context)
        return len(context) - common_prefix(self._ahead.start, context)

    def idle(self) -> None:
        """The step drafts nothing from the draft model: what runs ahead stops, and the target
        verifies on the engine's threads."""
        self._join(stop=True)
        self._split(False)

    def _split(self, ahead: bool) -> None:
        """The threads for a step that drafts ahead (the options' split) or in turn (the engine's)."""
        target, draft = self._threads
        if ahead:
            target, draft = self.options.target_threads or max(1, target - self.options.draft_threads), \
                self.options.draft_threads
        if (self.target.n_threads, self.model.n_threads) != (target, draft):
            self.target.set_threads(target)
            self.model.set_threads(draft)

    def propose(self, context: Sequence[int], budget: int, sampling: SamplingParams,
                rng: np.random.Generator) -> Draft:
        if budget <= 0:
            self.idle()
            return Draft()
        ahead = self._join().following(context) if self._ahead is not None else Draft()
        draft = ahead
        if len(draft) < budget:
            self._split(False)  # drafting in turn: the draft model on the engine's threads
            more = self.in_turn.propose([*context, *draft.tokens], budget - len(draft), sampling, rng)
            rows = [r for r in (draft.q, more.q) if r is not None]
            draft = Draft(draft.tokens + more.tokens, np.concatenate(rows) if rows else None)
        draft = Draft(draft.tokens[:budget], None if draft.q is None else draft.q[:budget],
                      source="ahead" if ahead.tokens else "draft")
        option = self.options.ahead
        self._mode = run_ahead(self.rates) if option == "measure" else option == "always"
        self._split(self._mode)
        if self._mode:
            seed = int(rng.integers(2 ** 63))
            self._ahead = _Ahead(self.model, [*context, *draft.tokens], budget + 1, sampling, seed,
                                 self.options.min_confidence)
        return draft

    def observe(self, acceptance: Acceptance, times: StepTimes) -> None:
        if self._ahead is not None and acceptance.accepted < acceptance.drafted:
            self._ahead.stop()  # it went on from a rejected token: nothing of it is wanted
        self._account(times.draft_s)  # the last step's ahead made (or did not make) this step's draft
        self._pending = None if self._mode is None else (self._mode, len(acceptance.tokens), times.verify_s)
        self._mode = None

    def end(self, context: Sequence[int]) -> None:
        self.idle()
        self._account(0.0)

    def _account(self, draft_s: float) -> None:
        """The last step's mode learns what it yielded: its tokens over its verification and
        ``draft_s``, the proposing that followed it."""
        if self._pending is not None:
            mode, tokens, verify_s = self._pending
            self.rates.observe(mode, tokens, verify_s + draft_s)
            self._pending = None

    def _join(self, stop: bool = False) -> _Ahead | None:
        """Wait for what runs ahead (told to stop first with ``stop``: nothing of it is wanted);
        the draft model is then free. Returns it."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            if stop:
                ahead.stop()
            ahead.join()
        return ahead


def parallel(resources: Resources, rates: Rates, options: ParallelOptions) -> ParallelDraftProposer:
    """The proposer, once the draft model is known to take a thread count (the target's is the
    method's declared need; a draft model handed in open may be another backend)."""
    if THREADS not in resources.draft.capabilities:
        raise UnknownMethodError("method 'parallel' needs a draft model whose threads can be set (llama.cpp)")
    return ParallelDraftProposer(resources, rates, options)


PARALLEL = ProposerSpec("parallel", "the draft model drafts the next step on threads of its own while the target "
                        "verifies (PEARL post-verify), in the steps where that measured faster",
                        make=lambda resources, memory, options: parallel(resources, memory, options),
                        memory=lambda resources, options: Rates(),
                        options=ParallelOptions, draft_model="required", requires=frozenset({THREADS}), alone=True)

