"""Chat templates: Hugging Face style Jinja templates, rendered the same way for every backend."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Sequence

import jinja2.sandbox

from .errors import QuickdraftError


def _raise_exception(message: str):
    raise QuickdraftError(f"chat template: {message}", param="messages")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    """Templates' ``tojson`` as Hugging Face renders it (json.dumps, non-ASCII kept, keys in their
    order): Jinja's own escapes ``<``, ``>``, ``&`` and ``'`` for HTML and sorts the keys, which is
    not what a model saw when it learned its tools and tool calls."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compiled(template: str) -> jinja2.Template:
    """A template compiled once per process (compiling costs ~10 ms, rendering well under one)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    return env.from_string(template, globals={"raise_exception": _raise_exception})


def render_chat(template: str, messages: list[dict], *, bos: str, eos: str, tools: Sequence[dict] | None = None) -> str:
    """Apply a Hugging Face style Jinja chat template to ``messages``, opening the assistant's turn.

    ``bos``/``eos``: how the model's control tokens are written (the template may use them).
    ``tools``: OpenAI tool definitions (``{"type": "function", "function": {...}}``), which a
    template that knows tools renders into the prompt (None or empty: none).
    Example: a ChatML template with ``[{"role": "user", "content": "hi"}]`` renders
    ``<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n``.
    """
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise QuickdraftError(f"a chat message needs 'role' and 'content', got {m!r}", param="messages")
    return _compiled(template).render(messages=messages, tools=list(tools) if tools else None,
                                      add_generation_prompt=True, bos_token=bos, eos_token=eos)
