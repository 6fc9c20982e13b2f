"""The engine: the speculative step loop, streaming, stopping, stats. Nothing model-specific."""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from . import verifiers
from .backends.base import Backend
from .control import Controller, create_controller
from .errors import ContextOverflowError, InvalidParameterError
from .proposers.base import Proposer, create
from .sampling import SamplingParams
from .stats import Stats
from .types import Acceptance, Draft, GenerationResult, Piece

Prompt = str | Sequence[dict] | Sequence[int]


@dataclass
class Stream:
    """Iterate to get :class:`Piece` s as they are produced; ``result`` is set once it is exhausted."""

    pieces: Iterator[Piece]
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
    """Speculative generation with one target backend and named proposers.

    ``method`` names a registered proposer (``ar``, ``draft``, ``ngram``, ...); ``proposer_options``
    are passed to its factory (e.g. ``draft=<path>``). Proposers are created on first use and kept.
    ``controller`` names the draft budget policy (``fixed`` or ``adaptive``, see control.py);
    ``relative_cost`` is the target's calibrated forward cost curve the adaptive one starts from.
    """

    def __init__(self, target: Backend, *, method: str = "ar", num_draft: int = 4, chat: bool = True,
                 controller: str = "fixed", relative_cost: Sequence[float] | None = None,
                 **proposer_options) -> None:
        self.target = target
        self.method = method
        self.num_draft = num_draft
        self.chat = chat
        self.controller = controller
        self.relative_cost = relative_cost
        self.proposer_options = proposer_options
        self._proposers: dict[str, Proposer] = {}
        self._controllers: dict[tuple, Controller] = {}
        create_controller(controller, num_draft)  # validates
        self.proposer(method)  # fail fast (missing draft, vocabulary mismatch)

    def proposer(self, method: str) -> Proposer:
        if method not in self._proposers:
            self._proposers[method] = create(method, target=self.target, **self.proposer_options)
        return self._proposers[method]

    def _controller(self, name: str, method: str, num_draft: int) -> Controller:
        """The controller for this method and budget, kept across requests so what it learned
        about this proposer's acceptance and costs carries over."""
        key = (name, method, num_draft)
        if key not in self._controllers:
            self._controllers[key] = create_controller(name, num_draft, self.relative_cost)
        return self._controllers[key]

    def prompt_tokens(self, prompt: Prompt, *, chat: bool | None = None) -> list[int]:
        """Token ids for a prompt: ids as given; a message list or (unless ``chat`` is False) a
        string through the model's chat template when it has one; otherwise the raw text."""
        if not isinstance(prompt, str) and all(isinstance(t, (int, np.integer)) for t in prompt):
            bad = [t for t in prompt if not 0 <= t < self.target.vocab_size]
            if bad:
                raise InvalidParameterError(f"token id {bad[0]} is outside the vocabulary (0..{self.target.vocab_size - 1})")
            return [int(t) for t in prompt]
        chat = self.chat if chat is None else chat
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        templated = self.target.chat_prompt(messages) if (chat or not isinstance(prompt, str)) else None
        if templated is None and not isinstance(prompt, str):
            raise InvalidParameterError("this model has no chat template; pass a plain text prompt")
        return self.target.tokenize(templated if templated is not None else prompt,
                                    special=templated is not None)

    def stream(self, prompt: Prompt, *, max_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop: Sequence[str] = (),
               method: str | None = None, num_draft: int | None = None, chat: bool | None = None,
               controller: str | Controller | None = None) -> Stream:
        """Generate, yielding :class:`Piece` s; see :meth:`generate` for the arguments."""
        sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        if max_tokens < 1:
            raise InvalidParameterError(f"max_tokens must be >= 1, got {max_tokens}")
        if any(not s for s in stop):
            raise InvalidParameterError("stop strings must not be empty")
        tokens = self.prompt_tokens(prompt, chat=chat)
        if not tokens:
            raise InvalidParameterError("the prompt is empty")
        if len(tokens) + max_tokens > self.target.n_ctx:
            raise ContextOverflowError(
                f"prompt ({len(tokens)} tokens) + max_tokens ({max_tokens}) exceeds the context "
                f"size ({self.target.n_ctx}); shorten the prompt, lower max_tokens or raise n_ctx")
        method = method or self.method
        if not hasattr(controller, "budget"):
            controller = self._controller(controller or self.controller, method,
                                          self.num_draft if num_draft is None else num_draft)
        proposer = self.proposer(method)
        stream = Stream(iter(()))
        stream.pieces = self._run(tokens, max_tokens, sampling, tuple(stop), proposer, controller, stream)
        return stream

    def generate(self, prompt: Prompt, **kwargs) -> GenerationResult:
        """Generate a completion of ``prompt`` (text, chat messages, or token ids).

        Keywords: max_tokens, temperature (0 = greedy), top_p, top_k, seed, stop (strings),
        method (a registered proposer name), num_draft (draft budget per step), controller
        (``fixed`` or ``adaptive``), chat (apply the chat template to a text prompt; default: the
        engine's setting).
        """
        stream = self.stream(prompt, **kwargs)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def _verify(self, pending: int, draft: Draft, sampling: SamplingParams, rng: np.random.Generator) -> Acceptance:
        """One target forward over the pending token and the draft (a chain, or a tree), the
        acceptance rule, and a cache left holding the accepted tokens (the pending one included)."""
        verify = verifiers.select(sampling, tree=draft.parents is not None)
        if draft.parents is None:
            cached = len(self.target.tokens)
            logits = self.target.forward([pending, *draft.tokens])  # [n + 1, V]
            acceptance = verify(draft, logits, sampling, rng)
            self.target.rollback(cached + 1 + acceptance.accepted)
        else:
            logits = self.target.forward_tree([pending, *draft.tokens], draft.tree_parents())  # [n + 1, V]
            acceptance = verify(draft, logits, sampling, rng)
            self.target.keep(acceptance.kept_nodes())
        return acceptance

    def _run(self, prompt: list[int], max_tokens: int, sampling: SamplingParams, stop: tuple[str, ...],
             proposer: Proposer, controller: Controller, stream: Stream) -> Iterator[Piece]:
        rng = sampling.rng()
        stats, out = Stats(prompt_tokens=len(prompt)), _TextOut(self.target, stop)
        start = time.perf_counter()
        self.target.prefill(prompt[:-1])  # the last prompt token is fed with the first draft
        proposer.begin(prompt)
        controller.begin()
        stats.prefill_time_s = time.perf_counter() - start
        context, generated = list(prompt), []
        while out.finish_reason is None and len(generated) < max_tokens:
            # One step: propose -> verify (forward, accept, trim the cache) -> observe.
            t0 = time.perf_counter()
            budget = min(controller.budget(), max_tokens - len(generated) - 1)
            draft = proposer.propose(context, budget, sampling, rng) if budget > 0 else Draft()
            t1 = time.perf_counter()
            acceptance = self._verify(context[-1], draft, sampling, rng)
            t2 = time.perf_counter()
            proposer.observe(acceptance)
            controller.observe(acceptance, t1 - t0, t2 - t1)
            kept = [t for t in acceptance.tokens[:max_tokens - len(generated)] if out.finish_reason is None
                    and out.add(t)]
            context += acceptance.tokens
            generated += kept
            stats.observe(acceptance, len(kept), t1 - t0, t2 - t1)
            done = out.finish_reason is not None or len(generated) >= max_tokens
            text = out.flush(final=done)
            if kept or text:
                yield Piece(text, tuple(kept), tuple(i < acceptance.accepted for i in range(len(kept))))
        stats.total_time_s, stats.ended_on_eos = time.perf_counter() - start, out.eos
        report = stats.to_dict()
        if getattr(controller, "decisions", None) is not None:
            report["budget_decisions"] = {str(k): n for k, n in sorted(controller.decisions.items())}
        stream.result = GenerationResult(text=out.text, token_ids=generated,
                                         finish_reason=out.finish_reason or "length",
                                         stats=report, prompt_tokens=len(prompt))
