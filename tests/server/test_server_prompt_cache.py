"""Prompt reuse through the real server and the real openai client: a conversation's second turn
starts from the KV cells of its first (``usage.prompt_tokens_details.cached_tokens``), and its
answer is the answer without reuse (``--no-prompt-cache``)."""

from __future__ import annotations

import pytest

from quickdraft.server import create_app
from serverutil import MODEL, make_engine, running

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def conversation(url: str, stream: bool) -> list[tuple[str, int, int]]:
    """Two turns of one conversation, then the first turn of another; per request: the answer,
    its prompt tokens and the prompt tokens served from the cache."""
    from openai import OpenAI

    out = []
    with OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        def ask(messages):
            if not stream:
                reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
                usage = reply.usage
                out.append((reply.choices[0].message.content, usage.prompt_tokens,
                            usage.prompt_tokens_details.cached_tokens))
                return reply.choices[0].message.content
            text, usage = "", None
            for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0,
                                                        stream=True, stream_options={"include_usage": True}):
                text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
                usage = chunk.usage or usage
            out.append((text, usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens))
            return text

        messages = [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}]
        answer = ask(messages)
        ask([*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": "and then the cat"}])
        ask([{"role": "user", "content": "a different question altogether"}])
    return out


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_second_turn_reuses_the_first_and_answers_as_without_reuse(tiny_pair, stream):
    with running(create_app(make_engine(tiny_pair), MODEL)) as url:
        reused = conversation(url, stream)
    with running(create_app(make_engine(tiny_pair, prompt_cache=False), MODEL)) as url:
        computed = conversation(url, stream)

    assert [(text, prompt) for text, prompt, _ in reused] == [(text, prompt) for text, prompt, _ in computed]
    (_, first, _), (_, second, cached), (_, _, other) = reused
    assert first < cached < second  # the first turn's prompt and (most of) its answer came from the cache
    assert other < first  # another conversation shares only the chat template's opening
    assert all(c == 0 for _, _, c in computed)


def interleaved(url: str) -> list[tuple[str, int, int]]:
    """Conversation A's first turn; then two other users' first turns at once; then A's second
    turn. Per request as in :func:`conversation` (A1, B1 and C1 in some order, A2)."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    with OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        def ask(messages):
            reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
            usage = reply.usage
            return reply.choices[0].message.content, usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens

        first = [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}]
        a1 = ask(first)
        with ThreadPoolExecutor(2) as pool:
            others = list(pool.map(ask, ([{"role": "user", "content": "a different question altogether"}],
                                         [{"role": "user", "content": "and a third one, longer than the others"}])))
        a2 = ask([*first, {"role": "assistant", "content": a1[0]}, {"role": "user", "content": "and then the cat"}])
    return [a1, *others, a2]


def test_a_second_turn_reuses_the_first_after_other_users_requests(tiny_pair):
    """Other conversations served between two turns (at once, sharing the chat template's
    opening) leave the first conversation's cells to its next turn."""
    with running(create_app(make_engine(tiny_pair, n_ctx=2048), MODEL)) as url:
        reused = interleaved(url)
    with running(create_app(make_engine(tiny_pair, n_ctx=2048, prompt_cache=False), MODEL)) as url:
        computed = interleaved(url)

    assert [(text, prompt) for text, prompt, _ in reused] == [(text, prompt) for text, prompt, _ in computed]
    (_, first, _), *_, (_, second, cached) = reused
    assert first < cached < second  # A's first prompt and (most of) its answer came from the cache


def test_no_prompt_cache_is_a_serve_option():
    from typer.testing import CliRunner

    from quickdraft.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert "--no-prompt-cache" in result.output
