"""Grammar-constrained decoding under speculation, on the tiny llama.cpp models.

Lossless with respect to the constrained distribution: plain constrained decoding equals a
reference written out here (one-token forwards, llguidance's own matcher masking each row); greedy
speculative output equals it token for token for every method; every output is valid against its
schema and ends where the grammar ends; the sampled distribution is the constrained target's
(chi-square), and a verification that masks every row as if no draft token came before it is
caught by the same test. The grammar's forced tokens are auto's ``grammar`` drafts, all accepted.
"""

import json

import jsonschema
import numpy as np
import pytest
from distributions import chi_square_pvalue, sampled_pairs_counts, two_token_distribution
from llguidance import LLMatcher
from test_engine_tiny import PROMPTS, SPECULATIVE, simulated_engine

from quickdraft import Grammar, Memory
from quickdraft.errors import InvalidParameterError
from quickdraft.grammar import Constraint
from quickdraft.proposers.hybrid import AutoProposer
from quickdraft.sampling import SamplingParams

# Bounded everywhere (string lengths, numbers, items), so a random model's answer ends.
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
    "ok": {"type": "boolean"}},
    "required": ["name", "age", "tags", "ok"], "additionalProperties": False}


def reference_mask(vocabulary, grammar: Grammar, generated: list[int]) -> np.ndarray:
    """[V] bool: what the grammar allows after ``generated``, from a fresh llguidance matcher."""
    matcher = LLMatcher(vocabulary.tokenizer, grammar.text, log_level=0)
    assert matcher.consume_tokens(generated)
    bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
    return bits[:vocabulary.size].astype(bool)


def constrained_reference(engine, prompt: list[int], grammar: Grammar, n: int) -> list[int]:
    """Greedy decoding one token per forward, each row masked by the grammar after the tokens so
    far, until the grammar ends (or n tokens)."""
    target, vocabulary, tokens = engine.target, engine.vocabulary(), []
    target.prefill(prompt[:-1])
    row = target.forward(prompt[-1:])[0]
    for _ in range(n):
        mask = reference_mask(vocabulary, grammar, tokens)
        token = int(np.argmax(np.where(mask, row, -np.inf)))
        if target.is_end_of_generation(token):
            break
        tokens.append(token)
        row = target.forward([token])[0]
    return tokens


def test_plain_constrained_decoding_masks_every_row_as_the_grammar_says(tiny_engine):
    grammar = Grammar.json_schema(SCHEMA)
    for text in PROMPTS:
        prompt = tiny_engine.prompt_tokens(text)
        plain = tiny_engine.generate(prompt, max_tokens=80, method="ar", grammar=grammar)
        assert plain.token_ids == constrained_reference(tiny_engine, prompt, grammar, 80)
        jsonschema.validate(json.loads(plain.text), SCHEMA)
        assert plain.finish_reason == "stop"
        assert not plain.text.startswith(tiny_engine.generate(prompt, max_tokens=4, method="ar").text)


@pytest.mark.parametrize("method", SPECULATIVE)
def test_greedy_speculative_equals_constrained_plain_decoding(tiny_engine, method):
    engine = simulated_engine(tiny_engine)  # timings that let auto draft on the tiny models
    grammar = Grammar.json_schema(SCHEMA)
    drafted = accepted = 0
    for prompt in PROMPTS:
        plain = tiny_engine.generate(prompt, max_tokens=80, method="ar", grammar=grammar)
        stream = engine.stream(prompt, max_tokens=80, method=method, num_draft=4, grammar=grammar)
        text = "".join(piece.text for piece in stream)
        spec = stream.result
        assert spec.token_ids == plain.token_ids and text == spec.text == plain.text, (method, prompt)
        jsonschema.validate(json.loads(spec.text), SCHEMA)
        assert spec.finish_reason == "stop"
        drafted += spec.stats["drafted_tokens"]
        accepted += spec.stats["accepted_tokens"]
    assert drafted > 0 and accepted > 0, f"{method} never had a draft accepted: verification not exercised"


def test_auto_drafts_the_forced_tokens_and_every_one_is_accepted(tiny_engine, monkeypatch):
    seen = []  # (source, acceptance) of every step auto drafted, from its own observe
    observe = AutoProposer.observe

    def spy(self, acceptance, times):
        seen.append((self._source, acceptance))
        observe(self, acceptance, times)

    monkeypatch.setattr(AutoProposer, "observe", spy)
    engine = simulated_engine(tiny_engine)
    grammar = Grammar.json_schema(SCHEMA)
    for prompt in PROMPTS:
        for options in ({}, {"temperature": 0.9, "seed": 5}):
            engine.memory = Memory()  # a new user's engine: no earlier answer for suffix drafts to copy
            result = engine.generate(prompt, max_tokens=80, method="auto", grammar=grammar, **options)
            assert result.stats["draft_sources"]["grammar"] >= 2  # {"name": and ", "age": at least
            jsonschema.validate(json.loads(result.text), SCHEMA)
    forced = [a for source, a in seen if source == "grammar"]
    assert forced and all(a.accepted == a.drafted > 0 for a in forced)
    assert sum(a.accepted for a in forced) >= 4 * 2 * len(PROMPTS)


def test_forced_tokens_are_the_only_ones_the_grammar_allows(tiny_engine):
    grammar = Grammar.json_schema(SCHEMA)
    constraint = tiny_engine.vocabulary().constraint(grammar)
    run = constraint.forced(16)
    assert b"".join(tiny_engine.target.token_bytes(t) for t in run) == b'{"name":'
    for i, token in enumerate(run):
        mask = reference_mask(tiny_engine.vocabulary(), grammar, list(run[:i]))
        assert list(np.flatnonzero(mask)) == [token]
    assert constraint.forced(2) == run[:2]
    assert constraint.allowed([()])[0].sum() == 1  # the state did not move


def test_tree_rows_are_masked_after_their_own_paths(tiny_engine):
    """A tree's rows: each node's mask is the grammar's after the path from the root to it; a row
    under a refused token is left unmasked (it is never reached)."""
    grammar = Grammar.lark('start: "ab" /[0-9]/ | "ac" /[a-z]/')
    vocabulary = tiny_engine.vocabulary()
    a, b, c, x = (tiny_engine.target.tokenize(s, special=False)[-1] for s in "abcx")
    constraint = vocabulary.constraint(grammar)
    rows = constraint.allowed([(), (a,), (a, b), (a, c), (x,), (x, a)])
    for row, prefix in zip(rows[:4], [[], [a], [a, b], [a, c]]):
        assert (row == reference_mask(vocabulary, grammar, prefix)).all()
    assert rows[4].all() and rows[5].all()
    assert not np.array_equal(rows[2], rows[3])
    assert (constraint.allowed([()])[0] == rows[0]).all()


def test_logprobs_under_a_grammar_are_plain_decodings(tiny_engine):
    engine = simulated_engine(tiny_engine)
    grammar = Grammar.json_schema(SCHEMA)
    plain = tiny_engine.generate(PROMPTS[0], max_tokens=60, method="ar", grammar=grammar, logprobs=3)
    spec = engine.generate(PROMPTS[0], max_tokens=60, method="auto", grammar=grammar, logprobs=3)
    assert spec.token_ids == plain.token_ids
    for mine, theirs in zip(spec.logprobs, plain.logprobs):
        assert mine.token == theirs.token and abs(mine.logprob - theirs.logprob) < 1e-4
        assert [t for t, _ in mine.top] == [t for t, _ in theirs.top]
        assert all(np.isfinite(lp) for _, lp in mine.top)  # only tokens the grammar allows
    assert plain.logprobs[0].logprob == 0.0 and len(plain.logprobs[0].top) == 1  # '{' is forced


def test_a_grammar_cut_by_max_tokens_ends_on_length(tiny_engine):
    result = tiny_engine.generate(PROMPTS[0], max_tokens=6, method="draft", grammar=Grammar.json_schema(SCHEMA))
    assert result.finish_reason == "length" and result.text.startswith('{"name": "')


def test_requests_with_their_own_grammars_share_steps(tiny_engine):
    engine = simulated_engine(tiny_engine)
    grammars = [Grammar.json_schema(SCHEMA), Grammar.json_object(), None, Grammar.lark('start: /[a-z ]{1,30}/ "."')]
    alone = [engine.generate(p, max_tokens=50, method="auto", grammar=g).token_ids for p, g in zip(PROMPTS, grammars)]
    generations = [engine.start(engine.prepare(p, max_tokens=50, method="auto", grammar=g), batched=True)
                   for p, g in zip(PROMPTS, grammars)]
    with engine.exclusive():
        for g in generations:
            g.prefill()
        while running := [g for g in generations if not g.done]:
            engine.step(running)
    for g in generations:
        engine.release(g)
    assert [g.result().token_ids for g in generations] == alone
    assert generations[1].result().text.startswith("{")  # an object: a random model's keys may not end
    assert generations[3].result().text.endswith(".")


@pytest.mark.parametrize("grammar, message", [
    (lambda: Grammar.json_schema({"type": "foo"}, param="response_format"), "Invalid type"),
    (lambda: Grammar.json_schema({"properties": 5}, param="response_format"), "properties"),
    (lambda: Grammar.json_schema({"type": "string", "pattern": "("}, param="response_format"), "regex"),
    (lambda: Grammar.json_schema("{not json", param="response_format"), "not valid JSON"),
    (lambda: Grammar.json_schema([1, 2], param="response_format"), "is an object"),
    (lambda: Grammar.lark("start: undefined_rule", param="response_format"), "undefined_rule"),
])
def test_bad_grammars_are_refused_naming_their_field(tiny_engine, grammar, message):
    with pytest.raises(InvalidParameterError) as error:
        tiny_engine.prepare("hello", grammar=grammar())
    assert error.value.param == "response_format" and message in str(error.value)


def test_a_grammar_must_be_a_grammar(tiny_engine):
    with pytest.raises(InvalidParameterError) as error:
        tiny_engine.prepare("hello", grammar={"type": "object"})
    assert error.value.param == "grammar"


# --- sampling ----------------------------------------------------------------------------------

# Words and spaces, starting with a letter: the first token may not begin with a space, the
# second may (and, after "hello", the tiny target mostly wants " world"): a verification that
# masks the second row as if it were the first forbids what plain decoding allows there.
WORDS = Grammar.lark("start: /[a-z]+( [a-z]+)*/")
DRAWS = 1500


def sampled_pairs(tiny_engine, method: str) -> tuple[dict, dict, int, int]:
    """(exact, counts, drafted, accepted): the first two tokens' exact constrained distribution
    (top-k 3), and the counts of DRAWS seeded speculative generations under the grammar."""
    params = SamplingParams(temperature=1.0, top_k=3)
    prompt = tiny_engine.target.tokenize("hello world hello world hello", special=False)
    vocabulary = tiny_engine.vocabulary()
    exact = two_token_distribution(tiny_engine.target, prompt, params, process=lambda row, generated: np.where(
        reference_mask(vocabulary, WORDS, generated), row, -np.inf))
    return exact, *sampled_pairs_counts(simulated_engine(tiny_engine), prompt, DRAWS, method=method, grammar=WORDS)


@pytest.mark.parametrize("method", ["draft", "draft-tree", "auto"])
def test_sampled_output_follows_the_constrained_target_distribution(tiny_engine, method):
    exact, counts, drafted, _ = sampled_pairs(tiny_engine, method)
    assert drafted > DRAWS / 2, "too few drafts: the test would not exercise verification"
    assert chi_square_pvalue(exact, counts, DRAWS) > 1e-3, (counts, exact)


def test_the_distribution_test_catches_masks_that_forget_the_draft(tiny_engine, monkeypatch):
    """Negative control: every row masked as if no draft token came before it."""
    allowed = Constraint.allowed
    monkeypatch.setattr(Constraint, "allowed", lambda self, before: allowed(self, [()] * len(before)))
    exact, counts, _, accepted = sampled_pairs(tiny_engine, "draft")
    assert accepted > DRAWS / 4
    assert chi_square_pvalue(exact, counts, DRAWS) < 1e-6, (counts, exact)
