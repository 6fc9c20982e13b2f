"""Penalties, logit_bias and log-probabilities under speculation, on the tiny llama.cpp models.

Lossless with respect to the penalized distribution: greedy speculative output equals plain
greedy output under the same penalties and bias, token for token, for every method; plain
decoding itself equals a reference written out here (one-token forwards, OpenAI's formula); the
sampled distribution is the penalized target's (chi-square), and a verification that forgets the
draft tokens before a row (the classic mistake) is caught by the same test. Log-probabilities of
accepted draft tokens are the ones plain decoding computes.
"""

import numpy as np
import pytest
from distributions import chi_square_pvalue, penalized_row, sampled_pairs_counts, two_token_distribution
from test_engine_tiny import PROMPTS, SPECULATIVE, simulated_engine

import quickdraft.verifiers
from quickdraft.errors import InvalidParameterError
from quickdraft.sampling import SamplingParams, penalize

# Each changes the greedy output of some of PROMPTS (token 658 is one the tiny target repeats).
PENALTIES = [dict(frequency_penalty=2.0), dict(presence_penalty=2.0, frequency_penalty=-0.5),
             dict(presence_penalty=-1.0, logit_bias={658: -100.0, 300: 4.0})]


def plain_reference(target, prompt: list[int], n: int, **penalties) -> tuple[list[int], list[float]]:
    """Greedy decoding one token per forward, penalized by the test's own formula: the tokens and
    each one's log-probability (softmax of the penalized row)."""
    tokens, logprobs = [], []
    target.prefill(prompt[:-1])
    row = target.forward(prompt[-1:])[0]
    for _ in range(n):
        logits = penalized_row(row, tokens, **penalties)
        token = int(np.argmax(logits))
        tokens.append(token)
        logprobs.append(float(logits[token] - np.logaddexp.reduce(logits)))
        row = target.forward([token])[0]
    return tokens, logprobs


@pytest.mark.parametrize("penalties", PENALTIES, ids=["frequency", "presence", "bias"])
def test_plain_decoding_applies_penalties_as_openai_defines_them(tiny_engine, penalties):
    changed = 0
    for text in PROMPTS:
        prompt = tiny_engine.prompt_tokens(text)
        expected, expected_logprobs = plain_reference(tiny_engine.target, prompt, 24, **penalties)
        plain = tiny_engine.generate(prompt, max_tokens=24, method="ar", logprobs=0, **penalties)
        assert plain.token_ids == expected
        assert np.allclose([lp.logprob for lp in plain.logprobs], expected_logprobs, atol=1e-4)
        changed += tiny_engine.generate(prompt, max_tokens=24, method="ar").token_ids != expected
    assert changed, "the penalties change no output here: the tests would be blind"


@pytest.mark.parametrize("method", SPECULATIVE)
@pytest.mark.parametrize("penalties", PENALTIES, ids=["frequency", "presence", "bias"])
def test_greedy_speculative_equals_plain_under_the_same_penalties(tiny_engine, method, penalties):
    engine = simulated_engine(tiny_engine)  # timings that let auto draft on the tiny models
    drafted = accepted = 0
    for prompt in PROMPTS:
        ar = tiny_engine.generate(prompt, max_tokens=40, method="ar", **penalties)
        spec = engine.generate(prompt, max_tokens=40, method=method, num_draft=4, **penalties)
        assert spec.token_ids == ar.token_ids, (method, prompt)
        drafted += spec.stats["drafted_tokens"]
        accepted += spec.stats["accepted_tokens"]
    assert drafted > 0 and accepted > 0, f"{method} never had a draft accepted: verification not exercised"


@pytest.mark.parametrize("method", ["draft", "ngram", "draft-tree", "auto"])
def test_logprobs_of_accepted_draft_tokens_are_plain_decodings(tiny_engine, method):
    engine = simulated_engine(tiny_engine)
    from_draft = 0
    for prompt in PROMPTS:
        ar = tiny_engine.generate(prompt, max_tokens=32, method="ar", logprobs=3, frequency_penalty=0.5)
        stream = engine.stream(prompt, max_tokens=32, method=method, num_draft=4, logprobs=3,
                                    frequency_penalty=0.5)
        pieces = list(stream)
        spec = stream.result
        assert spec.token_ids == ar.token_ids
        assert [lp for p in pieces for lp in p.logprobs] == spec.logprobs  # the stream's are the result's
        for mine, plain in zip(spec.logprobs, ar.logprobs):
            assert mine.token == plain.token
            assert abs(mine.logprob - plain.logprob) < 1e-4
            assert [t for t, _ in mine.top] == [t for t, _ in plain.top]
            assert np.allclose([lp for _, lp in mine.top], [lp for _, lp in plain.top], atol=1e-4)
        from_draft += sum(f for p in pieces for f in p.from_draft)
    assert from_draft > 0, f"{method} had no draft token accepted: nothing compared"


def test_no_logprobs_unless_asked(tiny_engine):
    result = tiny_engine.generate(PROMPTS[0], max_tokens=8)
    assert result.logprobs is None and "logprobs" not in result.to_dict()
    pieces = list(tiny_engine.stream(PROMPTS[0], max_tokens=8))
    assert all(p.logprobs is None for p in pieces)


@pytest.mark.parametrize("kwargs, param", [
    (dict(presence_penalty=3.0), "presence_penalty"), (dict(frequency_penalty=-2.5), "frequency_penalty"),
    (dict(logit_bias={10**6: 1.0}), "logit_bias"), (dict(logit_bias={"x": 1.0}), "logit_bias"),
    (dict(logit_bias={5: 150.0}), "logit_bias"), (dict(logprobs=21), "logprobs"), (dict(logprobs=-1), "logprobs")])
def test_bad_penalties_and_logprobs_name_the_parameter(tiny_engine, kwargs, param):
    with pytest.raises(InvalidParameterError) as error:
        tiny_engine.prepare("hello", **kwargs)
    assert error.value.param == param


def forgetful_penalize(logits, generated, before, params):
    """A wrong verification: every row penalized as if no draft token came before it."""
    return penalize(logits, generated, [()] * len(before), params)


SAMPLED_PENALTIES = dict(frequency_penalty=2.0, presence_penalty=2.0)
DRAWS = 1500


def sampled_pairs(tiny_engine, method: str) -> tuple[dict, dict, int, int]:
    """(exact, counts, drafted, accepted): the first two tokens' exact penalized distribution
    (top-k 3), and the counts of DRAWS seeded speculative generations.

    The prompt ends where the tiny target goes on with a word it then repeats (" prin" -> " lamb
    lamb", the repeat 3 times in 4 unpenalized, 1 in 20 penalized), so the penalty of the first
    token weighs on the second, which a draft often covers in the same step."""
    params = SamplingParams(temperature=1.0, top_k=3)
    start = tiny_engine.target.tokenize("hello world hello world hello", special=False)
    prompt = start + tiny_engine.generate(start, max_tokens=4, method="ar").token_ids
    exact = two_token_distribution(tiny_engine.target, prompt, params,
                                   process=lambda row, generated: penalized_row(row, generated, **SAMPLED_PENALTIES))
    return exact, *sampled_pairs_counts(simulated_engine(tiny_engine), prompt, DRAWS, method=method,
                                        **SAMPLED_PENALTIES)


@pytest.mark.parametrize("method", ["draft", "draft-tree", "auto"])
def test_sampled_output_follows_the_penalized_target_distribution(tiny_engine, method):
    exact, counts, drafted, _ = sampled_pairs(tiny_engine, method)
    assert drafted > DRAWS / 2, "too few drafts: the test would not exercise verification"
    assert chi_square_pvalue(exact, counts, DRAWS) > 1e-3, (counts, exact)


def test_the_distribution_test_catches_penalties_that_forget_the_draft(tiny_engine, monkeypatch):
    """Negative control: the same test, with rows penalized without the draft tokens before them."""
    monkeypatch.setattr(quickdraft.verifiers, "penalize", forgetful_penalize)
    exact, counts, _, accepted = sampled_pairs(tiny_engine, "draft")
    assert accepted > DRAWS / 4
    assert chi_square_pvalue(exact, counts, DRAWS) < 1e-6, (counts, exact)


def test_the_lossless_check_compares_under_the_same_penalties(tiny_engine):
    """check_against_ar with the request's sampling: the penalized answer is exact, and the
    unpenalized answer, which the raw logits prefer, is a real divergence from it."""
    from quickdraft.check import check_against_ar, first_divergence

    prompt = tiny_engine.prompt_tokens(PROMPTS[0])
    request = tiny_engine.prepare(prompt, max_tokens=24, method="ar", **PENALTIES[0])
    penalized = tiny_engine.generate(request).token_ids
    unpenalized = tiny_engine.generate(prompt, max_tokens=24, method="ar").token_ids
    index = first_divergence(unpenalized, penalized)
    assert index is not None
    assert check_against_ar(tiny_engine, prompt, penalized, penalized, request.sampling).kind == "exact"
    verdict = check_against_ar(tiny_engine, prompt, unpenalized, penalized, request.sampling)
    assert verdict.kind == "real divergence" and verdict.index == index and verdict.margin > 0
    assert check_against_ar(tiny_engine, prompt, unpenalized, penalized).margin < 0  # raw logits: the other way
