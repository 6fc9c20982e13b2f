"""Serializing generation: one worker thread per engine, one fair queue in front of them.

An :class:`~quickdraft.Engine` holds one llama.cpp context and is not thread-safe, so each engine
is owned by exactly one worker thread, which runs one request at a time from start to end. All
workers take requests from the same first-in first-out queue, so requests are served in arrival
order. The queue is bounded: :meth:`Scheduler.submit` refuses a request at once (503) when
``max_queue`` requests are already waiting, instead of letting clients hang.

A job carries a :class:`~quickdraft.engine.Request` the HTTP side prepared (``Engine.prepare``:
prompt tokenized, every parameter checked, defaults filled in) before queueing it, so a bad
request is refused at once and the worker only runs what is ready. Events flow back to the
request's asyncio task through an ``asyncio.Queue`` fed with ``loop.call_soon_threadsafe``:
:class:`Started` once an engine begins it, then one :class:`~quickdraft.Piece` per step, then
:class:`Finished` or :class:`Failed`.

Cancellation and timeouts: the engine's stream is a generator that runs one speculative step per
``next()``, so the worker checks between steps whether the request was cancelled (the client
disconnected, or the HTTP side gave up) or passed its deadline, and if so closes the generator.
A request's slot is therefore free after at most one step; a request cancelled while waiting is
removed from the queue at once. The deadline counts from arrival (queueing included).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Sequence

from ..engine import Engine, Request
from ..errors import QuickdraftError
from ..types import GenerationResult, Piece
from .metrics import Metrics
from .protocol import APIError, busy_error, engine_error, internal_error, timeout_error

log = logging.getLogger("quickdraft.server")


@dataclass(frozen=True)
class Started:
    """An engine began the request."""


@dataclass(frozen=True)
class Finished:
    result: GenerationResult


@dataclass(frozen=True)
class Failed:
    error: APIError


Event = Started | Piece | Finished | Failed


class Job:
    """One prepared request on its way through the queue and an engine. prompt_param: the request
    field an error about the prompt names (``messages`` or ``prompt``)."""

    def __init__(self, request: Request, *, timeout_s: float, loop: asyncio.AbstractEventLoop,
                 prompt_param: str = "messages") -> None:
        self.request = request
        self.prompt_param = prompt_param
        self.timeout_s = timeout_s
        self.arrived = time.monotonic()
        self.deadline = self.arrived + timeout_s
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancel_reason: str | None = None
        self._loop = loop
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def emit(self, event: Event) -> None:
        """Hand an event to the request's task (from any thread)."""
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass

    def _cancel(self, reason: str) -> None:
        if not self._cancelled.is_set():
            self.cancel_reason = reason
            self._cancelled.set()


class Scheduler:
    """Runs jobs on ``engines`` (one worker thread each) in arrival order.

    max_queue: how many requests may wait for an engine (the ones running are not counted).
    """

    def __init__(self, engines: Sequence[Engine], *, max_queue: int, metrics: Metrics) -> None:
        if not engines:
            raise ValueError("the scheduler needs at least one engine")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.engines = list(engines)
        self.max_queue = max_queue
        self.metrics = metrics
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._active: set[Job] = set()  # being generated now
        self._stopping = False
        self._threads: list[threading.Thread] = []
        metrics.track_queue(lambda: self.waiting, lambda: self.running)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        return len(self._active)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        for i, engine in enumerate(self.engines):
            thread = threading.Thread(target=self._work, args=(engine,), name=f"quickdraft-engine-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Refuse new jobs, drop the waiting ones, stop the running ones after their current step."""
        with self._cond:
            self._stopping = True
            dropped, active = list(self._pending), list(self._active)
            self._pending.clear()
            self._cond.notify_all()
        for job in dropped:
            job._cancel("shutdown")
            job.emit(Failed(APIError(503, "the server is shutting down", type="server_error", code="shutdown")))
        for job in active:
            job._cancel("shutdown")
        for thread in self._threads:
            thread.join(timeout_s)

    # --- requests ----------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue ``job``; raises :class:`APIError` 503 when the queue is full or the server stopping."""
        with self._cond:
            if self._stopping or len(self._pending) >= self.max_queue + self._idle_workers():
                raise busy_error(self.max_queue)
            self._pending.append(job)
            self._cond.notify()

    def cancel(self, job: Job, reason: str = "cancelled") -> None:
        """Stop ``job``: dropped from the queue now, or stopped after the engine's current step."""
        job._cancel(reason)
        with self._cond:
            try:
                self._pending.remove(job)
            except ValueError:
                return  # running or done: the worker sees the flag
        self.metrics.generations.labels(job.request.method, reason).inc()

    def _idle_workers(self) -> int:
        return len(self.engines) - len(self._active)

    # --- the worker threads ------------------------------------------------------------------
    def _work(self, engine: Engine) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._pending.popleft()
                self._active.add(job)
            try:
                self._run(engine, job)
            except Exception:  # never let one request kill the worker
                log.exception("unexpected error while running a request")
            finally:
                with self._cond:
                    self._active.discard(job)

    def _run(self, engine: Engine, job: Job) -> None:
        start = time.monotonic()
        self.metrics.queue_wait.observe(start - job.arrived)
        method, prompt_tokens, completion_tokens = job.request.method, len(job.request.tokens), 0
        finish, stats = "error", None
        if job.cancelled:  # cancelled between leaving the queue and here
            self.metrics.observe_generation(method, job.cancel_reason or "cancelled", 0, 0, None)
            return
        if job.expired():
            job.emit(Failed(timeout_error(job.timeout_s)))
            self.metrics.observe_generation(method, "timeout", prompt_tokens, 0, None)
            return
        stream = engine.stream(job.request)
        pieces = iter(stream)
        job.emit(Started())
        try:
            for piece in pieces:
                if completion_tokens == 0:
                    self.metrics.time_to_first_token.observe(time.monotonic() - job.arrived)
                completion_tokens += len(piece.token_ids)
                job.emit(piece)
                if job.cancelled:
                    finish = job.cancel_reason or "cancelled"
                    break
                if job.expired():
                    finish = "timeout"
                    job.emit(Failed(timeout_error(job.timeout_s)))
                    break
            else:
                result = stream.result
                finish, stats = result.finish_reason, result.stats
                job.emit(Finished(result))
        except QuickdraftError as e:
            job.emit(Failed(engine_error(e, prompt_param=job.prompt_param)))
        except Exception:
            log.exception("generation failed")
            job.emit(Failed(internal_error()))
        finally:
            pieces.close()  # a no-op when exhausted; otherwise stops the engine at this step
            self.metrics.request_duration.observe(time.monotonic() - job.arrived)
            self.metrics.observe_generation(method, finish, prompt_tokens, completion_tokens, stats)
