"""Disconnects, timeouts and the bounded queue, on a server with one waiting slot and a short
timeout. Its engine decodes with the test method ``test-slow`` (10 ms per token), so a request
for 1,900 tokens is still running, on any machine, when a test acts on it."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from quickdraft.server import create_app
from serverutil import MODEL, SLOW, make_engine, running, sample, scrape, slow_engine, wait_idle

TIMEOUT_S = 1.5
LONG = dict(model=MODEL, prompt="hello", max_tokens=1900, temperature=0)


@pytest.fixture(scope="module")
def server(tiny_pair):
    app = create_app(slow_engine(tiny_pair), MODEL, max_queue=1, timeout_s=TIMEOUT_S)
    with running(app) as url:
        yield url


@pytest.fixture()
def client(server):
    wait_idle(server)
    with openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def until(condition, timeout_s: float = 5.0) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, "condition not reached"
        time.sleep(0.02)
    return time.monotonic() - start


def health(server) -> dict:
    return httpx.get(f"{server}/health").json()


def test_disconnect_mid_stream_frees_the_engine_at_once(server, client):
    before = scrape(server)
    stream = client.completions.create(stream=True, **LONG)
    assert next(iter(stream)).choices[0].text is not None
    stream.close()  # the client goes away mid-stream
    assert until(lambda: health(server)["running"] == 0) < 1.0  # well before the generation would end
    after = scrape(server)
    assert sample(after, "quickdraft_generations_total", method=SLOW, finish_reason="cancelled") \
        - sample(before, "quickdraft_generations_total", method=SLOW, finish_reason="cancelled") == 1
    generated = (sample(after, "quickdraft_completion_tokens_total", method=SLOW)
                 - sample(before, "quickdraft_completion_tokens_total", method=SLOW))
    assert 0 < generated < 1900
    reply = client.completions.create(model=MODEL, prompt="next request", max_tokens=8, temperature=0)
    assert reply.choices[0].finish_reason in ("length", "stop") and reply.usage.completion_tokens > 0


def test_full_queue_answers_503_at_once(server, client):
    running_stream = client.completions.create(stream=True, **LONG)
    next(iter(running_stream))  # the engine is busy with it
    outcome = []

    def wait_in_queue():
        try:
            outcome.append(client.completions.create(**LONG))
        except openai.APIStatusError as e:
            outcome.append(e.status_code)

    waiting = threading.Thread(target=wait_in_queue)
    waiting.start()  # takes the one waiting slot
    until(lambda: health(server)["queue_length"] == 1)
    start = time.monotonic()
    refused = httpx.post(f"{server}/v1/completions", json={**LONG, "max_tokens": 4})
    assert time.monotonic() - start < 1.0  # answered at once, not after the timeout
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "server_busy"
    running_stream.close()
    waiting.join(10)
    assert outcome == [504]  # it ran once the engine was free, and hit the timeout


def test_a_client_that_gives_up_while_queued_frees_its_slot(server, client):
    running_stream = client.completions.create(stream=True, **LONG)
    next(iter(running_stream))
    with pytest.raises(httpx.ReadTimeout):  # waits in the queue, then disconnects
        httpx.post(f"{server}/v1/completions", json=LONG, timeout=0.3)
    until(lambda: health(server)["queue_length"] == 0, timeout_s=1.0)
    assert health(server)["running"] == 1  # the running stream is untouched
    running_stream.close()


def test_timeout_is_504_or_an_error_event_in_a_stream(server, client):
    start = time.monotonic()
    with pytest.raises(openai.InternalServerError) as excinfo:
        client.completions.create(**LONG)
    assert excinfo.value.status_code == 504 and excinfo.value.body["code"] == "timeout"
    assert TIMEOUT_S <= time.monotonic() - start < TIMEOUT_S + 1.0
    wait_idle(server)
    with pytest.raises(openai.APIError, match="timeout"):
        for _ in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=1900, temperature=0, stream=True):
            pass
    wait_idle(server)
    assert client.completions.create(model=MODEL, prompt="after the timeouts", max_tokens=4).choices


def test_a_server_whose_engine_failed_says_so_at_once_on_health_and_requests(tiny_pair, monkeypatch):
    """The worker's start-up fails (a bug stands in): requests get a 503 naming it at once, not
    their timeout, and /health turns 503 so a load balancer's probe takes the server out."""
    engine = make_engine(tiny_pair, method="ar")

    def broken():
        raise RuntimeError("a bug in start-up")

    monkeypatch.setattr(engine, "clear_caches", broken)
    with running(create_app(engine, MODEL, timeout_s=60)) as url:
        until(lambda: httpx.get(f"{url}/health").status_code == 503)
        assert httpx.get(f"{url}/health").json()["engines_failed"] == 1
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30) as c:
            start = time.monotonic()
            with pytest.raises(openai.APIStatusError) as refused:
                c.completions.create(model=MODEL, prompt="hello", max_tokens=4)
            assert time.monotonic() - start < 5
        assert refused.value.status_code == 503 and refused.value.body["code"] == "engine_failed"
