"""The server on a tiny torch model: the same API, with the torch-only method per request."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from quickdraft import Engine  # noqa: E402
from quickdraft.backends.torch_hf import TorchBackend  # noqa: E402
from quickdraft.server import create_app  # noqa: E402
from quickdraft.testing_torch import make_tiny_hf_pair  # noqa: E402
from serverutil import running  # noqa: E402


def test_chat_completion_from_a_torch_backend(tmp_path):
    from openai import OpenAI

    target, draft = make_tiny_hf_pair(tmp_path, n_layer=4)
    engine = Engine(TorchBackend(target, dtype="float32", n_threads=1), method="draft", draft=str(draft),
                    skip_layers=[2])
    messages = [{"role": "user", "content": "def add(a, b):"}]
    expected = engine.generate(messages, max_tokens=12, method="ar").text
    with running(create_app(engine, "tiny-torch", max_queue=4, timeout_s=60)) as url:
        with OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
            for method in ("draft", "layerskip"):
                reply = client.chat.completions.create(model="tiny-torch", messages=messages, max_tokens=12,
                                                       temperature=0, extra_body={"speculative": {"method": method}})
                assert reply.choices[0].message.content == expected
                assert reply.model_extra["speculative"]["method"] == method
