"""The scheduler on its own, with a stand-in engine whose steps the test releases: arrival
order, the bounded queue, cancelling a waiting request, and replicas running side by side."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from types import SimpleNamespace

import pytest

from quickdraft.backends.base import BATCH
from quickdraft.requests import Request
from quickdraft.proposers import METHODS
from quickdraft.sampling import SamplingParams
from quickdraft.server.metrics import Metrics
from quickdraft.server.protocol import APIError
from quickdraft.server.scheduler import Finished, Job, Scheduler, Started
from quickdraft.records import GenerationResult, Piece


class GatedGeneration:
    """A generation of the stand-in engine: one piece, then done once the engine's gate opens."""

    prefilled, done, emitted = True, False, False

    def prefill(self, chunk=None) -> bool:
        return True

    def result(self) -> GenerationResult:
        return GenerationResult("x", [3], "length", {}, prompt_tokens=2)


class GatedEngine:
    """Engine stand-in (a backend that cannot batch, or one that can with ``capabilities``): each
    generation emits one piece, then waits for ``gate`` before finishing."""

    def __init__(self, capabilities=frozenset(), n_ctx: int = 64, warm_up_s: float = 0.0) -> None:
        self.target = SimpleNamespace(capabilities=capabilities, n_ctx=n_ctx, n_batch=512)
        self.gate = threading.Event()
        self.warm_up_s, self.warmed = warm_up_s, False
        self.started: list = []
        self.batched: list[bool] = []
        self.batch_sizes: list[int] = []

    @contextlib.contextmanager
    def exclusive(self):
        yield

    def warm_up(self) -> None:
        time.sleep(self.warm_up_s)
        self.warmed = True

    def clear_caches(self) -> None:
        pass

    def start(self, request: Request, *, batched: bool = False) -> GatedGeneration:
        self.started.append(request.sampling.seed)
        self.batched.append(batched)
        return GatedGeneration()

    def step(self, generations, prefill=(), step_s=None) -> list:
        self.batch_sizes.append(len(generations))
        pieces = []
        for g in generations:
            if not g.emitted:
                g.emitted = True
                pieces.append(Piece("x", (3,), (False,)))
            else:
                assert self.gate.wait(10)
                g.done = True
                pieces.append(None)
        return pieces

    def release(self, generation) -> None:
        pass


@pytest.fixture()
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def job(loop, seed: int, max_tokens: int = 1, method: str = "ar") -> Job:
    request = Request((1, 2), max_tokens, SamplingParams(seed=seed), (), METHODS[method], 0, "fixed")
    return Job(request, timeout_s=30, loop=loop)


def until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def events(loop, j: Job) -> list:
    async def drain():
        out = []
        while not out or not isinstance(out[-1], Finished):
            index, event = await asyncio.wait_for(j.events.get(), 5)
            assert index == j.index
            out.append(event)
        return out

    return loop.run_until_complete(drain())


def test_requests_run_in_arrival_order_and_the_queue_is_bounded(loop):
    engine = GatedEngine()
    scheduler = Scheduler([engine], max_queue=2, metrics=Metrics())
    scheduler.start()
    try:
        jobs = [job(loop, seed) for seed in range(3)]
        for j in jobs:
            scheduler.submit(j)
        until(lambda: scheduler.running == 1 and scheduler.waiting == 2)
        with pytest.raises(APIError) as refused:
            scheduler.submit(job(loop, 99))
        assert refused.value.status == 503
        engine.gate.set()
        for j in jobs:
            kinds = [type(e).__name__ for e in events(loop, j)]
            assert kinds == ["Started", "Piece", "Finished"]
        assert engine.started == [0, 1, 2]
    finally:
        engine.gate.set()
        scheduler.stop()


def test_start_returns_once_every_engine_is_warmed_up_on_its_worker():
    """The first request must not pay for the models' first forward: start() waits for it."""
    engines = [GatedEngine(warm_up_s=0.3), GatedEngine(capabilities=frozenset({BATCH}), warm_up_s=0.3)]
    scheduler = Scheduler(engines, max_queue=4, metrics=Metrics())
    scheduler.start()
    try:
        assert [engine.warmed for engine in engines] == [True, True]
    finally:
        scheduler.stop()


def test_a_cancelled_waiting_request_leaves_the_queue_at_once_and_never_runs(loop):
    engine = GatedEngine()
    scheduler = Scheduler([engine], max_queue=1, metrics=Metrics())
    scheduler.start()
    try:
        first, second = job(loop, 1), job(loop, 2)
        scheduler.submit(first)
        until(lambda: scheduler.running == 1)
        scheduler.submit(second)
        scheduler.cancel(second)
        assert scheduler.waiting == 0
        scheduler.submit(job(loop, 3))  # the slot is free again
        engine.gate.set()
        until(lambda: scheduler.running == 0 and scheduler.waiting == 0)
        assert engine.started == [1, 3]
    finally:
        engine.gate.set()
        scheduler.stop()


def test_replicas_serve_requests_side_by_side(loop):
    engines = [GatedEngine(), GatedEngine()]
    scheduler = Scheduler(engines, max_queue=0, metrics=Metrics())
    scheduler.start()
    try:
        a, b = job(loop, 1), job(loop, 2)
        scheduler.submit(a)
        until(lambda: scheduler.running == 1)
        scheduler.submit(b)  # accepted: a replica is idle, although nothing may wait
        until(lambda: scheduler.running == 2)
        assert sorted(engines[0].started + engines[1].started) == [1, 2]
        for engine in engines:
            engine.gate.set()
        assert isinstance(events(loop, a)[0], Started) and isinstance(events(loop, b)[-1], Finished)
    finally:
        for engine in engines:
            engine.gate.set()
        scheduler.stop()


def test_a_batching_engine_runs_requests_together_within_its_batch_and_its_cells(loop):
    """max_batch requests share steps; beyond it, and beyond the KV cells their whole generations
    may take, requests wait in arrival order."""
    engine = GatedEngine(capabilities=frozenset({BATCH}), n_ctx=64)
    scheduler = Scheduler([engine], max_queue=8, metrics=Metrics(), max_batch=3)
    scheduler.start()
    try:
        small = [job(loop, seed) for seed in range(4)]  # 4 cells each
        for j in small:
            scheduler.submit(j)
        until(lambda: scheduler.running == 3 and scheduler.waiting == 1)  # the batch is full
        big = job(loop, 10, max_tokens=55)  # 58 cells: only alone
        scheduler.submit(big)
        engine.gate.set()
        for j in [*small, big]:
            assert [type(e).__name__ for e in events(loop, j)] == ["Started", "Piece", "Finished"]
        assert engine.started == [0, 1, 2, 3, 10]
        assert max(engine.batch_sizes) == 3
    finally:
        engine.gate.set()
        scheduler.stop()


def test_a_method_that_runs_alone_waits_for_an_idle_engine_and_nothing_joins_it(loop):
    """parallel (ProposerSpec.alone) starts unbatched once the running request is done, and the
    request after it waits for it, though the batch has room for all three."""
    engine = GatedEngine(capabilities=frozenset({BATCH}), n_ctx=64)
    scheduler = Scheduler([engine], max_queue=8, metrics=Metrics(), max_batch=3)
    scheduler.start()
    try:
        first, alone, last = job(loop, 0), job(loop, 1, method="parallel"), job(loop, 2)
        for j in (first, alone, last):
            scheduler.submit(j)
        until(lambda: scheduler.running == 1 and scheduler.waiting == 2)
        engine.gate.set()
        for j in (first, alone, last):
            assert [type(e).__name__ for e in events(loop, j)] == ["Started", "Piece", "Finished"]
        assert engine.started == [0, 1, 2] and engine.batched == [True, False, True]
        assert max(engine.batch_sizes) == 1
    finally:
        engine.gate.set()
        scheduler.stop()


def test_the_jobs_of_one_request_are_queued_all_or_none(loop):
    """A request's n choices are submitted together: refused whole when the queue cannot take
    them all, never half queued."""
    engine = GatedEngine()
    scheduler = Scheduler([engine], max_queue=2, metrics=Metrics())
    scheduler.start()
    try:
        scheduler.submit(job(loop, 1))
        until(lambda: scheduler.running == 1)
        with pytest.raises(APIError) as refused:
            scheduler.submit(job(loop, 2), job(loop, 3), job(loop, 4))
        assert refused.value.status == 503 and scheduler.waiting == 0
        queue: asyncio.Queue = asyncio.Queue()
        pair = [Job(job(loop, seed).request, timeout_s=30, loop=loop, events=queue, index=i)
                for i, seed in enumerate((5, 6))]
        scheduler.submit(*pair)
        engine.gate.set()

        async def drain():
            finished = set()
            while len(finished) < 2:
                index, event = await asyncio.wait_for(queue.get(), 5)
                if isinstance(event, Finished):
                    finished.add(index)
            return finished

        assert loop.run_until_complete(drain()) == {0, 1}  # both report into the shared queue, by index
        assert engine.started == [1, 5, 6]
    finally:
        engine.gate.set()
        scheduler.stop()


class BrokenEngine(GatedEngine):
    """A stand-in whose worker start-up fails (``clear_caches`` raises), or whose ``start`` raises
    a bug's exception (not a QuickdraftError) for the seeds in ``bad_seeds``."""

    def __init__(self, *, broken_start_up: bool = False, bad_seeds=(), **kwargs) -> None:
        super().__init__(**kwargs)
        self.broken_start_up, self.bad_seeds = broken_start_up, set(bad_seeds)

    def clear_caches(self) -> None:
        if self.broken_start_up:
            raise RuntimeError("a bug in start-up")

    def start(self, request: Request, *, batched: bool = False) -> GatedGeneration:
        if request.sampling.seed in self.bad_seeds:
            raise KeyError("a bug in start")
        return super().start(request, batched=batched)


def failure(loop, j: Job) -> APIError:
    async def first():
        return (await asyncio.wait_for(j.events.get(), 5))[1]

    event = loop.run_until_complete(first())
    assert type(event).__name__ == "Failed", event
    return event.error


def test_a_request_that_cannot_start_gets_a_500_and_the_worker_serves_the_next(loop):
    engine = BrokenEngine(bad_seeds={1})
    scheduler = Scheduler([engine], max_queue=4, metrics=Metrics())
    scheduler.start()
    try:
        bad, good = job(loop, 1), job(loop, 2)
        scheduler.submit(bad, good)
        assert failure(loop, bad).status == 500
        engine.gate.set()
        assert [type(e).__name__ for e in events(loop, good)] == ["Started", "Piece", "Finished"]
        assert scheduler.failed == 0
    finally:
        engine.gate.set()
        scheduler.stop()


def test_a_worker_that_fails_outside_a_step_fails_its_requests_at_once_instead_of_leaving_them_waiting(loop):
    """The waiting request gets a 503 as soon as the only engine is lost (not its timeout), later
    requests are refused with the same error, and a replica that still works keeps serving."""
    engine = BrokenEngine(broken_start_up=True, capabilities=frozenset({BATCH}))
    scheduler = Scheduler([engine], max_queue=4, metrics=Metrics())
    waiting = job(loop, 1)
    scheduler.submit(waiting)
    scheduler.start()
    try:
        error = failure(loop, waiting)
        assert (error.status, error.code) == (503, "engine_failed")
        assert scheduler.failed == 1 and scheduler.waiting == 0 and scheduler.running == 0
        with pytest.raises(APIError) as refused:
            scheduler.submit(job(loop, 2))
        assert refused.value.code == "engine_failed"
    finally:
        scheduler.stop()

    healthy = GatedEngine()
    scheduler = Scheduler([BrokenEngine(broken_start_up=True, capabilities=frozenset({BATCH})), healthy],
                          max_queue=4, metrics=Metrics())
    scheduler.start()
    try:
        until(lambda: scheduler.failed == 1)
        jobs = [job(loop, seed) for seed in (3, 4)]
        scheduler.submit(*jobs)
        healthy.gate.set()
        for j in jobs:
            assert [type(e).__name__ for e in events(loop, j)] == ["Started", "Piece", "Finished"]
        assert healthy.started == [3, 4]
    finally:
        healthy.gate.set()
        scheduler.stop()
