"""Continuous batching: one worker thread per engine runs every admitted request in shared steps.

An :class:`~quickdraft.Engine` holds one llama.cpp context and is not thread-safe, so each engine
is owned by exactly one worker thread. The worker keeps a batch of running generations, each in
a KV sequence of its own (``Engine.start(request, batched=True)``), and loops:

1. admit waiting requests, in arrival order, while the batch has room (``max_batch`` requests,
   and KV cells for each one's prompt, ``max_tokens`` and draft: a request never runs out of
   room mid-way; a method that runs alone, ``ProposerSpec.alone``, waits for an idle engine and
   runs by itself);
2. run one step over every generation whose prompt is in (``Engine.step``: the draft lengths are
   chosen for the whole batch, one forward verifies them all) and hand each its new text; the
   step also carries prompt tokens of the admitted requests not yet in, oldest first, each chunk
   in a forward of its own, so a long prompt neither stalls the running streams for its whole
   length nor waits for them to end: by default prompts first within ``step_time`` seconds (as
   many prompt tokens as a plain step of the running generations leaves time for, drafts only in
   the time left: control.prompt_room, allocate's ``limit_s``), or a fixed ``prefill_chunk`` of
   the oldest; when nothing runs, the oldest prompt in a forward of its own (``n_batch`` tokens,
   or ``prefill_chunk``: nobody waits on it);
3. end what finished, was cancelled (the client disconnected, or the HTTP side gave up) or passed
   its deadline, freeing its sequences at once.

Backends without batching (torch) run a batch of one. The queue in front is first-in first-out
and bounded: :meth:`Scheduler.submit` refuses a request at once (503) when ``max_queue`` requests
are already waiting, instead of letting clients hang.

A job carries a :class:`~quickdraft.engine.Request` the HTTP side prepared (``Engine.prepare``:
prompt tokenized, every parameter checked, defaults filled in) before queueing it, so a bad
request is refused at once and the worker only runs what is ready. Events flow back to the
request's asyncio task through an ``asyncio.Queue`` fed with ``loop.call_soon_threadsafe``, as
``(job.index, event)`` (the jobs answering one request's choices may share a queue):
:class:`Started` once it is admitted, then one :class:`~quickdraft.Piece` per step that produced
text, then :class:`Finished` or :class:`Failed`. The deadline counts from arrival (queueing
included).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Sequence

from ..backends.base import BATCH
from ..engine import Engine, Generation
from ..requests import Request
from ..errors import InvalidParameterError, QuickdraftError
from ..records import GenerationResult, Piece
from ..system import hand_over_compute
from .metrics import Metrics
from .protocol import APIError, busy_error, engine_error, engines_down_error, internal_error, timeout_error

log = logging.getLogger("quickdraft.server")

# Seconds a step that carries prompt tokens is predicted to take at most, unless --step-time or
# --prefill-chunk says otherwise: a pause in every running stream, kept under 2 s with room for
# the cost model's misses (README "Under load": the measurements behind it).
DEFAULT_STEP_TIME = 1.25


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
    field an error about the prompt names (``messages`` or ``prompt``). events: where its events
    go, as ``(index, event)`` (default: a queue of its own)."""

    def __init__(self, request: Request, *, timeout_s: float, loop: asyncio.AbstractEventLoop,
                 prompt_param: str = "messages", events: asyncio.Queue | None = None, index: int = 0) -> None:
        self.request = request
        self.prompt_param = prompt_param
        self.timeout_s = timeout_s
        self.arrived = time.monotonic()
        self.deadline = self.arrived + timeout_s
        self.events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue() if events is None else events
        self.index = index
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
            self._loop.call_soon_threadsafe(self.events.put_nowait, (self.index, event))
        except RuntimeError:  # the event loop is closed: the server is shutting down
            pass

    def _cancel(self, reason: str) -> None:
        if not self._cancelled.is_set():
            self.cancel_reason = reason
            self._cancelled.set()


@dataclass
class _Running:
    job: Job
    generation: Generation
    admitted: float
    tokens: int = 0  # completion tokens sent


class Scheduler:
    """Runs jobs on ``engines`` (one worker thread each, a batch of running generations each), in
    arrival order.

    max_queue: how many requests may wait (the running ones are not counted). max_batch: requests
    an engine runs at once (1 for backends that cannot batch). step_time: seconds a step that
    carries prompt tokens is predicted to take at most (the engine's learned costs; default
    ``DEFAULT_STEP_TIME``), prompts first: as many prompt tokens as a plain step of the running
    generations leaves time for, drafts in the rest (Engine.step), a prompt alone in forwards as
    large as the backend takes. prefill_chunk: instead, prompt tokens a step prefills at most.
    """

    def __init__(self, engines: Sequence[Engine], *, max_queue: int, metrics: Metrics, max_batch: int = 8,
                 prefill_chunk: int | None = None, step_time: float | None = None) -> None:
        if not engines:
            raise ValueError("the scheduler needs at least one engine")
        check_scheduling(max_queue, max_batch, prefill_chunk, step_time)
        if prefill_chunk is None and step_time is None:
            step_time = DEFAULT_STEP_TIME
        self.engines = list(engines)
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.step_time = step_time
        self.metrics = metrics
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._active: dict[Job, int] = {}  # admitted and not yet ended -> the index of its engine
        self._failed: set[int] = set()  # engines whose worker stopped on an error
        self._stopping = False
        self._threads: list[threading.Thread] = []
        metrics.track_queue(lambda: self.waiting, lambda: self.running)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def failed(self) -> int:
        """How many engines' workers stopped on an error (they take no more jobs)."""
        return len(self._failed)

    @property
    def down(self) -> bool:
        """Whether every engine's worker stopped on an error (nothing can generate)."""
        return len(self._failed) == len(self.engines)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start a worker thread per engine, and return once each has warmed its engine up
        (:meth:`Engine.warm_up`, on the thread that decodes: the first request does not pay for
        it). The calling thread's compute threads are given back first
        (:func:`~quickdraft.system.hand_over_compute`): from now on the workers decode."""
        hand_over_compute()
        ready = [threading.Event() for _ in self.engines]
        for i, engine in enumerate(self.engines):
            thread = threading.Thread(target=self._work, args=(engine, ready[i]), name=f"quickdraft-engine-{i}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        for event in ready:
            event.wait()

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
    def submit(self, *jobs: Job) -> None:
        """Queue ``jobs``, all or none; raises :class:`APIError` 503 when the server is stopping, or
        when more than ``max_queue`` jobs would wait (jobs about to start do not count as waiting)."""
        with self._cond:
            queue = [*self._pending, *jobs]
            if self.down:
                raise engines_down_error()
            if self._stopping or len(queue) - self._startable(queue) > self.max_queue:
                raise busy_error(self.max_queue)
            self._pending.extend(jobs)
            self._cond.notify_all()

    def cancel(self, job: Job, reason: str = "cancelled") -> None:
        """Stop ``job``: dropped from the queue now, or ended by its worker after the current step."""
        job._cancel(reason)
        with self._cond:
            try:
                self._pending.remove(job)
            except ValueError:
                self._cond.notify_all()  # running or done: the worker sees the flag
                return
        self.metrics.generations.labels(job.request.method, reason).inc()

    def _room(self, index: int, job: Job, running: Sequence[Job] | None = None) -> bool:
        """Whether engine ``index`` can start ``job`` beside ``running`` (default: its running
        jobs; called under the lock): a place in its batch, and KV cells for the job's whole
        generation beside what the running ones may still take (a lone job always fits: prepare
        checked it against the context). A job whose method runs alone (``ProposerSpec.alone``)
        waits for an idle engine, and nothing joins it."""
        if index in self._failed:
            return False
        engine = self.engines[index]
        mine = [j for j, i in self._active.items() if i == index] if running is None else running
        if not mine:
            return True
        if BATCH not in engine.target.capabilities or len(mine) >= self.max_batch or _alone(job) \
                or any(map(_alone, mine)):
            return False
        return sum(map(_reserve, mine)) + _reserve(job) <= engine.target.n_ctx

    def _startable(self, queue: Sequence[Job]) -> int:
        """How many of ``queue``'s first jobs the engines have room for now, in order."""
        running = {i: [j for j, e in self._active.items() if e == i] for i in range(len(self.engines))}
        for n, job in enumerate(queue):
            index = next((i for i in running if self._room(i, job, running[i])), None)
            if index is None:
                return n
            running[index].append(job)
        return len(queue)

    # --- the worker threads ------------------------------------------------------------------
    def _work(self, engine: Engine, ready: threading.Event) -> None:
        """A worker's life: warm the engine up (then ``ready``), serve until the scheduler stops.
        Should anything outside a step fail (a step's own errors end only its batch), the worker
        ends its jobs and leaves the engine out, rather than leave them, and every later request,
        waiting for their timeouts."""
        index = self.engines.index(engine)
        try:
            self._serve(engine, index, ready)
        except Exception:
            log.exception("engine %d stopped on an error; it takes no more requests", index)
            self._lose(index)
        finally:
            ready.set()

    def _serve(self, engine: Engine, index: int, ready: threading.Event) -> None:
        batch: list[_Running] = []
        with engine.exclusive():
            engine.warm_up()
            if BATCH in engine.target.capabilities:
                engine.clear_caches()
            ready.set()
            while True:
                with self._cond:
                    while not batch and not self._pending and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        break
                    jobs = self._admit(index)
                for job in jobs:
                    self._begin(engine, job, batch)
                try:
                    self._advance(engine, batch)
                except Exception:  # never let one bad step kill the worker: end the batch's requests
                    log.exception("a step failed")
                    for running in list(batch):
                        running.job.emit(Failed(internal_error()))
                        self._end(engine, running, batch, "error", send=False)
                    continue
                for running in list(batch):
                    self._check(engine, running, batch)
            for running in list(batch):
                self._end(engine, running, batch, "shutdown", send=False)

    def _lose(self, index: int) -> None:
        """Engine ``index``'s worker failed: its jobs get a 500; when no engine is left, the waiting
        jobs get a 503 and so will later ones (``submit``)."""
        with self._cond:
            self._failed.add(index)
            mine = [job for job, i in self._active.items() if i == index]
            for job in mine:
                del self._active[job]
            dropped: list[Job] = []
            if self.down:
                dropped = list(self._pending)
                self._pending.clear()
            self._cond.notify_all()
        for job in mine:
            self._fail(job, internal_error())
        for job in dropped:
            job.emit(Failed(engines_down_error()))

    def _admit(self, index: int) -> list[Job]:
        """Pop, in arrival order, the waiting jobs engine ``index`` has room for (under the lock)."""
        jobs: list[Job] = []
        while self._pending and self._room(index, self._pending[0]):
            job = self._pending.popleft()
            self._active[job] = index
            jobs.append(job)
        return jobs

    def _begin(self, engine: Engine, job: Job, batch: list[_Running]) -> None:
        now = time.monotonic()
        self.metrics.queue_wait.observe(now - job.arrived)
        if job.cancelled or job.expired():
            reason = job.cancel_reason or ("timeout" if job.expired() else "cancelled")
            if reason == "timeout":
                job.emit(Failed(timeout_error(job.timeout_s)))
            self.metrics.observe_generation(job.request.method, reason, len(job.request.tokens), 0, None)
            self._forget(job)
            return
        try:
            generation = engine.start(job.request, batched=BATCH in engine.target.capabilities and not _alone(job))
        except QuickdraftError as e:  # the request's own fault (a 400): it ends only this job
            self._fail(job, engine_error(e, prompt_param=job.prompt_param))
            self._forget(job)
            return
        except Exception:  # ours (a 500): it ends only this job too
            log.exception("a request could not start")
            self._fail(job, internal_error())
            self._forget(job)
            return
        job.emit(Started())
        batch.append(_Running(job, generation, now))

    def _fail(self, job: Job, error: APIError) -> None:
        """End ``job``, which generated nothing, with ``error`` (counted as an error)."""
        job.emit(Failed(error))
        self.metrics.observe_generation(job.request.method, "error", len(job.request.tokens), 0, None)

    def _advance(self, engine: Engine, batch: list[_Running]) -> None:
        """One step over the generations whose prompt is in, which also carries prompt tokens of
        those not yet in: with ``step_time``, of as many as the step's time leaves room for,
        oldest first (the engine cuts them); with the fixed chunk, ``prefill_chunk`` of the
        oldest. When none is in (or the backend cannot batch), the oldest prompt's next chunk is
        a forward of its own: ``prefill_chunk`` tokens, or with ``step_time`` as many as one
        forward takes (nobody waits on it)."""
        ready = [r for r in batch if r.generation.prefilled and not r.generation.done]
        waiting = [r.generation for r in batch if not r.generation.prefilled]
        batching = BATCH in engine.target.capabilities
        # prompt tokens a step is offered: the fixed chunk, or as many as one forward takes (None: all)
        size = self.prefill_chunk if self.step_time is None else engine.target.n_batch if batching else None
        if waiting and (not batching or not ready):
            waiting[0].prefill(size)
            return
        riding = waiting[:1] if self.step_time is None else waiting
        chunks = [c for g in riding if (c := g.next_chunk(size)) is not None]  # Engine.step cuts them to n_batch
        if not ready:
            return
        self.metrics.batch_size.observe(len(ready))
        start = time.monotonic()
        pieces = engine.step([r.generation for r in ready], prefill=chunks, step_s=self.step_time)
        self.metrics.step_seconds.observe(time.monotonic() - start)
        for generation in waiting:
            generation.prefill_done()
        for running, piece in zip(ready, pieces):
            if piece is not None:
                if running.tokens == 0:
                    self.metrics.time_to_first_token.observe(time.monotonic() - running.job.arrived)
                running.tokens += len(piece.token_ids)
                running.job.emit(piece)

    def _check(self, engine: Engine, running: _Running, batch: list[_Running]) -> None:
        """End ``running`` if it finished, was cancelled or passed its deadline."""
        job, generation = running.job, running.generation
        if job.cancelled:
            self._end(engine, running, batch, job.cancel_reason or "cancelled", send=False)
        elif generation.done:
            self._end(engine, running, batch, None, send=True)
        elif job.expired():
            job.emit(Failed(timeout_error(job.timeout_s)))
            self._end(engine, running, batch, "timeout", send=False)

    def _end(self, engine: Engine, running: _Running, batch: list[_Running], finish: str | None, *,
             send: bool) -> None:
        """Free the generation's sequences and account for it; ``send``: it finished, tell the client."""
        job, generation = running.job, running.generation
        batch.remove(running)
        try:
            engine.release(generation)
        except Exception:
            log.exception("could not release a generation")
        result = generation.result()
        if send:
            job.emit(Finished(result))
        self.metrics.request_duration.observe(time.monotonic() - job.arrived)
        self.metrics.observe_generation(job.request.method, finish or result.finish_reason,
                                        len(job.request.tokens), running.tokens, result.stats)
        self._forget(job)

    def _forget(self, job: Job) -> None:
        with self._cond:
            self._active.pop(job, None)
            self._cond.notify_all()


def check_scheduling(max_queue: int, max_batch: int, prefill_chunk: int | None, step_time: float | None) -> None:
    """Raise InvalidParameterError (naming the server option) unless the scheduler's settings make
    sense (``prefill_chunk`` and ``step_time``: at most one of the two)."""
    if prefill_chunk is not None and step_time is not None:
        raise InvalidParameterError("--prefill-chunk and --step-time are two ways of admitting prompts: give one",
                                    param="prefill_chunk")
    for name, value, low in (("--max-queue", max_queue, 0), ("--parallel", max_batch, 1),
                             ("--prefill-chunk", prefill_chunk, 1)):
        if value is not None and value < low:
            raise InvalidParameterError(f"{name} must be >= {low}, got {value}", param=name.lstrip("-").replace("-", "_"))
    if step_time is not None and not 0 < step_time < float("inf"):
        raise InvalidParameterError(f"--step-time must be a positive number of seconds (a step's predicted time "
                                    f"with prompt tokens), got {step_time}", param="step_time")


def _alone(job: Job) -> bool:
    """The job's method runs one request at a time (``ProposerSpec.alone``)."""
    return job.request.spec.alone


def _reserve(job: Job) -> int:
    """KV cells a job may take at most: its prompt, its new tokens and a step's draft."""
    request = job.request
    return len(request.tokens) + request.max_tokens + request.budget + 1
