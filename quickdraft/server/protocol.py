"""OpenAI's wire format, as pure functions: request -> engine options, results -> response
objects and stream chunks, errors -> ``{"error": {...}}``.

Nothing here touches the engine, the network or the clock (ids and timestamps are passed in), so
every shape is checked by plain unit tests.
"""

from __future__ import annotations

import json
from itertools import accumulate
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal, Sequence

from ..requests import Request
from ..errors import ContextOverflowError, InvalidParameterError, QuickdraftError, UnknownMethodError
from ..grammar import Grammar
from ..records import TokenLogprob
from ..verifiers import acceptance_rule, option_names
from .schemas import ChatCompletionRequest, CompletionRequest, ResponseFormat
from .tools import tool_grammar

# OpenAI's default sampling is temperature 1, top_p 1 (pass temperature=0 for greedy).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0

# Per-step bookkeeping that would make every response long; everything else in stats is reported.
_OMITTED_STATS = ("accepted_lengths",)


class APIError(Exception):
    """An error answered as OpenAI does: HTTP ``status`` and ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# The engine's parameter names -> the request fields they come from.
_PARAMS = {name: f"speculative.{name}" for name in ("method", "num_draft", "acceptance", *option_names())}


def engine_error(exc: QuickdraftError, *, prompt_param: str = "messages") -> APIError:
    """A user-caused engine error as a 400 naming the request field it is about (``exc.param``;
    the engine's ``prompt`` is the request's ``messages`` or ``prompt``). Context overflow gets
    OpenAI's own code."""
    param = prompt_param if exc.param == "prompt" else _PARAMS.get(exc.param, exc.param)
    if isinstance(exc, ContextOverflowError):
        return APIError(400, str(exc), param=param, code="context_length_exceeded")
    if isinstance(exc, UnknownMethodError):
        return APIError(400, str(exc), param=param, code="invalid_method")
    if isinstance(exc, InvalidParameterError):
        return APIError(400, str(exc), param=param, code="invalid_value")
    return APIError(400, str(exc), param=param, code="invalid_request")


def model_not_found(model: str, names: Sequence[str]) -> APIError:
    """The 404 for a ``model`` this server does not serve (``names``: the served id, then aliases)."""
    also = f" (also accepted: {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
    return APIError(404, f"the model '{model}' does not exist: this server serves '{names[0]}'{also}",
                    param="model", code="model_not_found")


def busy_error(max_queue: int) -> APIError:
    return APIError(503, f"the server is busy: {max_queue} requests are already waiting; retry later",
                    type="server_error", code="server_busy")


def engines_down_error() -> APIError:
    return APIError(503, "the server cannot generate: its engines stopped on an error (see the server log); "
                         "restart it", type="server_error", code="engine_failed")


def timeout_error(timeout_s: float) -> APIError:
    return APIError(504, f"the request did not finish within the server's timeout of {timeout_s:g} s; "
                         "ask for fewer tokens or retry later", type="server_error", code="timeout")


def internal_error() -> APIError:
    return APIError(500, "internal server error (see the server log)", type="server_error", code="internal_error")


def validation_error(errors: Sequence[dict]) -> APIError:
    """A 400 for pydantic's ``errors`` naming the first offending field (``messages[0].role``)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return APIError(400, f"the request body is not valid JSON ({detail})".replace(" ()", ""),
                        code="invalid_json")
    param = error_param(first.get("loc", ()))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = f"missing required field '{param}'"
    elif param:
        message = f"invalid '{param}': {message}"
    return APIError(400, message, param=param, code="invalid_value" if param else "invalid_request")


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "is-instance"}


def error_param(loc: Sequence) -> str | None:
    """``("body", "messages", 0, "role")`` -> ``messages[0].role``; stops at pydantic's union tags."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_TAGS or not str(part).isidentifier():
            break
        else:
            out += f".{part}" if out else str(part)
    return out or None


# --- requests -> engine ------------------------------------------------------------------------

def engine_prompt(request: ChatCompletionRequest | CompletionRequest) -> tuple[Any, bool]:
    """``(prompt, chat)`` for ``Engine.prepare``: chat messages are always templated; a
    completion prompt is raw text (``chat=False``) or token ids."""
    if isinstance(request, ChatCompletionRequest):
        return [m.as_dict() for m in request.messages], True
    return request.prompt, False


# response_format's type -> the grammar of its answers (errors name the field the schema is in).
_FORMATS: dict[str, Callable[[ResponseFormat], Grammar | None]] = {
    "text": lambda fmt: None,
    "json_object": lambda fmt: Grammar.json_object(param="response_format"),
    "json_schema": lambda fmt: Grammar.json_schema({"type": "object"} if fmt.json_schema.schema_ is None
                                                   else fmt.json_schema.schema_,
                                                   param="response_format.json_schema.schema"),
}


def tool_choice(request: ChatCompletionRequest | CompletionRequest) -> str:
    """``none`` (no tools, or tools not to call), ``auto``, ``required`` or the function to call."""
    return request.tool_choice_name() if isinstance(request, ChatCompletionRequest) else "none"


def request_grammar(request: ChatCompletionRequest | CompletionRequest) -> Grammar | None:
    """What the answer must match: tool calls in the model's format (server/tools.py) unless
    ``tool_choice`` is ``none``, else the ``response_format``; None for free text."""
    choice, fmt = tool_choice(request), request.response_format
    if choice != "none":
        if fmt is not None and fmt.type != "text":
            raise InvalidParameterError("response_format together with tools is not supported: ask for the "
                                        "format in a tool's parameters, or set tool_choice to 'none'",
                                        param="response_format")
        return tool_grammar([t.function.model_dump(exclude_none=True) for t in request.tools], choice,
                            request.parallel_tool_calls is not False)
    return None if fmt is None else _FORMATS[fmt.type](fmt)


def generation_options(request: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    """Keyword arguments for ``Engine.prepare`` besides the prompt (``max_tokens`` None: the
    engine's default, what fits the context up to its cap; ``tools``: what the chat template
    renders; ``grammar``: :func:`request_grammar`)."""
    spec = request.speculative
    tools = request.tools if isinstance(request, ChatCompletionRequest) else None
    return {
        "max_tokens": request.max_tokens,
        "temperature": DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
        "top_p": DEFAULT_TOP_P if request.top_p is None else request.top_p,
        "top_k": request.top_k or 0,
        "seed": request.seed,
        "stop": request.stop_strings(),
        "presence_penalty": request.presence_penalty or 0.0,
        "frequency_penalty": request.frequency_penalty or 0.0,
        "logit_bias": request.logit_bias or {},
        "logprobs": request.top_logprobs_asked(),
        "method": spec.method if spec else None,
        "num_draft": spec.num_draft if spec else None,
        "grammar": request_grammar(request),
        "tools": [t.model_dump(exclude_none=True) for t in tools] if tools else None,
        "acceptance": speculative_acceptance(spec),
    }


def speculative_acceptance(spec) -> Any:
    """The acceptance rule a request's ``speculative`` field asks for (None: the server's): a rule
    name with its options; options without a rule name are an error naming the option."""
    options = {name: getattr(spec, name) for name in option_names()} if spec else {}
    if spec is None or spec.acceptance is None:
        given = [name for name, value in options.items() if value is not None]
        if given:
            raise InvalidParameterError(f"speculative.{given[0]} is an option of an acceptance rule: give "
                                        f"speculative.acceptance too (\"typical\")", param=given[0])
        return None
    return acceptance_rule(spec.acceptance, **options)


def choice_requests(request: Request, n: int) -> list[Request]:
    """The generations that answer ``n`` choices: greedy, one for all of them (the choices are
    equal); sampling, one per choice, the i-th seeded ``seed + i`` (so choice 0 is what the same
    request with n = 1 answers), or each from fresh entropy when the request has no seed."""
    if request.sampling.greedy:
        return [request]
    seed = request.sampling.seed
    return [replace(request, sampling=replace(request.sampling, seed=None if seed is None else seed + i))
            for i in range(n)]


# --- engine -> responses -----------------------------------------------------------------------

def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict:
    """OpenAI's usage; ``cached_tokens``: prompt tokens the cache already held (not computed
    again), as OpenAI reports them in ``prompt_tokens_details``."""
    out = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens}
    if cached_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out


TokenBytes = Callable[[int], bytes]


def token_string(token_bytes: TokenBytes, token: int) -> str:
    """A token's text as logprobs show it (bytes that are not whole UTF-8 characters as U+FFFD)."""
    return token_bytes(token).decode("utf-8", errors="replace")


def chat_logprobs(logprobs: Sequence[TokenLogprob], token_bytes: TokenBytes) -> dict:
    """A chat choice's (or chunk's) ``logprobs``: ``{"content": [{token, logprob, bytes,
    top_logprobs: [{token, logprob, bytes}]}], "refusal": None}``."""
    def entry(token: int, logprob: float) -> dict:
        return {"token": token_string(token_bytes, token), "logprob": logprob, "bytes": list(token_bytes(token))}

    return {"content": [{**entry(lp.token, lp.logprob), "top_logprobs": [entry(t, p) for t, p in lp.top]}
                        for lp in logprobs], "refusal": None}


def text_logprobs(logprobs: Sequence[TokenLogprob], token_bytes: TokenBytes, offset: int = 0) -> dict:
    """A text completion choice's (or chunk's) ``logprobs``: ``{tokens, token_logprobs,
    top_logprobs, text_offset}``. ``top_logprobs[i]`` maps the most likely tokens' strings, and the
    chosen one's, to their log-probabilities (OpenAI: up to logprobs + 1 entries). ``text_offset``:
    where each token starts in the completion, counting the token strings as listed, from
    ``offset`` (the completion's characters before these tokens)."""
    tokens = [token_string(token_bytes, lp.token) for lp in logprobs]
    starts = list(accumulate(map(len, tokens), initial=offset))[:-1]
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [{token_string(token_bytes, t): p for t, p in (*lp.top, (lp.token, lp.logprob))}
                             for lp in logprobs],
            "text_offset": starts}


def speculative_summary(method: str, num_draft: int, stats: dict) -> dict:
    """The extra ``speculative`` response field: the method used and the engine's stats."""
    return {"method": method, "num_draft": num_draft,
            **{k: v for k, v in stats.items() if k not in _OMITTED_STATS}}


@dataclass(frozen=True)
class Reply:
    """Builds the response object or the stream chunks of one request.

    kind: ``chat`` (``chat.completion`` / ``chat.completion.chunk``) or ``text``
    (``text_completion``, for both). ``id`` and ``created`` are fixed for all chunks of a stream.
    """

    kind: Literal["chat", "text"]
    id: str
    created: int
    model: str

    def _envelope(self, object_: str, choices: list[dict], **extra) -> dict:
        return {"id": self.id, "object": object_, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices, **extra}

    def choice(self, index: int, text: str, finish_reason: str, logprobs: dict | None = None,
               tool_calls: list[dict] | None = None) -> dict:
        """One choice of a non-streaming answer (``logprobs``: :func:`chat_logprobs` or
        :func:`text_logprobs`, for this reply's kind; ``tool_calls``: the calls parsed from the
        answer, ``text`` then the content besides them, null when empty)."""
        if self.kind == "chat":
            message = {"role": "assistant", "content": text or None} if tool_calls else {"role": "assistant",
                                                                                          "content": text}
            if tool_calls:
                message["tool_calls"] = tool_calls
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    def response(self, choices: list[dict], usage: dict, speculative: dict) -> dict:
        """The whole answer of a non-streaming request (``choices`` from :meth:`choice`)."""
        object_ = "chat.completion" if self.kind == "chat" else "text_completion"
        return self._envelope(object_, choices, usage=usage, speculative=speculative)

    def chunk(self, text: str | None = None, *, index: int = 0, first: bool = False,
              finish_reason: str | None = None, logprobs: dict | None = None, tool_calls: list[dict] | None = None,
              **extra) -> dict:
        """One stream chunk of choice ``index``: the first one of a chat stream carries the role;
        the last one the finish reason (and here the ``speculative`` stats, as an extra field);
        ``tool_calls``: deltas of tool calls (server/tools.py, ToolCallParser)."""
        if self.kind == "chat":
            delta: dict = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            if tool_calls is not None:
                delta["tool_calls"] = tool_calls
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            return self._envelope("chat.completion.chunk", [choice], **extra)
        choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
        return self._envelope("text_completion", [choice], **extra)

    def logprobs(self, logprobs: Sequence[TokenLogprob], token_bytes: TokenBytes, offset: int = 0) -> dict:
        """``logprobs`` in this reply's kind's format (``offset``: text completions only)."""
        if self.kind == "chat":
            return chat_logprobs(logprobs, token_bytes)
        return text_logprobs(logprobs, token_bytes, offset)

    def usage_chunk(self, usage: dict) -> dict:
        """The final chunk a client asked for with ``stream_options.include_usage``: no choices."""
        object_ = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return self._envelope(object_, [], usage=usage)


def sse(data: dict | str) -> str:
    """One server-sent event (``data: ...`` and a blank line)."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, separators=(',', ':'))}\n\n"


SSE_DONE = sse("[DONE]")
