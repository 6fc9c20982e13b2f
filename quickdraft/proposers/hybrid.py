"""Hybrid drafting: each step, the best of a plain step, a suffix draft and a draft-model draft.

The choice is the cost model of control.py applied per source: a suffix draft's tokens are
accepted with probability (the trie's frequency of that token) x (the acceptance learned for
suffix drafts of that position and match strength); a draft-model draft with the acceptance
learned for it by position. Each source's cost per draft token is measured, and all share one
estimate of the target's forward cost by size. The source (and length) with the most expected
tokens per second wins; a plain step wins when nothing beats it. Sources that lose for a while
are probed now and then with a short draft (back-off as in AdaptiveBudget), so a change in the
text (a stretch of copying starts) is noticed.

The draft model drafts ahead (proposers/parallel.py: the next step's draft made on threads of its
own while the target verifies) in a request that runs alone, where this machine's costs on split
threads (calibrate.split_costs) predict it beats drafting in turn (control.ahead_gain); from then
on the steps measure which of the two is faster (parallel.run_ahead).

Nothing is spent on a source before it is chosen: the draft model sees the context only when it
first drafts for a request (its catch-up is that offer's ``setup_s``), and a suffix class drafts
only once the shadow has graded it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..backends.base import THREADS, TREE
from ..control import AdaptiveBudget, Offer, ahead_gain, catch_up, expected_tokens
from ..errors import InvalidParameterError
from ..sampling import SamplingParams
from ..records import Acceptance, Draft, StepTimes
from .base import BaseProposer, ProposerSpec, Resources
from .draft_model import DraftOptions, drafter
from .grammar import GRAMMAR, ForcedDrafts, JumpForwardOptions
from .lookahead import Jacobi
from .parallel import ParallelDraftProposer, ParallelOptions, Rates
from .suffix import Candidate, SuffixMemory, SuffixOptions, SuffixProposer

# Suffix drafts by the length of the match they continue: (name, shortest match, acceptance
# assumed before any was seen). Each class learns a rate per draft position (relative to the
# trie's frequencies): a copied span's first token is the doubtful one (on the bench's prose a
# short match's first token is right about a third of the time, the ones after it mostly).
SUFFIX_CLASSES = (("suffix-long", 8, 0.9), ("suffix-medium", 3, 0.7), ("suffix-short", 1, 0.5))

# A suffix class is graded on every step that has a match, in every running request, so forgetting
# at the draft model's pace (0.9 an observation: the last ten or so) makes its rate a short, noisy
# average, and its drafts are sent on the highs of that noise. It forgets at this pace (the last
# thirty or so matches). Measured on the bench's prose at 2 clients (AMD Zen 4, in process, the
# server's scheduler, scripts/sent_drafts_ab.py: 6-8 rounds of 4 prompts, the steps taken priced
# on the calibrated curve against plain continuous batching's, mean): neither this nor
# AdaptiveBudget.realized 0.978 and 0.987 (two runs), this alone 0.986 and 0.989, realized alone
# 0.990, both 0.991 and 0.997; on code edits this alone changed nothing beyond the noise.
SUFFIX_DECAY = 0.97

# The draft model's prior (its agreement measured on answers at load) weighs as this many drafts:
# an answer's first token is the one the two models most often disagree on (two thirds agree on
# the bench's answers, against 0.85-0.95 after it), so one rejection there must not outweigh the
# measurement; two do (a prior of 0.8 falls to 0.48 at the first position).
DRAFT_PRIOR_WEIGHT = 3.0
DRAFT_RECOVER = 0.8

# Lookahead's Jacobi branch in auto: 3-grams (two levels), as many columns as the free rows hold
# (a column costs two rows), at most 8; its pool's n-grams are believed a third of the time
# before the shadow has graded them.
LOOKAHEAD_NGRAM, LOOKAHEAD_WINDOW, LOOKAHEAD_PRIOR = 3, 8, 0.3


# The draft model's catch-up with a request's context is paid once and then serves every later
# draft: its offer spreads that cost over the request's next tokens, at most this many (a request
# may end sooner than its max_tokens says).
HORIZON = 64


def match_strength(match_length: int) -> str:
    return next(name for name, shortest, _ in SUFFIX_CLASSES if match_length >= shortest)


@dataclass(frozen=True)
class AutoOptions(SuffixOptions, DraftOptions, JumpForwardOptions):
    """The suffix drafter's options, the draft model's ``min_confidence``, and ``max_draft``: the
    longest draft auto considers (the engine's budget caps it further). Its suffix candidates are
    not cut by length or survival probability (``length_per_match``, ``min_prob``): every token
    comes with its estimated acceptance and the cost model decides how many to draft, so a
    machine that verifies a few rows for free drafts even doubtful tokens."""

    max_draft: int = 16
    length_per_match: float = 16.0
    min_prob: float = 0.0

    def __post_init__(self) -> None:
        SuffixOptions.__post_init__(self)
        DraftOptions.__post_init__(self)
        if self.max_draft < 1:
            raise InvalidParameterError(f"max_draft must be >= 1, got {self.max_draft}", param="max_draft")

    def suffix(self) -> SuffixOptions:
        return SuffixOptions(self.depth, self.global_tokens, self.length_per_match, self.min_prob)


class AutoMemory:
    """What auto learns across requests: the suffix store of earlier outputs, and per source (the
    suffix match classes, the draft model, lookahead's pool) an :class:`AdaptiveBudget`, seeded
    from the calibrated prior; the target's forward cost is the engine's (``resources.cost``)."""

    def __init__(self, resources: Resources, options: AutoOptions) -> None:
        prior, k = resources.prior, options.max_draft
        forward = [resources.cost.relative_at(n + 1) for n in range(k + 1)]  # the calibrated curve, in steps
        self.ahead = ahead_gain([prior.draft_accept or 0.5] * (k + 1), prior.draft_token or 0.0, forward,
                                prior.draft_ahead)  # (split, k, gain)
        self.rates = Rates()  # drafting ahead against in turn, as measured (proposers/parallel.py)
        self.suffix = SuffixMemory(options.suffix())
        self.control = {name: AdaptiveBudget(max_k=k, cost=resources.cost, prior_accept=accept,
                                             source=name, decay=SUFFIX_DECAY)
                        for name, _, accept in SUFFIX_CLASSES}
        if TREE in resources.target.capabilities:
            self.control["lookahead"] = AdaptiveBudget(max_k=k, cost=resources.cost, prior_accept=LOOKAHEAD_PRIOR,
                                                       source="lookahead")
        if resources.draft is not None:
            self.control["draft"] = AdaptiveBudget(max_k=k, cost=resources.cost, draft_token_s=prior.draft_token_s(),
                                                   prior_accept=prior.draft_accept or 0.5, source="draft",
                                                   prior_weight=DRAFT_PRIOR_WEIGHT, recover=DRAFT_RECOVER)


class AutoProposer(BaseProposer):
    """``auto``: a suffix drafter (this request and earlier outputs), when the engine has a draft
    model that draft model, and on a backend with token trees lookahead's n-gram pool. Each step it
    offers what each source could draft (a candidate's tokens with their estimated acceptance: the
    suffix trie's probability of each token times the rate learned for its match class, the pool's
    n-gram times the pool's rate; the draft model's learned acceptance and cost) and drafts what
    the engine allocates (control.allocate: the most expected tokens per second, for one request or
    a whole batch, a plain step included). Each draft names its source (a suffix class, "draft",
    "ahead": the draft model's, made while the last step verified, "lookahead" or "plain").

    Candidates (suffix, pool) cost nothing to propose, so their acceptance is learned from every
    step, drafted or not: the tokens the target emitted say how each would have fared (shadow
    learning), and they never need a probe. The draft model is learned from its own drafts; its
    probes are bounded by what they may lose (AdaptiveBudget). The draft model is not given the
    prompt at the start: it catches up when it first drafts, and until then costs the request
    nothing (no prefill, no cache). Lookahead's Jacobi branch rides only in rows the engine finds
    free (:meth:`ride`), so on a machine where every row costs, the pool stays empty and free.
    """

    def __init__(self, resources: Resources, memory: AutoMemory, options: AutoOptions) -> None:
        self.memory = memory
        self.suffix = SuffixProposer(memory.suffix, options.suffix())
        self.alone = resources.alone
        split, _, gain = memory.ahead
        self.ahead = ParallelDraftProposer(resources, memory.rates, ParallelOptions(
            options.min_confidence, draft_threads=split.draft_threads, target_threads=split.target_threads)) \
            if gain > 1.0 and can_draft_ahead(resources) else None  # drafting ahead: where it is predicted to pay
        self.drafter = self.ahead or (drafter(resources, options) if resources.draft is not None else None)
        self.jacobi = Jacobi(1) if "lookahead" in memory.control else None
        self.draft_prefill = resources.prior.draft_prefill
        jump = resources.constraint is not None and options.jump_forward
        self.forced = ForcedDrafts(resources.constraint) if jump else None  # proposers/grammar.py
        self._source: str | None = None  # the last draft's source, until observed
        self._behind = 0  # the last offer's catch-up of the draft model (catch_up), in tokens
        self._setup = False  # the last draft began with a catch-up of the draft model
        self._candidates: dict[str, Candidate] = {}  # the last offer's free candidates, by source
        self._learned: dict[str, tuple[float, ...]] = {}  # their offered ones' acceptance as learned, by source
        self._seen: Counter[str] = Counter()  # steps each source had something to offer
        self._drafted: Counter[str] = Counter()  # steps each source drafted
        self._rides = 0  # steps lookahead's branch rode in

    def begin(self, prompt: Sequence[int]) -> None:
        self.suffix.begin(prompt)

    def catch_up(self, context: Sequence[int]) -> int:
        """Tokens of ``context`` the draft model would evaluate before its first draft token
        beyond those a draft in step with the target has (the pending token and one accepted)."""
        behind = self.drafter.behind(context)
        return behind if behind > 2 else 0

    def end(self, context: Sequence[int]) -> None:
        self.suffix.end(context)
        if self.ahead is not None:
            self.ahead.end(context)

    def offers(self, context: Sequence[int], cap: int, remaining: int | None = None) -> list[Offer]:
        control, offers, self._candidates, self._learned = self.memory.control, [], {}, {}
        candidate, match = self.suffix.candidate(context, cap)
        if candidate.tokens:
            self._candidates[match_strength(match)] = candidate
        if self.jacobi is not None and (found := self.jacobi.pool.get(int(context[-1]))):
            self._candidates["lookahead"] = Candidate(list(found[0][:cap]), [1.0] * min(cap, len(found[0])))
        self._seen.update(self._candidates.keys())
        for name, candidate in self._candidates.items():
            if control[name].graded or control[name].trusted:
                accept = [min(1.0, a * p) for a, p in zip(control[name].acceptance(), candidate.probs)]
                self._learned[name] = tuple(accept)  # the offer's is scaled by what sent drafts realized
                accept[0] *= control[name].realized()  # (control.SENT_WEIGHT)
                offers.append(Offer(name, tuple(accept), control[name].draft_token_s))
        if self.drafter:
            draft = control["draft"]
            behind = self._behind = self.catch_up(context)
            setup = behind and draft.draft_token_s * catch_up(behind, draft.cost.relative_at, self.draft_prefill)
            offers.append(draft.offer(cap, setup, horizon=min(remaining or HORIZON, HORIZON)))
        if self.forced:  # the tokens a request's grammar forces: certain, free (proposers/grammar.py)
            offers += self.forced.offers(cap)
        return offers

    def draft(self, context: Sequence[int], offer: Offer | None, k: int, sampling: SamplingParams,
              rng: np.random.Generator) -> Draft:
        self._source = offer.source if offer is not None and k else "plain"
        self._drafted[self._source] += 1
        if self.ahead is not None and self._source != "draft":
            self.ahead.idle()  # nothing runs ahead beside this step, which verifies on the engine's threads
        if self._source == GRAMMAR:
            return self.forced.draft(k)
        if offer is not None:
            self.memory.control[offer.source].decide(k)
        if self._source == "draft":
            self._setup = self._behind > 0  # the offer just made measured it on this context
            draft = self.drafter.propose(context, k, sampling, rng)
            return Draft(draft.tokens, draft.q, source="ahead" if draft.source == "ahead" else "draft")
        return Draft(tuple(self._candidates[self._source].tokens[:k]) if k else (), source=self._source)

    def ride(self, context: Sequence[int], draft: Draft, rows: int) -> Draft:
        """The draft with lookahead's Jacobi branch riding in ``rows`` free rows, when it fits
        (the first free rows set the window: ``LOOKAHEAD_NGRAM`` - 1 levels, as many columns as
        fit, at most ``LOOKAHEAD_WINDOW``)."""
        if self.jacobi is None:
            return draft
        if not self.jacobi.levels:
            window = min(LOOKAHEAD_WINDOW, (rows + 1) // (LOOKAHEAD_NGRAM - 1))
            self.jacobi.start(context, max(window, 1), LOOKAHEAD_NGRAM)
        if self.jacobi.rows > rows:
            return draft
        self._rides += 1
        return self.jacobi.ride(draft, int(context[-1]))

    def why(self) -> dict[str, str]:
        """Per source, what it did in this request or why it did not draft."""
        control, drafted = self.memory.control, self._drafted
        suffix = sum(drafted[name] for name, _, _ in SUFFIX_CLASSES)
        matches = sum(self._seen[name] for name, _, _ in SUFFIX_CLASSES)
        notes = {"suffix": f"drafted in {suffix} steps" if suffix else
                 f"{matches} matches, none worth drafting at its learned acceptance on this machine's costs"
                 if matches else "no match in the prompt or earlier answers"}
        if self.drafter is None:
            notes["draft"] = "no draft model (--draft)"
        elif drafted["draft"]:
            notes["draft"] = f"drafted in {drafted['draft']} steps"
        else:
            k, speedup = control["draft"].predicted()
            notes["draft"] = (f"not trusted here: at its agreement measured on answers "
                              f"({control['draft'].prior_accept:.2f}), a draft token of "
                              f"{control['draft'].draft_token_s / control['draft'].cost.seconds(1):.2f} steps and "
                              f"this machine's forward costs it predicts {speedup:.2f}x"
                              + (f" at k = {k}" if k else " (drafting does not pay)")
                              + "; it enters by probes, within 2% of the time, and none was due")
        if self.drafter is not None:
            notes["draft ahead"] = self._why_ahead()
        if self.jacobi is None:
            notes["lookahead"] = "needs a backend with token trees"
        elif not self._rides:
            notes["lookahead"] = "no free rows here (its branch rides only where extra rows cost nothing)"
        else:
            notes["lookahead"] = f"its branch rode in {self._rides} steps; its n-grams drafted in " \
                                 f"{drafted['lookahead']} steps"
        if self.forced:
            notes[GRAMMAR] = f"drafted the tokens the grammar forces in {drafted[GRAMMAR]} steps"
        return notes

    def _why_ahead(self) -> str:
        """Whether the draft model drafted ahead (proposers/parallel.py), or why not."""
        split, k, gain = self.memory.ahead
        if self.ahead is not None:
            steps = self.memory.rates.steps
            return (f"predicted {gain:.2f}x of drafting in turn on {split.target_threads}+{split.draft_threads} "
                    f"threads; measured since: {steps[True]} steps ahead, {steps[False]} in turn")
        if not self.alone:
            return "only for a request that runs alone (in a batch the models serve other requests between steps)"
        if split is None:
            return ("this machine's costs on split threads are not measured (llama.cpp models, 2+ threads, "
                    "a draft of the target's vocabulary)")
        return (f"does not pay here: on {split.target_threads}+{split.draft_threads} threads this machine's costs "
                f"predict {gain:.2f}x of drafting in turn")

    def observe(self, acceptance: Acceptance, times: StepTimes) -> None:
        """Learn from the step just verified (the engine's timings of it). A step the engine took
        without asking for a draft (no room left) teaches nothing."""
        if self.ahead is not None:
            self.ahead.observe(acceptance, times)
        if self.jacobi is not None:
            self.jacobi.learn(acceptance.guesses)
        source, self._source = self._source, None
        if source is None:
            return
        if source in self._learned and acceptance.drafted:  # a sent candidate: predicted against realized
            predicted = expected_tokens(self._learned[source], acceptance.drafted) - 1
            self.memory.control[source].sent(predicted, acceptance.accepted)
        for name, control in self.memory.control.items():
            control.observe(acceptance, times, own_step=name == source, learn=name == "draft",
                            setup=name == source == "draft" and self._setup)
        for name, candidate in self._candidates.items():  # drafted or not, the emitted tokens grade them
            matched, reached = shadow_outcome(candidate.tokens, acceptance.tokens)
            self.memory.control[name].learn(matched, reached, candidate.probs, share=1 / times.batch)


def can_draft_ahead(resources: Resources) -> bool:
    """Whether a request can draft ahead: it runs alone, with a draft model of the target's
    vocabulary, and both models' threads can be set."""
    return (resources.alone and resources.draft is not None and resources.bridge is None
            and THREADS in resources.target.capabilities and THREADS in resources.draft.capabilities)


def shadow_outcome(candidate: Sequence[int], emitted: Sequence[int]) -> tuple[int, int]:
    """How a draft of ``candidate`` would have fared, given the tokens the target emitted: (its
    tokens that would have been accepted, the positions that are known), as a verifier would
    count them: the rejected position counts, positions past what was emitted are unknown.

    Example: shadow_outcome([5, 6, 7], [5, 9]) == (1, 2); shadow_outcome([5, 6], [5, 6, 8]) == (2, 2);
    shadow_outcome([5, 6, 7], [5]) == (1, 1).
    """
    known = min(len(candidate), len(emitted))
    matched = next((i for i in range(known) if candidate[i] != emitted[i]), known)
    return matched, matched + (matched < known)


AUTO = ProposerSpec("auto", "per step the best of a suffix draft, a draft-model draft and a plain step, "
                    "by expected tokens per second",
                    make=lambda resources, memory, options: AutoProposer(resources, memory, options),
                    memory=lambda resources, options: AutoMemory(resources, options),
                    options=AutoOptions, draft_model="optional", draft_vocabulary="any", decides_budget=True,
                    default_budget=16)
