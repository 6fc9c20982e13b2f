"""The target's own low-bit copy as its draft (``draft="self:<type>"``) on the tiny models:
made through the same code path a user's target takes (llama.cpp's quantizer), greedy output
token for token plain decoding's, sampled output the target's distribution.

The tiny models' rows (64 and 128 wide) are too narrow for k-quants and i-quants (256-wide
blocks), so llama.cpp stores those tensors in a fallback type; Q8_0 and Q4_0 (32-wide blocks)
are what they say.
"""

import pytest
from distributions import chi_square_pvalue, sampled_pairs_counts, two_token_distribution

from quickdraft import Engine, models
from quickdraft.backends.llamacpp import LlamaCppBackend
from quickdraft.sampling import SamplingParams
from test_engine_tiny import PROMPTS


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def q8_target(tmp_path_factory, tiny_pair):
    """The tiny target re-quantized to Q8_0 by the self-draft code path: a target kept in 8 bits."""
    return models.ensure_self_draft(tiny_pair[0], models.SELF_DRAFT_TYPES["q8_0"], progress=False,
                                    cache=tmp_path_factory.mktemp("q8"))


def engine_for(target, draft: str, prior, method: str = "draft") -> Engine:
    return Engine(LlamaCppBackend(target, n_ctx=512, n_batch=64, precise=True), method=method, num_draft=4,
                  draft=draft, chat=False, prior=prior)


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
@pytest.mark.parametrize("method", ["draft", "draft-tree", "auto"])
def test_greedy_output_is_plain_decodings(tiny_pair, cache, flat_prior, kind, method):
    engine = engine_for(tiny_pair[0], f"self:{kind}", flat_prior, method)
    accepted = 0
    for prompt in PROMPTS:
        plain = engine.generate(prompt, max_tokens=40, method="ar")
        out = engine.generate(prompt, max_tokens=40)
        assert out.token_ids == plain.token_ids, (kind, method, prompt)
        accepted += out.stats["accepted_tokens"]
    assert method == "auto" or accepted > 40, "the self-draft must be drafting and agreeing"
    assert engine.draft_model().path.parent == cache / "self-drafts"


def test_a_quantized_target_drafts_with_its_own_lower_bit_copy(q8_target, cache, flat_prior):
    """Q8_0 target, Q4_0 self-draft made from it (requantizing a quantized file): exact, and
    drafts are accepted (4-bit rounding moves these random 64-wide models' logits far more than a
    real model's: about 40% of drafted tokens agree)."""
    engine = engine_for(q8_target, "self:q4_0", flat_prior)
    drafted = accepted = 0
    for prompt in PROMPTS:
        plain = engine.generate(prompt, max_tokens=40, method="ar")
        out = engine.generate(prompt, max_tokens=40)
        assert out.token_ids == plain.token_ids, prompt
        drafted, accepted = drafted + out.stats["drafted_tokens"], accepted + out.stats["accepted_tokens"]
    assert accepted / drafted > 0.25
    assert engine.draft_model().vocab_size == engine.target.vocab_size


def test_sampled_output_follows_the_target_distribution(q8_target, cache, flat_prior):
    """The self-draft goes through the same rejection sampling as any draft model: the first two
    sampled tokens follow the target's exact distribution (chi-square, as in test_engine_tiny).
    Negative control: the same counts against the copy's own distribution are rejected, so the
    test tells the target from its low-bit copy."""
    engine = engine_for(q8_target, "self:q4_0", flat_prior)
    params = SamplingParams(temperature=1.0, top_k=3)
    prompt = engine.target.tokenize("hello world hello world hello", special=False)
    exact = two_token_distribution(engine.target, prompt, params)
    draws = 1000
    counts, drafted, _ = sampled_pairs_counts(engine, prompt, draws)
    assert drafted > draws
    assert chi_square_pvalue(exact, counts, draws) > 1e-3
    copys = two_token_distribution(engine.draft_model(), prompt, params)
    assert chi_square_pvalue(copys, counts, draws) < 1e-6
