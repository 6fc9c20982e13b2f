"""A draft model of another vocabulary on tiny real llama.cpp models (bridge.py): the target's own
greedy output token for token through ``draft`` and ``auto``, alone and batched; sampling that
follows the target's distribution (chi-square, with a negative control); the draft model really
drafts and is accepted; the calibration measures it; what cannot work is refused naming ``draft``."""

import numpy as np
import pytest
from distributions import two_token_distribution
from scipy.stats import chisquare
from test_batching import batched_results
from test_engine_tiny import PROMPTS, SimulatedTime, Timed, auto_sources_while_exact

import quickdraft.proposers.draft_model
from quickdraft import Engine, Memory
from quickdraft.backends.llamacpp import LlamaCppBackend
from quickdraft.errors import VocabularyMismatchError
from quickdraft.records import Draft
from quickdraft.sampling import SamplingParams
from quickdraft.testing import TinyVocab, write_tiny_cross_draft, write_tiny_gguf


@pytest.fixture(scope="module")
def cross_draft(tmp_path_factory):
    """A draft of another vocabulary (the target's plus more words) that often agrees with it."""
    path = write_tiny_cross_draft(tmp_path_factory.mktemp("cross") / "cross-draft.gguf")
    return LlamaCppBackend(path, n_ctx=512, n_batch=64, precise=True)


@pytest.fixture(scope="module")
def cross_engine(tiny_engine, cross_draft):
    return Engine(tiny_engine.target, draft=cross_draft, method="draft", num_draft=4, chat=False,
                  prior=tiny_engine.prior)


def simulated(tiny_engine, draft, **options):
    """An engine whose timings are synthetic (a flat 40 ms verifier, 1 ms draft tokens), so auto's
    choices follow what is accepted, not this machine."""
    clock = SimulatedTime()
    return Engine(Timed(tiny_engine.target, clock, 0.04), draft=Timed(draft, clock, 0.001), chat=False, clock=clock,
                  **options)


def test_the_engine_bridges_a_draft_of_another_vocabulary(cross_engine):
    assert cross_engine.bridge is not None and "tokens in the target" in cross_engine.bridge.difference
    assert cross_engine.describe()["draft_vocabulary"] == "other"


@pytest.mark.parametrize("num_draft", [1, 3, 6])
def test_greedy_draft_of_another_vocabulary_equals_ar_token_for_token(cross_engine, num_draft):
    drafted = accepted = 0
    for prompt in PROMPTS:
        ar = cross_engine.generate(prompt, max_tokens=48, method="ar")
        spec = cross_engine.generate(prompt, max_tokens=48, method="draft", num_draft=num_draft)
        assert spec.token_ids == ar.token_ids and spec.text == ar.text, prompt
        assert spec.stats["target_forwards"] <= ar.stats["target_forwards"]
        drafted += spec.stats["drafted_tokens"]
        accepted += spec.stats["accepted_tokens"]
    assert drafted > 0 and accepted > 0, "the bridged drafts must be drafted and accepted at times"


def test_greedy_auto_with_a_draft_of_another_vocabulary_equals_ar(tiny_engine, cross_draft):
    sources = auto_sources_while_exact(tiny_engine, simulated(tiny_engine, cross_draft))
    assert sources.get("draft", 0) > 3, sources


def test_chat_prompts_cross_with_their_control_tokens(cross_engine):
    """Through the chat template: the draft reads the turns' control tokens as its own (the tiny
    vocabularies share them) and the answer is the target's own."""
    messages = [{"role": "user", "content": "hello world, the quick brown fox"}]
    ar = cross_engine.generate(messages, max_tokens=32, method="ar")
    spec = cross_engine.generate(messages, max_tokens=32, method="draft", num_draft=3)
    assert spec.token_ids == ar.token_ids and spec.stats["drafted_tokens"] > 0
    prompt = cross_engine.prompt_tokens(messages)
    draft_tokens = cross_engine.draft.tokens(prompt)
    assert draft_tokens[:2] == [1, 3]  # the draft's BOS, then <|im_start|> parsed as its control token


def test_batched_requests_with_a_draft_of_another_vocabulary_answer_what_they_answer_alone(cross_engine):
    requests = [("the quick brown fox", dict(method="draft", max_tokens=30, num_draft=3)),
                ("hello world hello world hello", dict(method="auto", max_tokens=25)),
                ("def main(): return", dict(method="draft", max_tokens=20, num_draft=5)),
                ("a b c d e f g", dict(method="ar", max_tokens=20))]
    alone = [cross_engine.generate(p, **o) for p, o in requests]
    cross_engine.memory = Memory()
    together = batched_results(cross_engine, requests, stagger=2)
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    cross_engine.clear_caches()


DRAWS = 1500


def sampled_pairs(tiny_engine, draft) -> tuple[dict, dict, int, int]:
    """(exact, counts, drafted, accepted): the target's exact distribution of the first two
    sampled tokens (top-k 3: 9 pairs) and the counts over DRAWS seeded generations drafted by
    ``draft`` (another vocabulary) with method draft."""
    params = SamplingParams(temperature=1.0, top_k=3)
    prompt = tiny_engine.target.tokenize("hello world hello world hello", special=False)
    exact = two_token_distribution(tiny_engine.target, prompt, params)
    engine = Engine(tiny_engine.target, draft=draft, method="draft", chat=False, prior=tiny_engine.prior)
    counts, drafted, accepted = dict.fromkeys(exact, 0), 0, 0
    for seed in range(DRAWS):
        out = engine.generate(prompt, max_tokens=3, temperature=1.0, top_k=3, seed=seed, num_draft=3)
        counts[tuple(out.token_ids[:2])] += 1
        drafted += out.stats["drafted_tokens"]
        accepted += out.stats["accepted_tokens"]
    return exact, counts, drafted, accepted


def chi_square_pvalue(exact: dict, counts: dict) -> float:
    keys = sorted(exact)
    return chisquare([counts[k] for k in keys], [exact[k] * DRAWS for k in keys]).pvalue


def test_sampled_output_with_a_draft_of_another_vocabulary_follows_the_target_distribution(tiny_engine, cross_draft):
    """The bridged draft is deterministic (a point mass in the target's vocabulary): accepted with
    p(x), else a token from p without x, which keeps p exactly."""
    exact, counts, drafted, accepted = sampled_pairs(tiny_engine, cross_draft)
    assert drafted > DRAWS / 2 and accepted > DRAWS / 4, "the test would not exercise verification"
    assert chi_square_pvalue(exact, counts) > 1e-3, (counts, exact)


def test_the_distribution_test_catches_a_bridged_draft_verified_as_if_sampled(tiny_engine, cross_draft, monkeypatch):
    """Negative control: the same test, with each bridged token verified as if it had been drawn
    from a q giving it 1/2 (what using the draft model's own probability of its token would do):
    accepted with min(1, 2 p(x)), too often."""
    propose = quickdraft.proposers.draft_model.BridgedDraftProposer.propose

    def as_if_sampled(self, context, budget, sampling, rng):
        draft = propose(self, context, budget, sampling, rng)
        vocab = tiny_engine.target.vocab_size
        q = np.full((len(draft), vocab), 0.5 / (vocab - 1))
        q[np.arange(len(draft)), list(draft.tokens)] = 0.5
        return Draft(draft.tokens, q if len(draft) else None)

    monkeypatch.setattr(quickdraft.proposers.draft_model.BridgedDraftProposer, "propose", as_if_sampled)
    exact, counts, _, accepted = sampled_pairs(tiny_engine, cross_draft)
    assert accepted > DRAWS / 4
    assert chi_square_pvalue(exact, counts) < 1e-6, (counts, exact)


def test_the_calibration_measures_a_draft_of_another_vocabulary(tiny_engine, cross_draft):
    from quickdraft.bridge import vocabulary_bridge
    from quickdraft.calibrate import draft_prior

    target = tiny_engine.target
    measured = draft_prior(target, cross_draft, vocabulary_bridge(target, cross_draft))
    assert measured["draft_token"] > 0 and 0 < measured["draft_accept"] <= 1  # one-token drafts along the answers
    assert measured["draft_prefill"] > 0 and measured["draft_ahead"] == ()  # drafting ahead takes no bridge
    assert draft_prior(target, cross_draft, vocabulary_bridge(target, cross_draft)) == measured  # cached


def test_a_method_that_drafts_token_ids_refuses_a_draft_of_another_vocabulary(cross_engine):
    with pytest.raises(VocabularyMismatchError, match="'draft-tree' drafts token ids.*auto, draft") as error:
        cross_engine.prepare("hello", method="draft-tree")
    assert error.value.param == "draft"


@pytest.mark.parametrize("spaced", ["draft", "target"])
def test_a_pair_whose_text_cannot_round_trip_is_refused_naming_draft(tmp_path, tiny_engine, spaced):
    """A tokenizer that puts a space before a text ("hi" comes back " hi") cannot bridge, in either
    model of the pair."""
    path = write_tiny_gguf(tmp_path / "spaced.gguf", vocab=TinyVocab(extra_words=("zebra",)), add_space_prefix=True)
    other = LlamaCppBackend(path, n_ctx=256, n_batch=64)
    target, draft = (tiny_engine.target, other) if spaced == "draft" else (other, tiny_engine.draft_model())
    message = f"the {spaced} spaced.gguf's tokenizer does not give back"
    with pytest.raises(VocabularyMismatchError, match=message) as error:
        Engine(target, draft=draft, method="draft", chat=False).generate("hello", max_tokens=2)
    assert error.value.param == "draft"
