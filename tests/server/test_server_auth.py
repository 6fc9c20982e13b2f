"""With an API key, every endpoint but /health needs ``Authorization: Bearer KEY``."""

from __future__ import annotations

import httpx
import openai
import pytest

from quickdraft.server import create_app
from serverutil import MODEL, make_engine, running

KEY = "s3cret-test-key"


@pytest.fixture(scope="module")
def server(tiny_pair):
    with running(create_app(make_engine(tiny_pair), MODEL, api_key=KEY)) as url:
        yield url


def client(server, key):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.mark.parametrize("method,path", [("GET", "/v1/models"), ("GET", "/metrics"),
                                         ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
                                         ("GET", "/no/such/path")])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}],
                         ids=["none", "wrong", "not-bearer"])
def test_every_endpoint_needs_the_key(server, method, path, headers):
    response = httpx.request(method, f"{server}{path}", headers=headers,
                             json={"model": MODEL, "prompt": "hi", "max_tokens": 2} if method == "POST" else None)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key" and "Authorization: Bearer" in error["message"]


def test_health_is_open(server):
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_the_openai_client_with_the_right_key_works_and_a_wrong_one_is_refused(server):
    with client(server, KEY) as good:
        assert [m.id for m in good.models.list().data] == [MODEL]
        reply = good.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=4)
        assert reply.usage.completion_tokens > 0
    with client(server, "wrong") as bad, pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    metrics = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert metrics.status_code == 200 and "quickdraft_errors_total" in metrics.text
