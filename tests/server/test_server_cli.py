"""``quickdraft serve``: a real subprocess on the tiny models, driven by the openai client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import httpx
import openai
import pytest
from typer.testing import CliRunner

from quickdraft.cli import app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(tiny_pair, *args: str) -> Iterator[tuple[openai.OpenAI, str]]:
    """``quickdraft serve`` on the tiny pair in a subprocess: an openai client and, once it has
    stopped (SIGINT, exit code 0 checked), what it printed."""
    target, draft = tiny_pair
    port = free_port()
    env = {**os.environ, "QUICKDRAFT_API_KEY": "cli-key"}
    proc = subprocess.Popen([sys.executable, "-m", "quickdraft.cli", "serve", "--target", str(target),
                             "--draft", str(draft), "--port", str(port), "--n-ctx", "512", "--threads", "1", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    printed = [""]
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "quickdraft serve did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="cli-key", max_retries=0) as client:
            yield client, printed
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        printed[0] = output
    assert proc.returncode == 0, output
    assert f"http://127.0.0.1:{port}/v1" in output


def ask(client, model: str):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                          temperature=0)


def test_serve_runs_an_openai_compatible_server_named_after_the_file(tiny_pair):
    target = tiny_pair[0]
    with serve(tiny_pair) as (client, printed):
        name = target.name.removesuffix(".gguf")  # a path's model id is its file name without .gguf
        assert [m.id for m in client.models.list().data] == [name]
        reply = ask(client, name)
        assert reply.usage.completion_tokens > 0 and reply.model_extra["speculative"]["method"] == "auto"  # the default
        assert ask(client, target.name).model == name  # the file name with .gguf is accepted too
        with pytest.raises(openai.NotFoundError, match=f"serves '{name}'"):
            ask(client, "tiny-qwen2")
    assert f"serving '{name}'" in printed[0]


@pytest.mark.parametrize("flag", ["--served-model-name", "--model-name"])
def test_serve_under_a_chosen_name(tiny_pair, flag):
    with serve(tiny_pair, flag, "my-model") as (client, _):
        assert [m.id for m in client.models.list().data] == ["my-model"]
        assert ask(client, "my-model").usage.completion_tokens > 0
        with pytest.raises(openai.NotFoundError, match="serves 'my-model'"):
            ask(client, tiny_pair[0].name)


def test_serve_reports_an_unknown_method_like_generate(tiny_pair):
    result = CliRunner().invoke(app, ["serve", "--target", str(tiny_pair[0]), "--method", "telepathy"])
    assert result.exit_code == 2 and "unknown method 'telepathy'" in result.output


def test_serve_binds_localhost_by_default():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--api-key" in result.output and "127.0.0.1" in result.output
