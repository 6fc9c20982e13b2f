"""Serving one completion request (chat or text, streamed or not) through the scheduler.

The request's task prepares the request (``Engine.prepare``: bad prompt, context overflow,
unknown method and bad values are answered at once as plain 4xx JSON, even for ``stream:
true``), submits a :class:`~quickdraft.server.scheduler.Job` and waits for its events; the stream
is only opened once an engine has begun the request. While waiting, a non-streaming request polls its connection, and a
streaming one is cancelled by Starlette when the client goes; either way the job is cancelled, so
the engine drops it after its current step.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import AsyncIterator, Callable, Sequence

from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..engine import Engine, Request
from ..errors import QuickdraftError
from ..records import Piece
from .protocol import (SSE_DONE, APIError, Reply, engine_error, engine_prompt, generation_options,
                       model_not_found, speculative_summary, sse, timeout_error, usage)
from .scheduler import Failed, Finished, Job, Scheduler
from .schemas import ChatCompletionRequest, CompletionRequest

DISCONNECT_POLL_S = 0.2  # how often a waiting non-streaming request checks that its client is still there
TIMEOUT_GRACE_S = 2.0  # the worker enforces the deadline between steps; the HTTP side waits this much longer

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The client disconnected while its request was waiting or running."""


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

    async def __call__(self, body: ChatCompletionRequest | CompletionRequest, request: HTTPRequest, kind: str):
        if body.model not in self.model_names:
            raise model_not_found(body.model, self.model_names)
        prompt_param = "messages" if kind == "chat" else "prompt"
        prompt, chat = engine_prompt(body)
        try:
            prepared = self.engine.prepare(prompt, chat=chat, **generation_options(body))
        except QuickdraftError as e:
            raise engine_error(e, prompt_param=prompt_param) from None
        job = Job(prepared, timeout_s=self.timeout_s, loop=asyncio.get_running_loop(), prompt_param=prompt_param)
        self.scheduler.submit(job)  # 503 when the queue is full
        reply = Reply(kind, f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", int(time.time()),
                      self.model_names[0])
        try:
            started = await self._next_event(job, request)
            if isinstance(started, Failed):
                raise started.error
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                return StreamingResponse(self._stream(job, reply, include_usage),
                                         media_type="text/event-stream", headers=SSE_HEADERS)
            while not isinstance(event := await self._next_event(job, request), (Finished, Failed)):
                pass
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; counted in the metrics
        except BaseException:
            self.scheduler.cancel(job)
            raise
        if isinstance(event, Failed):
            raise event.error
        result = event.result
        return JSONResponse(reply.response(result.text, result.finish_reason,
                                           usage(len(prepared.tokens), len(result.token_ids)),
                                           summary(prepared, result.stats)))

    async def _next_event(self, job: Job, request: HTTPRequest | None):
        """The job's next event; watches the client (``request``, if given) and the deadline meanwhile."""
        while True:
            remaining = job.deadline + TIMEOUT_GRACE_S - time.monotonic()
            if remaining <= 0:
                self.scheduler.cancel(job, "timeout")
                raise timeout_error(self.timeout_s)
            try:
                wait = min(remaining, DISCONNECT_POLL_S) if request is not None else remaining
                return await asyncio.wait_for(job.events.get(), wait)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    self.scheduler.cancel(job)
                    raise ClientGone from None

    async def _stream(self, job: Job, reply: Reply, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format, ``data: [DONE]`` last; an error after the
        stream started is sent as one ``data: {"error": ...}`` event (OpenAI clients raise it)."""
        done = False
        try:
            if reply.kind == "chat":
                yield sse(reply.chunk("", first=True))
            while not done:
                try:
                    event = await self._next_event(job, None)
                except APIError as error:  # the HTTP-side timeout
                    event = Failed(error)
                if isinstance(event, Piece):
                    if event.text:
                        yield sse(reply.chunk(event.text))
                elif isinstance(event, Finished):
                    done = True
                    result = event.result
                    yield sse(reply.chunk(finish_reason=result.finish_reason, speculative=summary(job.request, result.stats)))
                    if include_usage:
                        yield sse(reply.usage_chunk(usage(len(job.request.tokens), len(result.token_ids))))
                    yield SSE_DONE
                elif isinstance(event, Failed):
                    done = True
                    self.on_error(event.error)
                    yield sse(event.error.body())
        finally:
            if not done:  # the client went away (Starlette cancelled us): stop the engine too
                self.scheduler.cancel(job)


def summary(request: Request, stats: dict) -> dict:
    """The response's ``speculative`` field for a finished request."""
    return speculative_summary(request.method, request.budget, stats)
