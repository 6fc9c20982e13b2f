"""Serving one completion request (chat or text, streamed or not, n choices) through the scheduler.

The request's task prepares the request (``Engine.prepare``: bad prompt, context overflow,
unknown method and bad values are answered at once as plain 4xx JSON, even for ``stream:
true``), submits the jobs that answer its choices (``protocol.choice_requests``: one for all
choices when greedy, one per choice when sampling; they batch together) and waits for their
events; the stream is only opened once an engine has begun the request. While waiting, a
non-streaming request polls its connection, and a streaming one is cancelled by Starlette when
the client goes; either way its jobs are cancelled, so the engine drops them after its current
step.

With tools (and ``tool_choice`` not ``none``) each choice's answer is read back into ``content``
and ``tool_calls`` (server/tools.py), streamed as OpenAI streams them, ``finish_reason``
``tool_calls`` when it called any.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import AsyncIterator, Callable, Sequence

from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..engine import Engine
from ..requests import Request
from ..errors import QuickdraftError
from ..records import GenerationResult, Piece
from .protocol import (SSE_DONE, APIError, Reply, choice_requests, engine_error, engine_prompt, generation_options,
                       model_not_found, speculative_summary, sse, timeout_error, tool_choice, usage)
from .scheduler import Event, Failed, Finished, Job, Scheduler
from .schemas import ChatCompletionRequest, CompletionRequest
from .tools import ToolCallParser, parse_tool_calls, renders_tool_calls

DISCONNECT_POLL_S = 0.2  # how often a waiting non-streaming request checks that its client is still there
TIMEOUT_GRACE_S = 2.0  # the worker enforces the deadline between steps; the HTTP side waits this much longer

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The client disconnected while its request was waiting or running."""


class Choices:
    """The jobs answering one request's ``n`` choices, their events in one queue as ``(job index,
    event)``. Job j answers choices ``indices(j)``: all of them when one job answers all (greedy),
    else choice j."""

    def __init__(self, requests: Sequence[Request], n: int, *, timeout_s: float, prompt_param: str) -> None:
        self.events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.jobs = [Job(r, timeout_s=timeout_s, loop=loop, prompt_param=prompt_param, events=self.events, index=j)
                     for j, r in enumerate(requests)]
        self.n = n

    def indices(self, job: int) -> range:
        per_job = self.n // len(self.jobs)
        return range(job * per_job, (job + 1) * per_job)

    @property
    def deadline(self) -> float:
        return min(job.deadline for job in self.jobs)


class Completions:
    """``await completions(body, request, "chat" | "text")`` -> the HTTP response.

    model_names: the served model id, then the other names accepted for it.
    on_error: called with every error that reaches a client inside a stream (for the metrics;
    errors raised as :class:`APIError` are counted by the app's exception handler).
    """

    def __init__(self, scheduler: Scheduler, engine: Engine, *, model_names: Sequence[str], timeout_s: float,
                 on_error: Callable[[APIError], None]) -> None:
        self.scheduler, self.engine, self.model_names = scheduler, engine, tuple(model_names)
        self.timeout_s, self.on_error = timeout_s, on_error
        self._tool_calls: bool | None = None  # whether the model's template writes tool calls as we read them

    def tool_calls_known(self) -> bool:
        """Whether this model's chat template writes tool calls in the format server/tools.py reads."""
        if self._tool_calls is None:
            self._tool_calls = renders_tool_calls(self.engine.target.chat_prompt)
        return self._tool_calls

    async def __call__(self, body: ChatCompletionRequest | CompletionRequest, request: HTTPRequest, kind: str):
        if body.model not in self.model_names:
            raise model_not_found(body.model, self.model_names)
        prompt_param = "messages" if kind == "chat" else "prompt"
        prompt, chat = engine_prompt(body)
        calls = tool_choice(body) != "none"  # answers are read back into tool calls
        if calls and not self.tool_calls_known():
            raise APIError(400, "this model's chat template does not write tool calls in a format quickdraft "
                                "reads (<tool_call> tags, as Qwen2.5's and Hermes' do)", param="tools",
                           code="invalid_value")
        try:
            prepared = self.engine.prepare(prompt, chat=chat, **generation_options(body))
        except QuickdraftError as e:
            raise engine_error(e, prompt_param=prompt_param) from None
        choices = Choices(choice_requests(prepared, body.choices()), body.choices(), timeout_s=self.timeout_s,
                          prompt_param=prompt_param)
        self.scheduler.submit(*choices.jobs)  # 503 when the queue cannot take them all
        reply = Reply(kind, f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", int(time.time()),
                      self.model_names[0])
        results: dict[int, GenerationResult] = {}
        try:
            _, started = await self._next_event(choices, request)  # an engine began (or refused) the first one
            if isinstance(started, Failed):
                raise started.error
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                return StreamingResponse(self._stream(choices, reply, include_usage, calls),
                                         media_type="text/event-stream", headers=SSE_HEADERS)
            while len(results) < len(choices.jobs):
                job, event = await self._next_event(choices, request)
                if isinstance(event, Failed):
                    raise event.error
                if isinstance(event, Finished):
                    results[job] = event.result
        except ClientGone:
            self._cancel(choices)
            return Response(status_code=499)  # nobody reads it; counted in the metrics
        except BaseException:
            self._cancel(choices)
            raise
        answers = [(i, results[job]) for job in range(len(choices.jobs)) for i in choices.indices(job)]
        token_bytes = self.engine.target.token_bytes
        parsed = [parse_tool_calls(result.text, new_call_id) if calls else (result.text, []) for _, result in answers]
        return JSONResponse(reply.response(
            [reply.choice(i, content, finish_reason(result.finish_reason, tool_calls),
                          None if result.logprobs is None else reply.logprobs(result.logprobs, token_bytes),
                          tool_calls)
             for (i, result), (content, tool_calls) in zip(answers, parsed)],
            usage(len(prepared.tokens), sum(len(result.token_ids) for _, result in answers),
                  results[0].stats.get("cached_tokens")),
            summary(prepared, results[0].stats)))

    def _cancel(self, choices: Choices) -> None:
        for job in choices.jobs:
            self.scheduler.cancel(job)

    async def _next_event(self, choices: Choices, request: HTTPRequest | None) -> tuple[int, Event]:
        """The next event of any of the choices' jobs; watches the client (``request``, if given)
        and the deadline meanwhile."""
        while True:
            remaining = choices.deadline + TIMEOUT_GRACE_S - time.monotonic()
            if remaining <= 0:
                for job in choices.jobs:
                    self.scheduler.cancel(job, "timeout")
                raise timeout_error(self.timeout_s)
            try:
                wait = min(remaining, DISCONNECT_POLL_S) if request is not None else remaining
                return await asyncio.wait_for(choices.events.get(), wait)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    raise ClientGone from None

    async def _stream(self, choices: Choices, reply: Reply, include_usage: bool,
                      calls: bool = False) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format, each carrying its choice's ``index``,
        ``data: [DONE]`` last; an error after the stream started is sent as one ``data: {"error":
        ...}`` event (OpenAI clients raise it) and ends it. ``calls``: each choice's text is read
        into content and tool-call deltas (ToolCallParser)."""
        done, finished, completion_tokens, cached = False, 0, 0, None
        token_bytes = self.engine.target.token_bytes
        sent = [0] * choices.n  # characters of text each choice has streamed (completions' text_offset)
        parsers = [ToolCallParser(new_call_id) for _ in range(choices.n)] if calls else None
        try:
            if reply.kind == "chat":
                for i in range(choices.n):
                    yield sse(reply.chunk("", index=i, first=True))
            while not done:
                try:
                    job, event = await self._next_event(choices, None)
                except APIError as error:  # the HTTP-side timeout
                    job, event = 0, Failed(error)
                if isinstance(event, Piece):
                    if event.text or event.logprobs:
                        for i in choices.indices(job):
                            logprobs = None if event.logprobs is None else reply.logprobs(event.logprobs, token_bytes,
                                                                                           sent[i])
                            deltas = parsers[i].feed(event.text) if parsers else [{"content": event.text}]
                            for n, delta in enumerate(deltas or [{"content": ""}] * (logprobs is not None)):
                                yield sse(reply.chunk(delta.get("content"), index=i, tool_calls=delta.get("tool_calls"),
                                                      logprobs=logprobs if n == 0 else None))
                            sent[i] += len(event.text)
                elif isinstance(event, Finished):
                    result, finished = event.result, finished + 1
                    cached = result.stats.get("cached_tokens") if job == 0 else cached
                    for i in choices.indices(job):
                        completion_tokens += len(result.token_ids)
                        for delta in parsers[i].close() if parsers else ():
                            yield sse(reply.chunk(delta.get("content"), index=i, tool_calls=delta.get("tool_calls")))
                        reason = finish_reason(result.finish_reason, parsers[i].calls if parsers else [])
                        yield sse(reply.chunk(index=i, finish_reason=reason,
                                              speculative=summary(choices.jobs[job].request, result.stats)))
                    if finished == len(choices.jobs):
                        done = True
                        if include_usage:
                            yield sse(reply.usage_chunk(usage(len(choices.jobs[0].request.tokens),
                                                              completion_tokens, cached)))
                        yield SSE_DONE
                elif isinstance(event, Failed):
                    done = True
                    self.on_error(event.error)
                    yield sse(event.error.body())
        finally:
            if not (done and finished == len(choices.jobs)):  # the client went away, or a choice failed
                self._cancel(choices)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def finish_reason(reason: str, tool_calls: list[dict]) -> str:
    """``tool_calls`` for an answer that ended (not cut by max_tokens) having called tools."""
    return "tool_calls" if tool_calls and reason == "stop" else reason


def summary(request: Request, stats: dict) -> dict:
    """The response's ``speculative`` field for a finished request."""
    return speculative_summary(request.method, request.budget, stats)
