"""The engine on tiny real llama.cpp models: losslessness, streaming, stopping, rollback."""


import numpy as np
import pytest
from distributions import two_token_distribution
from scipy.stats import chisquare

from quickdraft import Engine, Memory
from quickdraft.backends.llamacpp import LlamaCppBackend
from quickdraft.proposers import METHODS
from quickdraft.sampling import SamplingParams

PROMPTS = ["the quick brown fox", "def main(): return", "hello world hello world hello", "a b c d e f g"]
# every method that runs on the llama.cpp backend (the others declare capabilities it lacks)
SPECULATIVE = [s.name for s in METHODS if s.name != "ar" and s.requires <= LlamaCppBackend.capabilities]


class SimulatedTime:
    """A clock that only moves when a :class:`Timed` backend runs a forward."""

    now = 0.0

    def __call__(self) -> float:
        return self.now


class Timed:
    """A backend whose every forward takes ``step_s`` of simulated time, whatever its size."""

    def __init__(self, backend, clock: SimulatedTime, step_s: float) -> None:
        self._backend, self._clock, self._step_s = backend, clock, step_s

    def __getattr__(self, name):  # everything but the forwards is the backend's own
        return getattr(self._backend, name)

    def forward(self, *args, **kwargs):
        self._clock.now += self._step_s
        return self._backend.forward(*args, **kwargs)

    def forward_tree(self, *args, **kwargs):
        self._clock.now += self._step_s
        return self._backend.forward_tree(*args, **kwargs)

    def extend_tree(self, *args, **kwargs):
        self._clock.now += self._step_s
        return self._backend.extend_tree(*args, **kwargs)

    def forward_batch(self, *args, **kwargs):
        self._clock.now += self._step_s
        return self._backend.forward_batch(*args, **kwargs)


def simulated_engine(tiny_engine):
    """An engine of its own on the tiny pair whose timings are synthetic: a flat verifier of 40 ms
    and 1 ms draft tokens, so budgets follow the acceptance history, not this machine."""
    clock = SimulatedTime()
    return Engine(Timed(tiny_engine.target, clock, 0.04), draft=Timed(tiny_engine.draft_model(), clock, 0.001),
                  chat=False, clock=clock)


@pytest.mark.parametrize("method", SPECULATIVE)
@pytest.mark.parametrize("num_draft", [1, 3, 6])
def test_greedy_speculative_equals_ar_token_for_token(tiny_engine, method, num_draft):
    tiny_engine.memory = Memory()  # a fresh start: auto learns the tiny draft model is as dear as the target
    drafted = 0
    for prompt in PROMPTS:
        ar = tiny_engine.generate(prompt, max_tokens=48, method="ar")
        spec = tiny_engine.generate(prompt, max_tokens=48, method=method, num_draft=num_draft)
        assert spec.token_ids == ar.token_ids, (method, prompt)
        assert spec.text == ar.text
        drafted += spec.stats["drafted_tokens"]
        assert spec.stats["target_forwards"] <= ar.stats["target_forwards"]
    assert drafted > 0, f"{method} never drafted: the test would not exercise verification"


def test_auto_brings_in_the_draft_model_only_when_it_drafts_and_stays_exact(tiny_engine):
    """auto's draft model sees nothing of a request before its first draft (no prefill at the
    start), then catches up in that draft; its drafts, lazily caught up, keep the answer exact."""
    engine = simulated_engine(tiny_engine)
    engine.clear_caches()  # what earlier tests left in the shared backends
    generation = engine.start(engine.prepare(PROMPTS[0], max_tokens=8, method="auto"))
    generation.prefill()
    assert generation.resources.draft.tokens == [] and generation.sequence.tokens
    engine.release(generation)
    sources = auto_sources_while_exact(tiny_engine, engine)
    assert sources.get("draft", 0) > 3, sources


def auto_sources_while_exact(plain, engine) -> dict[str, int]:
    """How many drafts each of auto's sources made on ``engine`` over PROMPTS (twice), whose
    answers must be ``plain``'s plain decoding token for token."""
    sources: dict[str, int] = {}
    for prompt in PROMPTS * 2:
        ar = plain.generate(prompt, max_tokens=48, method="ar")
        spec = engine.generate(prompt, max_tokens=48, method="auto")
        assert spec.token_ids == ar.token_ids, prompt
        for source, n in spec.stats["draft_sources"].items():
            sources[source] = sources.get(source, 0) + n
    return sources


def test_draft_model_drafts_get_accepted(tiny_engine):
    """The fixture pair is correlated, so the draft path is really exercised (accept and reject)."""
    stats = tiny_engine.generate(PROMPTS[0], max_tokens=48, method="draft", num_draft=4).stats
    assert 0 < stats["accepted_tokens"] < stats["drafted_tokens"]
    assert stats["mean_accepted_length"] > 1.0


def test_confidence_stop_drafts_less_and_stays_exact(tiny_engine):
    ar = tiny_engine.generate(PROMPTS[1], max_tokens=40, method="ar")
    full = tiny_engine.generate(PROMPTS[1], max_tokens=40, method="draft", num_draft=6)
    engine = Engine(tiny_engine.target, draft=tiny_engine.draft_model(), method="draft", chat=False, min_confidence=0.9)
    cautious = engine.generate(PROMPTS[1], max_tokens=40, num_draft=6)
    assert cautious.token_ids == ar.token_ids
    assert cautious.stats["drafted_tokens"] < full.stats["drafted_tokens"]


def test_stream_pieces_add_up_and_mark_draft_tokens(tiny_engine):
    stream = tiny_engine.stream(PROMPTS[2], max_tokens=40, method="draft", num_draft=4)
    pieces = list(stream)
    result = stream.result
    assert "".join(p.text for p in pieces) == result.text
    assert [t for p in pieces for t in p.token_ids] == result.token_ids
    assert sum(sum(p.from_draft) for p in pieces) == result.stats["accepted_tokens"]
    assert result.stats["generated_tokens"] == len(result.token_ids) == 40
    assert result.finish_reason == "length"


def test_stop_string_truncates_text_and_stream(tiny_engine):
    full = tiny_engine.generate(PROMPTS[0], max_tokens=40, method="ar").text
    stop = full[10:13]
    assert stop and full.find(stop) >= 10 - len(stop) + 1
    stream = tiny_engine.stream(PROMPTS[0], max_tokens=40, method="draft", stop=[stop])
    streamed = "".join(p.text for p in stream)
    assert stream.result.finish_reason == "stop"
    assert stream.result.text == streamed == full[:full.find(stop)]


def test_rollback_round_trip_gives_the_same_logits(tiny_target_backend):
    b = tiny_target_backend
    tokens = b.tokenize("one two three four five six", special=False)
    b.prefill(tokens[:2])
    first = b.forward(tokens[2:])
    b.rollback(3)
    again = b.forward(tokens[3:])
    assert np.allclose(first[1:], again, atol=1e-4)
    assert b.tokens == tokens


def test_prefill_reuses_the_cached_prefix(tiny_target_backend):
    b = tiny_target_backend
    tokens = b.tokenize("alpha beta gamma delta epsilon", special=False)
    b.prefill([])
    b.prefill(tokens[:-1])
    fresh = b.forward(tokens[-1:])
    b.prefill(tokens[:2] + [tokens[3]])  # diverges at index 2: rolls back to 2, recomputes
    b.prefill(tokens[:-1])
    assert np.allclose(b.forward(tokens[-1:]), fresh, atol=1e-4)


def test_sampling_is_reproducible_with_a_seed(tiny_engine):
    a = tiny_engine.generate(PROMPTS[3], max_tokens=30, temperature=0.8, seed=5, method="draft")
    b = tiny_engine.generate(PROMPTS[3], max_tokens=30, temperature=0.8, seed=5, method="draft")
    assert a.token_ids == b.token_ids


@pytest.mark.parametrize("method, controller", [("draft", "fixed"), ("ngram", "fixed"), ("draft", "adaptive"),
                                                ("auto", "fixed"), ("draft-tree", "fixed"), ("ngram-tree", "fixed")])
def test_sampled_output_follows_the_target_distribution(tiny_engine, method, controller):
    """Joint distribution of the first two tokens, speculative sampling vs the exact target p.

    top-k 3 keeps the support at 9 pairs, which we enumerate exactly from the target's logits.
    A chi-square test over 1500 seeded generations (p-value floor 1e-3, fixed seeds).
    """
    params = SamplingParams(temperature=1.0, top_k=3)
    target = tiny_engine.target
    prompt = target.tokenize("hello world hello world hello", special=False)
    exact = two_token_distribution(target, prompt, params)
    draws = 1500
    counts, drafted, by_draft_model = dict.fromkeys(exact, 0), 0, 0
    # The budgets must follow the acceptance history, not this machine's timings: the adaptive
    # controller and auto (in an engine of their own) see synthetic costs.
    engine = simulated_engine(tiny_engine)
    for seed in range(draws):
        out = engine.generate(prompt, max_tokens=3, temperature=1.0, top_k=3, seed=seed, method=method,
                              num_draft=3, controller=controller)
        counts[tuple(out.token_ids[:2])] += 1
        drafted += out.stats["drafted_tokens"]
        by_draft_model += out.stats.get("draft_sources", {}).get("draft", 0)
    assert drafted > draws / 2, "too few drafts: the test would not exercise verification"
    assert method != "auto" or by_draft_model > draws / 4, "auto's draft model must be exercised too"
    keys = sorted(exact)
    result = chisquare([counts[k] for k in keys], [exact[k] * draws for k in keys])
    assert result.pvalue > 1e-3, (counts, exact)


@pytest.mark.parametrize("prompt, kwargs, message", [
    ([1, 2, 10**6], {}, "outside the vocabulary"),
    ("hello", {"stop": [""]}, "stop strings"),
    ("hello", {"max_tokens": 0}, "max_tokens"),
    ("hello", {"seed": -3, "temperature": 1.0}, "seed"),
])
def test_engine_refuses_bad_requests_clearly(tiny_engine, prompt, kwargs, message):
    from quickdraft.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match=message):
        tiny_engine.generate(prompt, **kwargs)


def test_prefill_with_last_logits_equals_a_separate_forward(tiny_target_backend):
    b = tiny_target_backend
    tokens = b.tokenize("one two three four", special=False)
    b.prefill(tokens[:-1])
    expected = b.forward(tokens[-1:])[0]
    for cached in (tokens, tokens[:2], []):  # fully cached, partly cached, empty cache
        b.prefill(cached)
        assert np.allclose(b.prefill(tokens, last_logits=True), expected, atol=1e-4)
        assert b.tokens == tokens


@pytest.mark.parametrize("method", SPECULATIVE)
def test_adaptive_controller_stays_exact_and_reports_its_decisions(tiny_engine, method):
    for prompt in PROMPTS:
        ar = tiny_engine.generate(prompt, max_tokens=40, method="ar")
        spec = tiny_engine.generate(prompt, max_tokens=40, method=method, controller="adaptive", num_draft=5)
        assert spec.token_ids == ar.token_ids
        lengths = spec.stats["draft_lengths"]
        assert sum(lengths.values()) == spec.stats["target_forwards"]
        assert set(lengths) <= {str(k) for k in range(6)}
        if METHODS[method].decides_budget:  # auto: it chooses (and names the source), the budget is its cap
            # every step but a last one with no room for a draft (the engine skips propose then)
            assert 0 <= spec.stats["target_forwards"] - sum(spec.stats["draft_sources"].values()) <= 1


def test_the_engine_memory_keeps_one_adaptive_controller_per_method(tiny_engine):
    tiny_engine.memory = Memory()
    tiny_engine.generate(PROMPTS[0], max_tokens=8, method="ngram", controller="adaptive", num_draft=3)
    first = tiny_engine.memory.get(("controller", "adaptive", "ngram", 3), lambda: None)
    tiny_engine.generate(PROMPTS[1], max_tokens=8, method="ngram", controller="adaptive", num_draft=3)
    assert first is not None and tiny_engine.memory.get(("controller", "adaptive", "ngram", 3), lambda: None) is first


def test_one_stream_at_a_time_per_engine(tiny_engine):
    from quickdraft.errors import EngineBusyError

    first = iter(tiny_engine.stream(PROMPTS[0], max_tokens=8, method="ar"))
    next(first)
    with pytest.raises(EngineBusyError, match="already generating"):
        tiny_engine.generate(PROMPTS[1], max_tokens=4)
    first.close()  # an abandoned stream frees the engine
    assert tiny_engine.generate(PROMPTS[1], max_tokens=4).token_ids


def test_the_check_certifies_exact_output_and_catches_a_forged_divergence(tiny_engine):
    """check_against_ar on the tiny models: the measured spread is tiny (F32 cache), so a token the
    target did not prefer is a real divergence, even after the witness search over every shape."""
    from quickdraft.check import check_against_ar

    prompt = tiny_engine.prompt_tokens(PROMPTS[1])
    ar = tiny_engine.generate(prompt, max_tokens=12, method="ar").token_ids
    assert check_against_ar(tiny_engine, prompt, ar, ar).kind == "exact"
    tiny_engine.target.prefill(prompt[:-1])
    row = tiny_engine.target.forward(prompt[-1:])[0]
    forged = [int(np.argsort(row)[-2]), *ar[1:]]  # the target's second choice at the first token
    verdict = check_against_ar(tiny_engine, prompt, forged, ar)
    assert verdict.kind == "real divergence" and verdict.index == 0 and verdict.witness is None
    assert 0 <= verdict.tolerance < 1e-2 < verdict.margin


def test_a_warmed_up_engine_holds_nothing_and_answers_as_before(tiny_engine):
    """warm_up runs both models and forgets what they saw (the server does it before it answers)."""
    before = tiny_engine.generate(PROMPTS[1], max_tokens=24, method="draft").token_ids
    assert tiny_engine.target.tokens  # the answer's cells stay for the next prompt to reuse
    tiny_engine.warm_up()
    assert tiny_engine.target.tokens == [] and tiny_engine.draft_model().tokens == []
    assert tiny_engine.generate(PROMPTS[1], max_tokens=24, method="draft").token_ids == before
