"""Helpers for the server tests: run a real uvicorn server in a thread, build engines, read metrics."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families

import quickdraft
from quickdraft.proposers import METHODS, ProposerSpec, Registry
from quickdraft.proposers.ar import NoProposer
from quickdraft.records import Draft

MODEL = "tiny-test"
SLOW = "test-slow"  # see slow_engine


class SlowProposer(NoProposer):
    """Plain decoding that takes ``STEP_S`` per token."""

    STEP_S = 0.01

    def propose(self, context, budget, sampling, rng) -> Draft:
        time.sleep(self.STEP_S)
        return Draft()


def make_engine(tiny_pair, n_ctx: int = 512, method: str = "draft", **kwargs):
    """The engine a test server runs, and (built the same way) the reference its output must equal.
    ``precise`` (F32 KV cache, no flash attention), so prefix reuse cannot flip a near-tie.
    One thread: on a busy 2-core machine llama.cpp's spinning thread pools otherwise stall each
    other (target, draft, the event loop and the test client all want a core)."""
    target, draft = tiny_pair
    return quickdraft.load(str(target), str(draft), chat=True, n_ctx=n_ctx, n_threads=1,
                          method=method, precise=True, **kwargs)


def slow_engine(tiny_pair, n_ctx: int = 2048):
    """An engine whose default method ``test-slow`` takes 10 ms per token, so a long generation is
    long on any machine: the tests of disconnects, timeouts and the queue act on it while it runs.
    The method lives in this engine's own copy of the registry (other tests list the real one)."""
    methods = Registry([*METHODS, ProposerSpec(SLOW, "plain decoding, 10 ms a token",
                                               make=lambda resources, memory, options: SlowProposer(),
                                               default_budget=1)])
    return make_engine(tiny_pair, n_ctx=n_ctx, method=SLOW, methods=methods)


@contextmanager
def running(app) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) until the block ends; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def wait_idle(base_url: str, headers: dict | None = None, timeout_s: float = 15.0) -> None:
    """Until the server has nothing queued or running (between tests that leave work behind)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = httpx.get(f"{base_url}/health", headers=headers).json()
        if health["queue_length"] == 0 and health["running"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"server still busy after {timeout_s} s: {health}")


def scrape(base_url: str, headers: dict | None = None) -> dict[tuple, float]:
    """Every sample of /metrics (parsed by prometheus_client): {(name, sorted labels): value}."""
    text = httpx.get(f"{base_url}/metrics", headers=headers).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)
