"""Requests: what one generation asks for, checked and tokenized before anything runs.

:class:`Request` is what ``Engine.prepare`` returns; the functions here are its checks, each
raising an error that names the parameter it is about (``QuickdraftError.param``), so callers
(the CLI, the server, the bench) map them without knowing the rules. ``prompt_tokens`` turns a
prompt (text, chat messages or token ids) into the target's token ids.

The keywords of ``Engine.prepare`` (and so of ``generate`` and ``stream``): max_tokens,
temperature (0 = greedy), top_p, top_k, seed, stop (strings), method (a registered method),
num_draft (draft budget per step), controller (``fixed`` or ``adaptive``), chat (apply the chat
template to a text prompt; default: the engine's), presence_penalty and frequency_penalty (-2..2,
over the tokens generated so far), logit_bias ({token id: -100..100}), logprobs (None, or 0..20
alternatives per token: ``GenerationResult.logprobs``), grammar (a :class:`~quickdraft.grammar.Grammar`
the output must match: a JSON schema, any JSON object, a Lark grammar; it ends the generation
when complete), tools (OpenAI tool definitions the chat template renders into the prompt),
acceptance (None: the engine's; ``"typical"`` opts into a LOSSY rule when sampling, marked in the
stats). Penalties, bias and the grammar's mask apply to the target's logits at every position it
verifies, drafts included (``verifiers.judge``), so the output is plain decoding's under the same
penalties and grammar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from . import verifiers
from .backends.base import Backend
from .control import CONTROLLERS
from .errors import ContextOverflowError, InvalidParameterError
from .grammar import Grammar
from .proposers import ProposerSpec
from .sampling import MAX_LOGPROBS, SamplingParams

Prompt = str | Sequence[dict] | Sequence[int]


@dataclass(frozen=True)
class Request:
    """A prepared generation: every parameter checked, the prompt tokenized, nothing run yet.

    tokens: the prompt's token ids. max_tokens: new tokens at most (prompt + max_tokens fits the
    context). spec: the decoding method's declaration. budget: draft tokens per step at most.
    controller: the budget policy's name ("fixed" for methods that decide their own lengths).
    logprobs: None (nothing computed), or report each emitted token's log-probability and this
    many most likely alternatives (``Piece.logprobs``, ``GenerationResult.logprobs``).
    grammar: what the output must match (grammar.py; checked against the target's vocabulary),
    or None. acceptance: the rule that verifies its drafts (verifiers.ACCEPTANCE; exact, lossless,
    unless the request opted into another).
    """

    tokens: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...]
    spec: ProposerSpec
    budget: int
    controller: str
    logprobs: int | None = None
    grammar: Grammar | None = None
    acceptance: verifiers.AcceptanceRule = verifiers.EXACT

    @property
    def method(self) -> str:
        return self.spec.name


def token_bias(logit_bias: Mapping[Any, float], vocab_size: int) -> tuple[tuple[int, float], ...]:
    """``{token id: bias}`` (ids as ints or digit strings, as OpenAI sends them) as the sorted
    ``(id, bias)`` pairs of :class:`SamplingParams`; an id outside the vocabulary is an error."""
    try:
        bias = tuple(sorted((int(token), float(value)) for token, value in logit_bias.items()))
    except (TypeError, ValueError):
        raise InvalidParameterError(f"logit_bias must map token ids to numbers, got {dict(logit_bias)!r}",
                                    param="logit_bias") from None
    bad = [token for token, _ in bias if not 0 <= token < vocab_size]
    if bad:
        raise InvalidParameterError(f"logit_bias key {bad[0]} is not a token id (0..{vocab_size - 1})",
                                    param="logit_bias")
    return bias


def check_controller(name: str) -> str:
    if name not in CONTROLLERS:
        raise InvalidParameterError(f"unknown controller {name!r}; choose one of: {', '.join(CONTROLLERS)}",
                                    param="controller")
    return name


def check_num_draft(n: int | None) -> int | None:
    if n is not None and n < 0:
        raise InvalidParameterError(f"num_draft must be >= 0, got {n}", param="num_draft")
    return n


def check_logprobs(n: int | None) -> int | None:
    if n is not None and not 0 <= n <= MAX_LOGPROBS:
        raise InvalidParameterError(f"logprobs must be None or 0..{MAX_LOGPROBS} alternatives, got {n}",
                                    param="logprobs")
    return n


def check_stop(stop: Sequence[str]) -> tuple[str, ...]:
    if any(not s for s in stop):
        raise InvalidParameterError("stop strings must not be empty", param="stop")
    return tuple(stop)


def check_grammar(grammar: Any) -> Grammar | None:
    if grammar is not None and not isinstance(grammar, Grammar):
        raise InvalidParameterError(f"grammar must be a quickdraft.Grammar, got {type(grammar).__name__}",
                                    param="grammar")
    return grammar


def fit_max_tokens(max_tokens: int | None, prompt: int, n_ctx: int, default: int | None) -> int:
    """New tokens at most for a ``prompt`` of this many tokens in a context of ``n_ctx``:
    ``max_tokens`` when it fits, else an error; None: what fits, at most ``default``."""
    room = n_ctx - prompt
    if max_tokens is None:
        max_tokens = min(room, default or room)
    elif max_tokens < 1:
        raise InvalidParameterError(f"max_tokens must be >= 1, got {max_tokens}", param="max_tokens")
    if room < 1 or max_tokens > room:  # about max_tokens when no prompt could leave it room
        raise ContextOverflowError(
            f"prompt ({prompt} tokens) + max_tokens ({max(max_tokens, 1)}) exceeds the context size "
            f"({n_ctx}); shorten the prompt, lower max_tokens or raise n_ctx",
            param="max_tokens" if max_tokens >= n_ctx else "prompt")
    return max_tokens


def prompt_tokens(target: Backend, prompt: Prompt, *, chat: bool, tools: Sequence[dict] | None = None) -> list[int]:
    """``target``'s token ids for a prompt: ids as given (checked against its vocabulary); a
    message list, or a string when ``chat``, through its chat template when it has one, with
    ``tools`` (OpenAI tool definitions) when given; otherwise the raw text. Never empty."""
    if not isinstance(prompt, str) and all(isinstance(t, (int, np.integer)) for t in prompt):
        if tools:
            raise InvalidParameterError("tools are rendered by a chat template, not added to token ids",
                                        param="tools")
        bad = [t for t in prompt if not 0 <= t < target.vocab_size]
        if bad:
            raise InvalidParameterError(f"token id {bad[0]} is outside the vocabulary "
                                        f"(0..{target.vocab_size - 1})", param="prompt")
        tokens = [int(t) for t in prompt]
    else:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        templated = target.chat_prompt(messages, tools) if (chat or not isinstance(prompt, str)) else None
        if templated is None and not isinstance(prompt, str):
            raise InvalidParameterError("this model has no chat template; pass a plain text prompt", param="prompt")
        if templated is None and tools:
            raise InvalidParameterError("tools are rendered by a chat template: send chat messages to a model "
                                        "that has one", param="tools")
        tokens = target.tokenize(templated if templated is not None else prompt, special=templated is not None)
    if not tokens:
        raise InvalidParameterError("the prompt is empty", param="prompt")
    return tokens
