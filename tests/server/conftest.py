"""Fixtures for the server tests: real servers on the tiny models (see serverutil.py)."""

from __future__ import annotations

from typing import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")

from quickdraft.server import create_app  # noqa: E402
from serverutil import MODEL, make_engine, running  # noqa: E402


@pytest.fixture(scope="session")
def reference_engine(tiny_pair):
    """Generates what the server must answer (never used by a server)."""
    return make_engine(tiny_pair)


@pytest.fixture(scope="session")
def server(tiny_pair) -> Iterator[str]:
    """The main server: no API key, room for 16 waiting requests."""
    with running(create_app(make_engine(tiny_pair), MODEL, max_queue=16, timeout_s=60)) as url:
        yield url


@pytest.fixture()
def client(server):
    from openai import OpenAI

    with OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c
