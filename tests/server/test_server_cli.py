"""``quickdraft serve``: a real subprocess on the tiny models, driven by the openai client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
from typer.testing import CliRunner

from quickdraft.cli import app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_an_openai_compatible_server(tiny_pair):
    target, draft = tiny_pair
    port = free_port()
    env = {**os.environ, "QUICKDRAFT_API_KEY": "cli-key"}
    proc = subprocess.Popen([sys.executable, "-m", "quickdraft.cli", "serve", "--target", str(target),
                             "--draft", str(draft), "--port", str(port), "--n-ctx", "512", "--threads", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
            name = target.stem  # a path's model name is its file stem
            assert [m.id for m in client.models.list().data] == [name]
            reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=8, temperature=0)
            assert reply.usage.completion_tokens > 0 and reply.model_extra["speculative"]["method"] == "auto"  # the default
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert proc.returncode == 0, output
    assert f"http://127.0.0.1:{port}/v1" in output


def test_serve_reports_an_unknown_method_like_generate(tiny_pair):
    result = CliRunner().invoke(app, ["serve", "--target", str(tiny_pair[0]), "--method", "telepathy"])
    assert result.exit_code == 2 and "unknown method 'telepathy'" in result.output


def test_serve_binds_localhost_by_default():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--api-key" in result.output and "127.0.0.1" in result.output
