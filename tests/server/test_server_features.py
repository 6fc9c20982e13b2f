"""What OpenAI clients send beyond the basics, through the real ``openai`` client, streamed and
not: ``n`` choices, ``logprobs``/``top_logprobs``, ``presence_penalty``/``frequency_penalty``/
``logit_bias``. Each answer equals what the engine computes, and plain decoding's (``ar``)."""

from __future__ import annotations

import math

import pytest

from serverutil import MODEL

MESSAGES = [{"role": "user", "content": "hello world hello world"}]
PENALTIES = dict(frequency_penalty=1.5, presence_penalty=0.5)


def chat_stream(client, **options) -> dict[int, dict]:
    """Per choice index: its streamed text, logprob entries and finish reason."""
    out: dict[int, dict] = {}
    for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **options):
        for choice in chunk.choices:
            mine = out.setdefault(choice.index, {"text": "", "logprobs": [], "finish_reason": None})
            mine["text"] += choice.delta.content or ""
            mine["logprobs"] += choice.logprobs.content if choice.logprobs else []
            mine["finish_reason"] = choice.finish_reason or mine["finish_reason"]
    return out


# --- penalties and logit_bias -------------------------------------------------------------------

@pytest.mark.parametrize("method", ["draft", "ngram", "auto"])
def test_penalized_greedy_answers_are_plain_decodings(client, reference_engine, method):
    bias = {"300": 5.0, "658": -100.0}
    plain = reference_engine.generate(MESSAGES, max_tokens=32, temperature=0, method="ar", **PENALTIES,
                                      logit_bias=bias)
    assert plain.text != reference_engine.generate(MESSAGES, max_tokens=32, temperature=0, method="ar").text
    options = dict(max_tokens=32, temperature=0, logit_bias=bias, extra_body={"speculative": {"method": method}},
                   **PENALTIES)
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, **options)
    assert reply.choices[0].message.content == plain.text
    assert chat_stream(client, **options)[0]["text"] == plain.text
    text = client.completions.create(model=MODEL, prompt="def main(): return", **options)
    assert text.choices[0].text == reference_engine.generate("def main(): return", chat=False, max_tokens=32,
                                                             temperature=0, method="ar", **PENALTIES,
                                                             logit_bias=bias).text


# --- logprobs -----------------------------------------------------------------------------------

def test_chat_logprobs_are_plain_decodings_with_their_bytes(client, reference_engine):
    plain = reference_engine.generate(MESSAGES, max_tokens=24, temperature=0, method="ar", logprobs=3,
                                      frequency_penalty=0.5)
    options = dict(max_tokens=24, temperature=0, logprobs=True, top_logprobs=3, frequency_penalty=0.5)
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, **options)
    content = reply.choices[0].logprobs.content
    streamed = chat_stream(client, **options)[0]["logprobs"]
    token_bytes = reference_engine.target.token_bytes
    assert reply.model_extra["speculative"]["accepted_tokens"] > 0  # drafted tokens' logprobs are among them
    for entries in (content, streamed):
        assert len(entries) == len(plain.token_ids) == reply.usage.completion_tokens
        for entry, expected in zip(entries, plain.logprobs):
            assert bytes(entry.bytes) == token_bytes(expected.token)
            assert entry.token == token_bytes(expected.token).decode("utf-8", errors="replace")
            assert abs(entry.logprob - expected.logprob) < 1e-4
            got = [(bytes(t.bytes), t.logprob) for t in entry.top_logprobs]
            assert same_top(got, [(token_bytes(t), lp) for t, lp in expected.top]), (got, expected.top)
    assert "".join(e.token for e in content) == reply.choices[0].message.content


def same_top(got: list[tuple[bytes, float]], expected: list[tuple[bytes, float]], tol: float = 1e-4) -> bool:
    """The top alternatives are plain decoding's: the same log-probabilities in order (within
    ``tol``), and every expected token among them unless it is near-tied with the cut (the
    verification forward computes rows in other shapes than plain decoding's, so alternatives
    within numeric noise of each other may trade places there)."""
    if len(got) != len(expected) or any(abs(g - e) >= tol for (_, g), (_, e) in zip(got, expected)):
        return False
    cut = expected[-1][1] if expected else 0.0
    return {t for t, lp in expected if lp - cut >= tol} <= {t for t, _ in got}


def test_same_top_allows_only_near_ties_to_trade_places():
    expected = [(b"a", -0.1), (b"b", -2.0), (b"c", -3.0)]
    assert same_top(expected, expected)
    assert same_top([(b"a", -0.1), (b"b", -2.0), (b"d", -3.00001)], expected)  # a near-tie at the cut
    assert not same_top([(b"a", -0.1), (b"d", -2.0), (b"c", -3.0)], expected)  # b is missing, clear of the cut
    assert not same_top([(b"a", -0.1), (b"b", -2.0), (b"c", -3.1)], expected)  # a log-probability differs


def test_completion_logprobs_in_openais_legacy_format(client, reference_engine):
    plain = reference_engine.generate("def main(): return", chat=False, max_tokens=16, temperature=0, method="ar",
                                      logprobs=2)
    options = dict(model=MODEL, prompt="def main(): return", max_tokens=16, temperature=0, logprobs=2)
    reply = client.completions.create(**options)
    logprobs = reply.choices[0].logprobs
    assert "".join(logprobs.tokens) == reply.choices[0].text == plain.text
    assert all(abs(a - b.logprob) < 1e-4 for a, b in zip(logprobs.token_logprobs, plain.logprobs))
    assert all(len(top) in (2, 3) and top[token] == lp  # the two most likely, and the chosen one
               for top, token, lp in zip(logprobs.top_logprobs, logprobs.tokens, logprobs.token_logprobs))
    assert logprobs.text_offset == [sum(map(len, logprobs.tokens[:i])) for i in range(len(logprobs.tokens))]
    chunks = [c.choices[0] for c in client.completions.create(stream=True, **options)]
    streamed = [lp for c in chunks if c.logprobs for lp in c.logprobs.token_logprobs]
    # the second request reuses the first's prompt cells beside other finished sequences' cells: another
    # cache layout, sums in another order (the precise models agree to ~1e-5 across shapes)
    assert streamed == pytest.approx(logprobs.token_logprobs, abs=1e-5)
    assert [o for c in chunks if c.logprobs for o in c.logprobs.text_offset] == logprobs.text_offset


def test_no_logprobs_unless_asked(client):
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0)
    assert reply.choices[0].logprobs is None


# --- n choices ----------------------------------------------------------------------------------

def test_greedy_choices_are_equal_and_usage_sums_them(client, reference_engine):
    expected = reference_engine.generate(MESSAGES, max_tokens=20, temperature=0)
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert {c.message.content for c in reply.choices} == {expected.text}
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == 3 * len(expected.token_ids)
    streamed = chat_stream(client, max_tokens=20, temperature=0, n=3, stream_options={"include_usage": True})
    assert sorted(streamed) == [0, 1, 2] and {s["text"] for s in streamed.values()} == {expected.text}


def test_sampled_choices_are_seeded_seed_plus_index(client, reference_engine):
    options = dict(max_tokens=16, temperature=1.0, seed=40, frequency_penalty=0.5)
    expected = [reference_engine.generate(MESSAGES, top_k=5, **{**options, "seed": 40 + i}).text for i in range(4)]
    assert len(set(expected)) > 1
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=4, logprobs=True, top_logprobs=1,
                                           extra_body={"top_k": 5}, **options)
    assert [c.message.content for c in reply.choices] == expected
    assert reply.usage.completion_tokens == sum(len(c.logprobs.content) for c in reply.choices)
    streamed = chat_stream(client, n=4, extra_body={"top_k": 5}, **options)
    assert [streamed[i]["text"] for i in range(4)] == expected
    assert all(streamed[i]["finish_reason"] in ("stop", "length") for i in range(4))
    text = client.completions.create(model=MODEL, prompt="the quick brown fox", n=2, max_tokens=8, temperature=1.0,
                                     seed=3)
    assert [c.text for c in text.choices] == [reference_engine.generate("the quick brown fox", chat=False,
                                                                        max_tokens=8, temperature=1.0, seed=s).text
                                              for s in (3, 4)]


def test_logprobs_are_finite_log_probabilities(client):
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0.7, seed=1,
                                           logprobs=True, top_logprobs=5)
    for entry in reply.choices[0].logprobs.content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert all(math.isfinite(lp) and lp <= 0 for lp in [entry.logprob, *tops])
        assert math.fsum(math.exp(lp) for lp in tops) <= 1 + 1e-6
