"""quickdraft's drafting as a vLLM speculative method (vLLM's experimental ``custom_class``).

    from vllm import LLM
    llm = LLM("Qwen/Qwen2.5-Coder-7B-Instruct",
              speculative_config={"method": "custom_class", "num_speculative_tokens": 16,
                                  "model": "quickdraft.integrations.vllm.QuickdraftProposer"},
              additional_config={"quickdraft": {"global_tokens": 200_000}})    # optional, see OPTIONS

vLLM owns the model; what runs inside it is the suffix side of quickdraft's ``auto``: per request
a local :class:`SuffixTrie` over its prompt and output, one global trie over the outputs of
finished requests (bounded in tokens), and each step, for each request, the draft length (0
included) with the most expected tokens per second: the trie's frequency of each token times an
acceptance learned per match-strength class (``SUFFIX_CLASSES``, an :class:`AdaptiveBudget`
each, as ``AutoProposer.plan`` does for its suffix source), against the measured cost of a step.

A step of a batch is shared by all its requests, so the step cost is learned per batch-size class
(1, 2-3, 4-7, ...) by the mean draft length per request in the step (:class:`BatchCost`). A
request then drafts the length that would maximise tokens per second if every request drafted
that much: exact for a batch of requests alike, and it stops a large compute-bound batch from
drafting as if its tokens were free.

Two layers: :class:`BatchDrafter` (pure Python, no vLLM: request bookkeeping, learning, drafts)
and :class:`QuickdraftProposer` (the adapter vLLM instantiates). Interface of vLLM 0.32.0 (pinned
in the ``vllm`` extra; the method is marked experimental upstream):

- ``vllm/v1/spec_decode/custom_class_proposer.py`` imports ``speculative_config.model`` and calls
  ``cls(vllm_config)``; the instance needs a callable ``propose``. Async scheduling is switched
  off for this method, so ``propose`` sees the tokens sampled in the step that just ran.
- ``GPUModelRunner.propose_draft_token_ids`` (also the CPU runner's) calls, after bookkeeping,
  ``propose(sampled_token_ids, input_batch.num_tokens_no_spec, input_batch.token_ids_cpu,
  slot_mappings=...)`` and expects one list of draft token ids per batch row; lists may differ in
  length and be empty (the scheduler trims to what it schedules). The CPU runner also calls
  ``load_model(model)`` unconditionally.
- No request ids and no finish events are passed. The adapter reads them from the runner's
  ``InputBatch`` (``req_ids``, ``num_prompt_tokens``, ``spec_token_ids`` = the drafts verified
  in this step), found from the caller's frame and checked by identity of ``token_ids_cpu``; a
  request that is no longer in the batch has finished (or was preempted) and its state is
  dropped, its output moved into the global trie, as vLLM's own ``suffix`` method does.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

from ..control import AdaptiveBudget, ForwardCost, best_rate
from ..proposers.hybrid import SUFFIX_CLASSES, match_strength
from ..proposers.suffix import Candidate, SuffixTrie, best_continuation
from ..records import StepTimes

__all__ = ["OPTIONS", "BatchCost", "BatchDrafter", "QuickdraftProposer", "Row"]

VLLM_VERSION = "0.32.0"  # the release whose interface this adapter was written and tested against

# additional_config={"quickdraft": {...}}: name -> (default, meaning)
OPTIONS: dict[str, tuple[Any, str]] = {
    "controller": ("adaptive", "'adaptive': per step and request the length with the most expected tokens per "
                               "second (0 included); 'fixed': always the whole candidate, as the suffix method"),
    "depth": (16, "longest substring the tries count (match + draft)"),
    "length_per_match": (2.0, "at most this many draft tokens per matched token"),
    "min_prob": (0.1, "cut a draft where its estimated survival probability falls below this"),
    "local_tokens": (8192, "per request: the last this many tokens of prompt + output are held in its trie"),
    "global_tokens": (100_000, "tokens of finished requests' outputs held in the global trie (0: none)"),
    "relative_cost": (None, "prior step cost with k = 0..K draft tokens per request, relative to k = 0 "
                            "(default 1 + k/16: optimistic, so that lengths not yet measured get tried)"),
}


class Row(NamedTuple):
    """One request of the batch at a step, as :meth:`BatchDrafter.step` reads it.

    tokens: prompt + output so far (a list or a 1-D array); prompt_len: how many of them are the
    prompt; new: tokens sampled in the step that just ran (0: a prefill chunk, nothing to draft
    from yet); verified: draft tokens the step verified for it (None: as many as were proposed);
    room: draft at most this many tokens (what the model length leaves)."""

    req_id: str
    tokens: Sequence[int]
    prompt_len: int
    new: int
    verified: int | None
    room: int


class _Outcome(NamedTuple):
    """The fields of quickdraft's Acceptance that AdaptiveBudget.observe reads (a chain draft)."""

    accepted: int
    drafted: int

    @property
    def positions(self) -> int:
        return self.drafted


def _bucket(batch_size: int) -> int:
    return 1 << (max(batch_size, 1).bit_length() - 1)


class BatchCost:
    """The target's seconds per step, by the mean draft tokens per request, learned per batch-size
    class (powers of two): one :class:`ForwardCost` each, seeded from the same relative curve. A
    class not measured yet borrows the nearest measured one. Shared by the class controllers as
    their ``cost`` (the interface of ForwardCost that AdaptiveBudget uses), with ``size`` set to
    the batch being decided. Their per-request ``observe`` calls are ignored: a step's time
    belongs to the whole batch, which :meth:`record` gets once per step."""

    def __init__(self, max_k: int, relative_cost: Sequence[float] | None = None, decay: float = 0.9) -> None:
        self.max_k, self.decay = max_k, decay
        self._prior = ForwardCost(relative_cost, decay=decay)  # n = k + 1: k draft tokens per request
        self.relative_cost = self._prior.relative
        self.by_size: dict[int, ForwardCost] = {}
        self.size = 1

    def _view(self) -> ForwardCost:
        size = _bucket(self.size)
        measured = [s for s, cost in self.by_size.items() if cost.measured]
        if size in measured or not measured:
            return self.by_size.get(size, self._prior)
        return self.by_size[min(measured, key=lambda s: abs(math.log2(s / size)))]

    @property
    def measured(self) -> bool:
        return self._view().measured

    def seconds(self, n: int) -> float:
        """A step whose requests draft n - 1 tokens each, for the batch being decided."""
        return self._view().seconds(n)

    def curve(self, max_k: int) -> list[float]:
        return self._view().curve(max_k)

    def observe(self, n: int, seconds: float) -> None:
        """AdaptiveBudget's per-request observation: ignored (see :meth:`record`)."""

    def record(self, batch_size: int, mean_k: float, seconds: float) -> None:
        """A step of ``batch_size`` decoding requests that verified ``mean_k`` draft tokens each on
        average took ``seconds``."""
        cost = self.by_size.setdefault(_bucket(batch_size), ForwardCost(self.relative_cost, decay=self.decay))
        cost.observe(int(round(mean_k)) + 1, seconds)


@dataclass
class _Request:
    local: SuffixTrie
    prompt_len: int
    learned_from: int  # output from this index goes to the global trie when the request ends
    held: int = 0  # tokens of the request in ``local``
    open_len: int = 0  # tokens in local's open sequence (closed every ``chunk`` to allow eviction)
    output: list[int] = field(default_factory=list)  # tokens[learned_from:held]
    source: str | None = None  # last step's choice: a SUFFIX_CLASSES name, "plain", or None (none made)
    proposed: int = 0
    draft_time: float = 0.0


class BatchDrafter:
    """Suffix drafts for a batch of requests, keyed by request id (no vLLM inside).

    ``step(rows)`` is called once per engine step with every request in the batch. It first learns
    from the step that just ran (each request's accepted tokens per class; the step's time per
    batch-size class), drops the requests that left the batch (their output goes into the global
    trie), then returns each row's draft: ``[]`` for prefill chunks, for rows without a suffix
    match, and where a plain step has the most expected tokens per second.
    """

    chunk = 1024  # local tries close a sequence every this many tokens, so the oldest can be evicted

    def __init__(self, max_draft: int, controller: str = "adaptive", depth: int = 16, length_per_match: float = 2.0,
                 min_prob: float = 0.1, local_tokens: int = 8192, global_tokens: int = 100_000,
                 relative_cost: Sequence[float] | None = None, max_closed: int = 4096) -> None:
        if controller not in ("adaptive", "fixed"):
            raise ValueError(f"controller must be 'adaptive' or 'fixed', not {controller!r}")
        if max_draft < 1 or depth < 2 or local_tokens < depth or global_tokens < 0:
            raise ValueError(f"need max_draft >= 1, depth >= 2, local_tokens >= depth, global_tokens >= 0; got "
                             f"{max_draft}, {depth}, {local_tokens}, {global_tokens}")
        self.max_draft, self.adaptive = max_draft, controller == "adaptive"
        self.depth, self.length_per_match, self.min_prob = depth, length_per_match, min_prob
        self.local_tokens, self.global_tokens = local_tokens, global_tokens
        self.global_trie = SuffixTrie(depth, max_tokens=global_tokens)
        self.cost = BatchCost(max_draft, relative_cost or [1 + k / 16 for k in range(max_draft + 1)])
        self.control = {name: AdaptiveBudget(max_k=max_draft, cost=self.cost, positional=False, prior_accept=prior)
                        for name, _, prior in SUFFIX_CLASSES}
        self.requests: dict[str, _Request] = {}
        self._closed: OrderedDict[str, int] = OrderedDict()  # req id -> tokens already learned (resumptions)
        self.max_closed = max_closed
        self._proposed_at: float | None = None
        self.clock = time.perf_counter
        self.totals = {"steps": 0, "drafted": 0, "accepted": 0, "finished": 0}
        self.decisions: dict[str, int] = {}

    # -- the step ------------------------------------------------------------------------------

    def step(self, rows: Sequence[Row]) -> list[list[int]]:
        start = self.clock()
        step_s = start - self._proposed_at if self._proposed_at is not None else None
        live = {row.req_id for row in rows}
        for req_id in [r for r in self.requests if r not in live]:
            self.finish(req_id)
        self._record_cost(rows, step_s)
        decoding = [row for row in rows if row.new > 0]
        self.cost.size = len(decoding)
        drafts = []
        for row in rows:
            state = self.requests.get(row.req_id)
            if state is None:
                state = self.requests[row.req_id] = self._open(row)
            self._learn(state, row, step_s, len(decoding))
            self._hold(state, row.tokens)
            drafts.append(self._decide(state, row) if row.new > 0 else [])
        self.totals["steps"] += 1
        self._proposed_at = self.clock()
        return drafts

    def _record_cost(self, rows: Sequence[Row], step_s: float | None) -> None:
        """The step's time, when it was a pure decode step of requests all drafted for last time
        (a joining request's prefill would count as draft tokens)."""
        if step_s is None or not rows:
            return
        states = [self.requests.get(row.req_id) for row in rows]
        if any(s is None or s.source is None or row.new == 0 for s, row in zip(states, rows)):
            return
        verified = [s.proposed if row.verified is None else row.verified for s, row in zip(states, rows)]
        self.cost.record(len(rows), sum(verified) / len(rows), step_s)

    def _learn(self, state: _Request, row: Row, step_s: float | None, batch: int) -> None:
        """How the request's last draft fared; every class sees the step, as in AutoProposer.observe."""
        if state.source is None or row.new == 0:
            return
        drafted = min(state.proposed if row.verified is None else row.verified, state.proposed)
        outcome = _Outcome(max(0, min(row.new - 1, drafted)), drafted)
        self.totals["drafted"] += outcome.drafted
        self.totals["accepted"] += outcome.accepted
        for name, control in self.control.items():
            control.observe(outcome, StepTimes(state.draft_time, step_s or 0.0, max(batch, 1)),
                            own_step=name == state.source)
        state.source = None

    def _decide(self, state: _Request, row: Row) -> list[int]:
        """The draft for the next step (the choice of AutoProposer.plan, suffix source only)."""
        start = self.clock()
        budget = max(0, min(self.max_draft, row.room))
        tokens: list[int] = []
        source = "plain"
        if budget:
            context = _ints(row.tokens[-self.depth:])
            candidate, match = self.candidate(state, context, budget)
            if candidate.tokens:
                name = match_strength(match)
                control = self.control[name]
                if self.adaptive:
                    accept = [a * p for a, p in zip(control.acceptance(), candidate.probs)]
                    k = best_rate(accept, control.draft_token_s, self.cost.curve(budget))[0]
                    if k == 0 and control.probe_due():
                        k = control.short(len(candidate.tokens))
                else:
                    k = len(candidate.tokens)
                if k:
                    control.decide(k)
                    source, tokens = name, candidate.tokens[:k]
        state.source, state.proposed = source, len(tokens)
        state.draft_time = self.clock() - start
        self.decisions[source] = self.decisions.get(source, 0) + 1
        return tokens

    def candidate(self, state: _Request, context: Sequence[int], budget: int) -> tuple[Candidate, int]:
        """The best continuation from the request's trie or the global one, cut where its survival
        probability falls below ``min_prob``, and the length of the match it continues (as
        SuffixProposer.candidate)."""
        return best_continuation((state.local, self.global_trie), context, budget, self.length_per_match,
                                 self.min_prob)

    # -- request bookkeeping -------------------------------------------------------------------

    def _open(self, row: Row) -> _Request:
        """A request new to the batch, or resumed after preemption (its output before that was
        learned when it left)."""
        learned = max(row.prompt_len, self._closed.pop(row.req_id, 0))
        held = max(0, len(row.tokens) - self.local_tokens)  # a long prompt: only its tail
        state = _Request(SuffixTrie(self.depth, max_tokens=self.local_tokens), row.prompt_len, learned, held=held)
        state.output = _ints(row.tokens[learned:held]) if held > learned else []
        return state

    def _hold(self, state: _Request, tokens: Sequence[int]) -> None:
        """Add the request's tokens not yet held to its trie (in sequences of ``chunk`` tokens,
        the oldest evicted past ``local_tokens``) and its output list."""
        new = _ints(tokens[state.held:])
        if not new:
            return
        if len(tokens) > state.learned_from:
            state.output.extend(new[max(0, state.learned_from - state.held):])
        state.held += len(new)
        while new:
            take = new[:self.chunk - state.open_len]
            state.local.extend(take)
            state.open_len += len(take)
            new = new[len(take):]
            if state.open_len >= self.chunk:
                state.local.end()
                state.open_len = 0

    def finish(self, req_id: str) -> None:
        """The request left the batch: its output goes into the global trie and its state is dropped."""
        state = self.requests.pop(req_id, None)
        if state is None:
            return
        if state.output and self.global_tokens:
            self.global_trie.extend(state.output)
            self.global_trie.end()
        self._closed[req_id] = state.held
        while len(self._closed) > self.max_closed:
            self._closed.popitem(last=False)
        self.totals["finished"] += 1

    def stats(self) -> dict[str, Any]:
        drafted, accepted = self.totals["drafted"], self.totals["accepted"]
        return {**self.totals, "acceptance_rate": accepted / drafted if drafted else None,
                "active_requests": len(self.requests), "global_trie_tokens": self.global_trie.tokens,
                "decisions": dict(self.decisions),
                "class_acceptance": {name: round(c.acceptance()[0], 3) for name, c in self.control.items()}}


def _ints(tokens: Sequence[int]) -> list[int]:
    return tokens.tolist() if hasattr(tokens, "tolist") else [int(t) for t in tokens]


def parse_options(additional_config: Any) -> dict[str, Any]:
    """``additional_config["quickdraft"]`` checked against OPTIONS (unknown names are an error)."""
    options = dict((additional_config or {}).get("quickdraft") or {}) if isinstance(additional_config, dict) else {}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown quickdraft option(s) {unknown} in additional_config['quickdraft']; "
                         f"known: {', '.join(OPTIONS)}")
    return options


class QuickdraftProposer:
    """vLLM's ``custom_class`` drafter: ``speculative_config={"method": "custom_class", "model":
    "quickdraft.integrations.vllm.QuickdraftProposer", "num_speculative_tokens": K}``.

    K is the cap per step and request (the controller drafts 0..K, 16 is a good cap); options go in
    ``additional_config={"quickdraft": {...}}`` (see OPTIONS). ``drafter`` is the
    :class:`BatchDrafter` (``drafter.stats()`` for counters)."""

    def __init__(self, vllm_config: Any) -> None:
        spec = vllm_config.speculative_config
        self.max_model_len = vllm_config.model_config.max_model_len
        self.drafter = BatchDrafter(spec.num_speculative_tokens, **parse_options(vllm_config.additional_config))
        self._batch: Any = None  # weakref to the runner's InputBatch
        self._warned = False
        self.log = _vllm_logger()
        self.log.info("quickdraft drafter: up to %d tokens per step and request, controller %s",
                      spec.num_speculative_tokens, "adaptive" if self.drafter.adaptive else "fixed")

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        """No model: vLLM's CPU runner calls this for every drafter."""

    def propose(self, sampled_token_ids: list[list[int]], num_tokens_no_spec: Any, token_ids_cpu: Any,
                slot_mappings: Any = None) -> list[list[int]]:
        batch = self._input_batch(token_ids_cpu)
        if batch is None:
            if not self._warned:
                self.log.warning("quickdraft: cannot find vLLM's input batch (vLLM %s expected), so no drafts",
                                 VLLM_VERSION)
                self._warned = True
            return [[] for _ in sampled_token_ids]
        rows = []
        for i, sampled in enumerate(sampled_token_ids):
            n = int(num_tokens_no_spec[i])
            rows.append(Row(batch.req_ids[i], token_ids_cpu[i, :n], int(batch.num_prompt_tokens[i]), len(sampled),
                            len(batch.spec_token_ids[i]), self.max_model_len - n - 1))
        return self.drafter.step(rows)

    def _input_batch(self, token_ids_cpu: Any) -> Any:
        """The runner's InputBatch (request ids, prompt lengths, verified drafts): the object of a
        calling frame whose ``input_batch.token_ids_cpu`` is the array vLLM passed."""
        batch = self._batch() if self._batch is not None else None
        if batch is not None and batch.token_ids_cpu is token_ids_cpu:
            return batch
        frame = sys._getframe(2)
        for _ in range(6):
            if frame is None:
                break
            candidate = getattr(frame.f_locals.get("self"), "input_batch", None)
            if candidate is not None and getattr(candidate, "token_ids_cpu", None) is token_ids_cpu:
                self._batch = weakref.ref(candidate)
                return candidate
            frame = frame.f_back
        return None


def _vllm_logger() -> logging.Logger:
    try:
        from vllm.logger import init_logger
        return init_logger(__name__)
    except ImportError:
        return logging.getLogger(__name__)
