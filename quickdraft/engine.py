"""The engine: prepares requests, then runs them one speculative step at a time.

``Engine.prepare(prompt, **options)`` checks every parameter (requests.py: errors name the
parameter they are about), tokenizes the prompt and fills in the defaults (the method, its draft
budget, a ``max_tokens`` that fits the context), returning a :class:`~quickdraft.requests.Request`;
``Engine.stream(request)`` runs it. Nothing here is model-specific.
"""

from __future__ import annotations

import codecs
import contextlib
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

from . import calibrate as calibration
from . import verifiers
from .backends import BACKENDS
from .backends.base import BATCH, TREE, Backend, Chunk, reusable_prefix
from .bridge import Bridge
from .control import Controller, FixedBudget, ForwardCost, Offer, Prior, allocate, create_controller, prompt_room
from .errors import EngineBusyError, QuickdraftError, UnknownMethodError, VocabularyMismatchError
from .grammar import Constraint, Grammar, Vocabulary
from .draft import DraftModel
from .requests import (Prompt, Request, check_controller, check_grammar, check_logprobs, check_num_draft, check_stop,
                       fit_max_tokens, prompt_tokens, token_bias)
from .proposers import METHODS, ProposerSpec, Registry, Resources, parse_options
from .sampling import SamplingParams
from .stats import Stats
from .system import cpu_info, quickdraft_version
from .records import Acceptance, Draft, GenerationResult, Piece, StepTimes


class Memory:
    """What an engine has learned across requests: each method's memory (``ProposerSpec.memory``)
    and the adaptive controllers. A new Memory is a new user's engine (the bench gives every cold
    sample one); what is cached on disk (the cost curve) is not part of it."""

    def __init__(self) -> None:
        self._items: dict[Hashable, Any] = {}

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        if key not in self._items:
            self._items[key] = make()
        return self._items[key]


@dataclass
class Stream:
    """Iterate to get :class:`Piece` s as they are produced; ``result`` is set once it is exhausted."""

    pieces: Iterator[Piece]
    request: Request
    result: GenerationResult | None = None

    def __iter__(self) -> Iterator[Piece]:
        return self.pieces


@dataclass
class _TextOut:
    """Turns emitted tokens into text, detects EOS and stop strings, and holds back text that
    could still become a stop string (so streamed text never has to be taken back)."""

    backend: Backend
    stop: tuple[str, ...]
    text: str = ""
    shown: int = 0  # characters of ``text`` already streamed
    finish_reason: str | None = None
    eos: bool = False  # ended on an end-of-generation token
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))

    def add(self, token: int) -> bool:
        """Take one token; returns False if it ends the generation and must not be emitted."""
        if self.backend.is_end_of_generation(token):
            self.finish_reason, self.eos = "stop", True
            return False
        self.text += self._decoder.decode(self.backend.token_bytes(token))
        for s in self.stop:
            at = self.text.find(s, max(0, self.shown - len(s)))
            if at >= 0:
                self.text, self.finish_reason = self.text[:at], "stop"
                break
        return True

    def flush(self, final: bool) -> str:
        """New text that is safe to show now (everything, once ``final``)."""
        end = len(self.text)
        if not final and self.finish_reason is None:
            end -= max((k for s in self.stop for k in range(len(s) - 1, 0, -1)
                        if self.text.endswith(s[:k])), default=0)
        new, self.shown = self.text[self.shown:end], max(self.shown, end)
        return new


class Engine:
    """Speculative generation with one target backend and the registered methods.

    ``draft``: a draft model (a bundled name, a path, ``self:<type>``, or an open backend; of any
    vocabulary: draft.py), loaded when a method first uses it. ``method``: the default method. ``num_draft``: the default draft budget
    (else each method's declared default). ``controller``: the default budget policy (``fixed``
    or ``adaptive``, control.py). ``prior``: what the cost models start from (control.Prior: the
    target's forward cost curve and step time, the draft model's token cost and agreement);
    ``calibrate``: measure it (or read it from the calibration cache), the target's part now, the
    draft model's when it is first loaded. ``default_max_tokens``: cap for requests that do not
    say (always at most what fits the context). ``methods``: the registry (tests add methods to a
    copy). ``clock``: what step timings are read from (tests pass a synthetic one). ``options``:
    method options, each given to the methods that declare it. ``acceptance``: the default
    acceptance rule (a name or a rule, verifiers.ACCEPTANCE; ``exact``, lossless, unless given).
    ``prompt_cache``: a request starts from the longest start of its prompt the backends' caches
    hold (another running request's, or a finished one's: a conversation's next turn reuses its
    earlier turns); off, every prompt is computed in full and a finished request's cells are freed
    at once (for measuring what the reuse saves).

    A request runs alone (:meth:`stream`, :meth:`generate`), or, on a backend that batches, with
    others in shared steps (:meth:`start` each in sequences of its own, :meth:`step` them
    together, :meth:`release` each when done: what the server's scheduler does).
    """

    def __init__(self, target: Backend, *, draft: str | Path | Backend | None = None, method: str = "auto",
                 num_draft: int | None = None, controller: str = "fixed", chat: bool = True,
                 calibrate: bool = False, prior: Prior | None = None, default_max_tokens: int | None = None,
                 methods: Registry = METHODS, clock: Callable[[], float] = time.perf_counter,
                 acceptance: str | verifiers.AcceptanceRule = "exact", prompt_cache: bool = True,
                 **options) -> None:
        self.target, self.methods, self.chat = target, methods, chat
        self.threads = target.n_threads  # the engine's; a step verified on others (drafting ahead) is not its cost
        self.prompt_cache = prompt_cache
        self.method, self.num_draft, self.controller = method, num_draft, controller
        self.calibrate = calibrate
        self.prior = prior or (calibration.prior(target) if calibrate else Prior())
        self.default_max_tokens = default_max_tokens
        self.clock = clock
        self.options = options
        self.acceptance = verifiers.acceptance_rule(acceptance)
        self.memory = Memory()
        self.draft = DraftModel(target, draft)  # draft.py: opened on first use
        self._vocabulary: Vocabulary | None = None
        self._parsed: dict[str, Any] = {}
        self._busy = threading.Lock()
        methods.check_options(options), check_controller(controller), check_num_draft(num_draft)
        self._memory(self.spec(method))  # fail fast: unknown method, missing draft, bad options, mismatch

    # --- methods and what they are given --------------------------------------------------------
    def spec(self, method: str) -> ProposerSpec:
        """The declaration of ``method``, checked against this engine: a draft model where it is
        required, the backend capabilities it needs, valid options."""
        spec = self.methods[method]
        missing = sorted(spec.requires - self.target.capabilities)
        if missing:
            able = [b.name for b in BACKENDS.values() if spec.requires <= b.capabilities]
            raise UnknownMethodError(f"method {method!r} needs a backend with {', '.join(missing)}, which the "
                                     f"{self.target.name} backend lacks (use --backend {' or '.join(able) or '?'})")
        if spec.draft_model == "required" and self.draft.given is None:
            raise UnknownMethodError(f"method {method!r} needs a draft model (--draft NAME or PATH)")
        if spec.uses_draft_model and spec.draft_vocabulary == "same" and self.draft.given is not None and self.bridge:
            able = [s.name for s in self.methods if s.uses_draft_model and s.draft_vocabulary == "any"]
            raise VocabularyMismatchError(f"method {method!r} drafts token ids of the target's vocabulary, and the "
                                          f"draft model's vocabulary is another ({self.bridge.difference}); "
                                          f"methods that draft across tokenizers: {', '.join(able)}", param="draft")
        if method not in self._parsed:
            self._parsed[method] = parse_options(spec, {k: v for k, v in self.options.items()
                                                        if k in spec.option_names()})
        return spec

    def draft_model(self) -> Backend | None:
        """The draft model's backend, or None: on first use opened and checked (draft.py) and,
        when the engine calibrates, its costs measured."""
        first = self.draft.backend is None
        model = self.draft.open()
        if first and model is not None and self.calibrate and self.prior.draft_token is None:
            self.prior = replace(self.prior, **calibration.draft_prior(self.target, model, self.draft.bridge))
        return model

    def vocabulary(self) -> Vocabulary:
        """The target's tokens as the grammar engine reads them (built on first use, about a
        second for a 152k vocabulary)."""
        if self._vocabulary is None:
            self._vocabulary = Vocabulary(self.target)
        return self._vocabulary

    @property
    def bridge(self) -> Bridge | None:
        """How text crosses between the target and a draft model of another vocabulary
        (bridge.py); None without a draft model or when it shares the target's vocabulary."""
        self.draft_model()
        return self.draft.bridge

    @property
    def cost(self) -> ForwardCost:
        """The target's forward cost by size (a step's rows: pending tokens and drafts), as this
        engine's memory learned it."""
        return self.memory.get("forward cost", lambda: ForwardCost.from_prior(self.prior))

    @property
    def prompt_cost(self) -> ForwardCost:
        """The target's cost of a forward over one prompt chunk beside a step (no logits, one
        sequence: under load it costs less a token than the rows of many sequences), learned apart."""
        return self.memory.get("prompt cost", lambda: ForwardCost.from_prior(self.prior))

    def resources(self, spec: ProposerSpec, *, batched: bool = False, prefix: Sequence[int] = (),
                  constraint: Constraint | None = None) -> Resources:
        """What ``spec``'s proposers get: the target, the draft model if the method uses one (a
        sequence of its own when ``batched``, holding what the draft model's cache shares of
        ``prefix``), the prior (without the draft model's part when the method drafts otherwise),
        the shared forward cost, the request's grammar ``constraint`` and whether it runs alone."""
        if spec.uses_draft_model and self.draft.given is not None:
            draft = self.draft_model()
            sequence = draft.new_sequence(self.draft.tokens(prefix)) if batched else self._main(draft)
            return Resources(self.target, sequence, self.prior, self.cost, constraint, self.draft.bridge,
                             alone=not batched)
        return Resources(self.target, None, replace(self.prior, draft_token=None, draft_accept=None, draft_prefill=None,
                                                    draft_ahead=()), self.cost, constraint, alone=not batched)

    def _memory(self, spec: ProposerSpec) -> Any:
        if spec.memory is None:
            return None
        return self.memory.get(("method", spec.name),
                               lambda: spec.memory(self.resources(spec), self._parsed[spec.name]))

    def _controller(self, request: Request, prior: Prior) -> Controller:
        """The request's budget policy (``prior``: what its method's resources start from)."""
        if request.controller == "fixed":
            return FixedBudget(request.budget)
        key = ("controller", request.controller, request.method, request.budget)
        return self.memory.get(key, lambda: create_controller(request.controller, request.budget, self.cost,
                                                              prior.draft_token_s()))

    def describe(self) -> dict:
        """What this engine runs on, for reports and ``--json``: the machine, the backend and its
        build, the models (the draft only once loaded) and the calibration it starts from."""
        return {"quickdraft": quickdraft_version(), "cpu": cpu_info().to_dict(), "backend": self.target.name,
                "build": self.target.build, "threads": self.target.n_threads, "target": self.target.path.name,
                **self.draft.describe(),
                "prior": {"cost_curve": [round(c, 3) for c in self.prior.curve] if self.prior.curve else None,
                          "step_s": self.prior.step_s, "draft_token": self.prior.draft_token,
                          "draft_accept": self.prior.draft_accept, "draft_prefill": self.prior.draft_prefill,
                          "draft_ahead": [asdict(split) for split in self.prior.draft_ahead]}}

    # --- requests -------------------------------------------------------------------------------
    def prompt_tokens(self, prompt: Prompt, *, chat: bool | None = None,
                      tools: Sequence[dict] | None = None) -> list[int]:
        """The token ids :meth:`prepare` makes of a prompt (requests.prompt_tokens; ``chat``
        None: the engine's)."""
        return prompt_tokens(self.target, prompt, chat=self.chat if chat is None else chat, tools=tools)

    def prepare(self, prompt: Prompt, *, max_tokens: int | None = None, temperature: float = 0.0,
                top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop: Sequence[str] = (),
                method: str | None = None, num_draft: int | None = None, controller: str | None = None,
                chat: bool | None = None, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                logit_bias: Mapping[int, float] | None = None, logprobs: int | None = None,
                grammar: Grammar | None = None, tools: Sequence[dict] | None = None,
                acceptance: str | verifiers.AcceptanceRule | None = None) -> Request:
        """Check a generation's parameters and tokenize its prompt (text, chat messages or token
        ids); the keywords are described in requests.py. ``max_tokens`` None: what fits the
        context, at most ``default_max_tokens``."""
        sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                                  presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                                  logit_bias=token_bias(logit_bias or {}, self.target.vocab_size))
        spec = self.spec(method or self.method)
        if check_grammar(grammar) is not None:
            self.vocabulary().check(grammar)
        budget = check_num_draft(next(n for n in (num_draft, self.num_draft, spec.default_budget) if n is not None))
        controller = "fixed" if spec.decides_budget else check_controller(controller or self.controller)
        tokens = self.prompt_tokens(prompt, chat=chat, tools=tools)
        max_tokens = fit_max_tokens(max_tokens, len(tokens), self.target.n_ctx, self.default_max_tokens)
        return Request(tuple(tokens), max_tokens, sampling, check_stop(stop), spec, budget, controller,
                       check_logprobs(logprobs), grammar,
                       self.acceptance if acceptance is None else verifiers.acceptance_rule(acceptance))

    def stream(self, prompt: Prompt | Request, **options) -> Stream:
        """Generate, yielding :class:`Piece` s; ``prompt`` is a prepared :class:`Request` or
        anything :meth:`prepare` takes (with its keywords)."""
        request = prompt if isinstance(prompt, Request) else self.prepare(prompt, **options)
        stream = Stream(iter(()), request)
        stream.pieces = self._run(request, stream)
        return stream

    def generate(self, prompt: Prompt | Request, **options) -> GenerationResult:
        """Generate a completion of ``prompt`` (text, chat messages, token ids, or a Request);
        the keywords are :meth:`prepare`'s (each described in requests.py)."""
        stream = self.stream(prompt, **options)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def warm_up(self) -> None:
        """Run each model once over a few tokens and forget them (what llama-server does before it
        answers): a process's first forward pays for first touching the buffers' memory, which
        would otherwise fall on the first request (a 51-token prompt's first prefill 584 ms, then
        518; after a warm-up of 71 ms, 536: AMD Zen 4, the bundled pair)."""
        for backend in (self.target, self.draft.backend):
            if backend is not None:
                backend.prefill(backend.tokenize("Hello", special=False) or [0], last_logits=True)
                backend.rollback(0)

    def clear_caches(self) -> None:
        """Empty the backends' own sequences and free released ones (what earlier requests left
        for prefix reuse), so a batch has every KV cell."""
        for backend in (self.target, self.draft.backend):
            if backend is not None:
                backend.rollback(0)
                if BATCH in backend.capabilities:
                    backend.forget_retired()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the engine for one user (a stream, or the server's batch loop, which steps many
        generations itself); anyone else gets EngineBusyError meanwhile."""
        if not self._busy.acquire(blocking=False):
            raise EngineBusyError("this engine is already generating; finish or close the other stream first "
                                  "(use one engine per thread; the server queues requests for you)")
        try:
            yield
        finally:
            self._busy.release()

    # --- generations and the step -------------------------------------------------------------
    def start(self, request: Request, *, batched: bool = False) -> "Generation":
        """A running generation of ``request`` (nothing evaluated yet: :meth:`Generation.prefill`).
        ``batched``: in sequences of its own (``BATCH`` backends; :meth:`release` frees them),
        so it can share steps with other generations; otherwise in the backends' own sequences."""
        spec = request.spec
        if batched and spec.alone:
            raise QuickdraftError(f"method {spec.name!r} runs one request at a time, never in a batch "
                                  "(ProposerSpec.alone)", param="method")
        prompt = request.tokens[:-1] if self.prompt_cache else ()  # what a new sequence may share with another's cache
        if not (self.prompt_cache or batched):
            self.clear_caches()
        constraint = None if request.grammar is None else self.vocabulary().constraint(request.grammar)
        target = self.target.new_sequence(prompt) if batched else self._main(self.target)
        resources = Resources(self.target)  # until the method's are made: what to release if that fails
        try:
            resources = self.resources(spec, batched=batched, prefix=prompt, constraint=constraint)
            proposer = spec.make(resources, self._memory(spec), self._parsed[spec.name])
        except BaseException:
            self._release(target, resources)
            raise
        controller = None if spec.decides_budget else self._controller(request, resources.prior)
        return Generation(request, proposer, controller, target, resources, self.clock,
                          share=batched and self.prompt_cache)

    def release(self, generation: "Generation") -> None:
        """The generation is over (finished or abandoned): its proposer learns from it and the
        sequences it had of its own are freed."""
        generation.finish()
        self._release(generation.sequence, generation.resources)

    def _release(self, sequence, resources: Resources) -> None:
        for backend, seq in ((self.target, sequence), (self.draft.backend, resources.draft)):
            if seq is not None and seq is not self._main(backend):
                backend.release(seq)
                if not self.prompt_cache:
                    backend.forget_retired()

    @staticmethod
    def _main(backend):
        """The sequence a backend's own single-sequence protocol works on."""
        return backend.main if BATCH in backend.capabilities else backend

    def step(self, generations: Sequence["Generation"], prefill: Sequence[Chunk] = (),
             step_s: float | None = None) -> list[Piece | None]:
        """One speculative step for every generation: each offers what it could draft, the
        lengths are allocated for the whole step (control.allocate: expected tokens per second,
        plain steps included), each drafts, one target forward verifies them all, each accepts
        and trims its cache, learns, and emits its new text (None when there is none yet).
        ``prefill``: prompt chunks of generations still prefilling (:meth:`Generation.next_chunk`)
        that the step carries (``BATCH`` backends), as continuous batching does: each in a forward
        of its own after the rows' (:attr:`prompt_cost` learns their price apart from the rows'),
        ``n_batch`` tokens in all at most (a chunk left out waits for the next step). With
        ``step_s``, prompts first: as many prompt tokens as a step of one row per generation leaves
        time for, and drafts only in the time left (allocate's ``limit_s``), the prompt tokens cut
        again once the drafts are made (control.prompt_room). With no generations, the chunks alone."""
        if not generations:  # prompt chunks alone: a forward without logits, which the step's cost model does not price
            if prefill:
                self.target.forward_batch(fit_chunks(prefill, self.target.n_batch))
            return []
        if prefill and BATCH not in self.target.capabilities:
            raise QuickdraftError(f"the {self.target.name} backend runs one generation at a time")
        clock, cost, prompt_s = self.clock, self.cost, self.prompt_cost.seconds
        prefill = fit_chunks(prefill, self.target.n_batch) if prefill else []
        extra = sum(len(c.tokens) for c in prefill)
        if step_s is not None:
            extra = prompt_room(prompt_s, step_s - cost.seconds(len(generations)), extra)
        carried = prompt_s(extra) if extra else 0.0
        offers = [g.offers() for g in generations]
        choices = allocate(offers, lambda n: cost.seconds(n) + carried,
                           limit_s=step_s if extra else None)
        drafts, draft_s = [], []
        for g, options, (index, k) in zip(generations, offers, choices):
            start = clock()
            drafts.append(g.draft(options[index] if index is not None else None, k))
            draft_s.append(clock() - start)
        drafts = ride_free_rows(self.target, cost, generations, drafts)
        rows = sum(1 + len(d) + len(d.extra) for d in drafts)
        if step_s is not None and prefill:  # the time the drafting took and the rows' forward need come first
            prefill = fit_chunks(prefill, prompt_room(prompt_s, step_s - sum(draft_s) - cost.seconds(rows), extra))
        start = clock()
        acceptances = verify_all(self.target, generations, drafts)
        verify_s = clock() - start
        timed = self.target.n_threads == self.threads  # not on a split of the cores (drafting ahead)
        if timed:
            cost.observe(rows, verify_s)
        for chunk in prefill:
            start = clock()
            self.target.forward_batch([chunk])
            if timed:
                self.prompt_cost.observe(len(chunk.tokens), clock() - start)
        return [g.settle(d, a, StepTimes(ds, verify_s, len(generations)))
                for g, d, a, ds in zip(generations, drafts, acceptances, draft_s)]

    def _run(self, request: Request, stream: Stream) -> Iterator[Piece]:
        """One request on its own: the step over a batch of one, holding the engine (a second
        stream started while this one is unfinished would corrupt the shared KV caches)."""
        with self.exclusive():
            generation = self.start(request)
            try:
                generation.prefill()
                while not generation.done:
                    piece = self.step([generation])[0]
                    if piece is not None:
                        yield piece
            finally:
                self.release(generation)
            stream.result = generation.result()


def ride_free_rows(target: Backend, cost: ForwardCost, generations: Sequence["Generation"],
                   drafts: list[Draft]) -> list[Draft]:
    """The rows a step's forward carries for free (``ForwardCost.free_rows``) offered, in order, to
    the generations whose method decides its own drafts (auto rides lookahead's branch)."""
    if TREE not in target.capabilities:
        return drafts
    base = total = sum(1 + len(d) for d in drafts)
    for i, g in enumerate(generations):
        free = cost.free_rows(total, base)
        if free and g.controller is None:
            drafts[i] = g.proposer.ride(g.context, drafts[i], free)
            total += len(drafts[i].extra)
    return drafts


def verify_all(target: Backend, generations: Sequence["Generation"], drafts: Sequence[Draft]) -> list[Acceptance]:
    """One target forward over every generation's pending token and draft (chains and trees),
    the acceptance rule of each, and caches left holding the accepted tokens (the pending ones
    included). Backends without ``BATCH`` take one generation at a time."""
    trees = [d.forward_tree() for d in drafts]  # None: a plain chain
    inputs = [[g.context[-1], *d.tokens, *d.extra] for g, d in zip(generations, drafts)]
    if BATCH in target.capabilities:
        chunks = [Chunk(g.sequence, tokens, *(tree or (None, "all")))
                  for g, tokens, tree in zip(generations, inputs, trees)]
        rows = target.forward_batch(chunks)  # [n + 1 (+ extra rows), V] each
    else:
        if len(generations) != 1:
            raise QuickdraftError(f"the {target.name} backend runs one generation at a time")
        sequence, tree = generations[0].sequence, trees[0]
        rows = [sequence.forward_tree(inputs[0], tree[0], rows=tree[1]) if tree else sequence.forward(inputs[0])]
    acceptances = []
    for g, d, logits, tree in zip(generations, drafts, rows, trees):
        acceptance = verifiers.judge(d, logits, g.request.sampling, g.rng, generated=g.generated,
                                     constraint=g.resources.constraint, logprobs=g.request.logprobs,
                                     rule=g.request.acceptance)
        if tree is None:
            g.sequence.rollback(len(g.context) + acceptance.accepted)
        else:
            g.sequence.keep(acceptance.kept_nodes())
        acceptances.append(acceptance)
    return acceptances


def fit_chunks(chunks: Sequence[Chunk], room: int) -> list[Chunk]:
    """``chunks`` in order, holding at most ``room`` tokens in all: the one that would overflow
    keeps its first tokens, those after it are left out.

    Example: chunks of 5, 4 and 3 tokens in room 7 -> chunks of 5 and 2 tokens."""
    out: list[Chunk] = []
    for chunk in chunks:
        if room <= 0:
            break
        out.append(chunk if len(chunk.tokens) <= room else replace(chunk, tokens=chunk.tokens[:room]))
        room -= len(out[-1].tokens)
    return out


class Generation:
    """One running request: its proposer, its controller (None for a method that offers for
    itself), the target sequence its tokens live in, what it has emitted, its stats.

    ``prefill`` evaluates the prompt (all at once, or ``chunk`` tokens a call; or
    :meth:`next_chunk` hands a chunk to ride in another step's forward); then each
    :meth:`Engine.step` asks it to :meth:`offers`, :meth:`draft` and :meth:`settle`.
    """

    def __init__(self, request: Request, proposer, controller: Controller | None, sequence, resources: Resources,
                 clock: Callable[[], float], *, share: bool = False) -> None:
        self.request, self.proposer, self.controller = request, proposer, controller
        self.sequence, self.resources, self.clock = sequence, resources, clock
        self.share = share  # a sequence of a BATCH backend: take what others hold of the prompt (share_prefix)
        self.rng = request.sampling.rng()
        self.context, self.generated = list(request.tokens), []
        self.logprobs: list | None = None if request.logprobs is None else []
        self.stats = Stats(prompt_tokens=len(self.context), acceptance=request.acceptance.name,
                           lossless=request.acceptance.lossless_for(request.sampling))
        self.out = _TextOut(resources.target, request.stop)
        self.started = clock()
        self.prefilled = False
        self._began_prefill = False
        self._ended = False

    def prefill(self, chunk: int | None = None) -> bool:
        """Evaluate the prompt but its last token (fed with the first draft), reusing what the
        sequence holds; with ``chunk``, at most that many tokens this call. True once done (the
        proposer then begins)."""
        pending = self.next_chunk(chunk)
        if pending is not None:
            self.sequence.prefill([*self.sequence.tokens, *pending.tokens])
        return self.prefill_done()

    def next_chunk(self, size: int | None = None) -> Chunk | None:
        """The next ``size`` tokens (all, if None) of the prompt not yet in the sequence, as a
        forward's chunk with no logits (the sequence keeps the longest prefix it already holds,
        and with ``share`` first takes what another sequence holds beyond it: prompts that arrived
        together share their opening once the first one's chunk is in); None when there are none.
        :meth:`prefill_done` after the forward."""
        prompt = self.context[:-1]
        common = reusable_prefix(self.sequence.tokens, prompt, last_logits=False)
        if not self._began_prefill:  # what the cache held of the prompt when it began
            self._began_prefill, self.stats.cached_tokens = True, common
        self.sequence.rollback(common)
        if self.share:  # another prompt's chunks may have brought in more of this one since
            gained = self.resources.target.share_prefix(self.sequence, prompt)
            common += gained
            self.stats.cached_tokens += gained
        end = len(prompt) if size is None else min(len(prompt), common + size)
        return Chunk(self.sequence, prompt[common:end], rows="none") if end > common else None

    def prefill_done(self) -> bool:
        """Whether the prompt is in (the first time: the proposer begins, the prefill time is taken)."""
        if not self.prefilled and len(self.sequence.tokens) == len(self.context) - 1:
            self.proposer.begin(self.context)
            self.prefilled = True
            self.stats.prefill_time_s = self.clock() - self.started
        return self.prefilled

    @property
    def done(self) -> bool:
        return self.out.finish_reason is not None or len(self.generated) >= self.request.max_tokens

    def offers(self) -> list[Offer]:
        """What this generation could draft in the next step (none: a plain step)."""
        cap = min(self.request.budget, self.request.max_tokens - len(self.generated) - 1)
        if cap <= 0:
            return []
        if self.controller is None:
            return self.proposer.offers(self.context, cap, self.request.max_tokens - len(self.generated))
        return [self.controller.offer(cap)]

    def draft(self, offer: Offer | None, k: int) -> Draft:
        """The draft the step allocated: ``k`` tokens from ``offer``'s source."""
        sampling = self.request.sampling
        if self.controller is None:
            return self.proposer.draft(self.context, offer, k, sampling, self.rng)
        self.controller.decide(k)
        return self.proposer.propose(self.context, k, sampling, self.rng) if k > 0 else Draft()

    def settle(self, draft: Draft, acceptance: Acceptance, times: StepTimes) -> Piece | None:
        """Take the step's outcome: learn, emit the accepted tokens (a stop string or the end of
        generation may cut them), and return the new text, if any."""
        self.proposer.observe(acceptance, times)
        if self.controller is not None:
            self.controller.observe(acceptance, times)
        out, room = self.out, self.request.max_tokens - len(self.generated)
        kept = [t for t in acceptance.tokens[:room] if out.finish_reason is None and out.add(t)]
        self.context += acceptance.tokens
        self.generated += kept
        constraint = self.resources.constraint
        if constraint is not None:
            constraint.advance(kept)
            if constraint.finished and out.finish_reason is None:  # only an end of generation may follow
                out.finish_reason = "stop"
        logprobs = None if acceptance.logprobs is None else acceptance.logprobs[:len(kept)]
        if logprobs is not None:
            self.logprobs += logprobs
        self.stats.observe(acceptance, len(kept), times, draft.source)
        text = out.flush(final=self.done)
        if kept or text:
            return Piece(text, tuple(kept), tuple(i < acceptance.accepted for i in range(len(kept))), logprobs)
        return None

    def finish(self) -> None:
        """The request is over: the proposer learns from it (once)."""
        if not self._ended:
            self._ended = True
            self.proposer.end(self.context)
            self.stats.total_time_s, self.stats.ended_on_eos = self.clock() - self.started, self.out.eos
            if self.controller is None:  # a method that decides its own drafts says why it drafted what it did
                self.stats.why = self.proposer.why()

    def result(self) -> GenerationResult:
        return GenerationResult(text=self.out.text, token_ids=list(self.generated),
                                finish_reason=self.out.finish_reason or "length", stats=self.stats.to_dict(),
                                prompt_tokens=len(self.request.tokens),
                                logprobs=None if self.logprobs is None else list(self.logprobs))
