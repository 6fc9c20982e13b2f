"""Lookahead decoding: its pure parts, the branch riding in the forward without touching the
draft's rows, and sampled output distributed exactly as the target's (with a negative control).
Greedy output equal to plain decoding is checked with every method in test_engine_tiny.py."""

import numpy as np
import pytest
from distributions import two_token_distribution
from scipy.stats import chisquare

import quickdraft.verifiers
from quickdraft import Engine
from quickdraft.control import Prior
from quickdraft.proposers import METHODS, ProposerSpec, Registry
from quickdraft.proposers.lookahead import LookaheadOptions, LookaheadProposer, NgramPool, branch, jacobi_step
from quickdraft.records import Acceptance
from quickdraft.sampling import SamplingParams, sample, warp
from quickdraft.tree import check_parents, layout

FLAT = [1.0 + 0.05 * k for k in range(17)]


def test_the_pool_keeps_the_newest_distinct_ngrams():
    pool = NgramPool(2)
    pool.add(5, (6, 7))
    pool.add(5, (8, 9))
    pool.add(5, (6, 7))
    pool.add(5, (1, 2))
    assert pool.get(5) == [(1, 2), (6, 7)] and pool.get(4) == []


@pytest.mark.parametrize("width, levels", [(1, 2), (2, 2), (4, 2), (3, 4)])
def test_the_branch_is_a_tree_whose_columns_are_diagonals(width, levels):
    window = [[10 * j + c for c in range(width)] for j in range(levels)]
    offset = 3  # the root and two draft nodes come first
    tokens, parents, reads = branch(window, offset)
    assert len(tokens) == LookaheadOptions(window=width, ngram=levels + 1).branch_rows
    whole = (-1, 0, 1, *parents)  # root, a two-token draft chain, the branch
    check_parents(whole)
    tree = layout(whole)
    for c in range(width):  # column c's deepest node: its ancestors are its column's tokens
        node = offset + reads[c]
        assert tokens[reads[c]] == window[-1][c] and tree.depth[node] == c + levels - 1
        column = [whole_tokens for whole_tokens in (tokens[a - offset] for a in np.flatnonzero(tree.mask[node])
                                                    if a >= offset)]
        assert column == [*window[0][1:c + 1], *(window[j][c] for j in range(1, levels))]


def test_a_jacobi_step_completes_one_ngram_per_column():
    levels, grams = jacobi_step([[9, 4], [5, 6]], root=3, predictions=[7, 8])
    assert levels == [[5, 6], [7, 8]] and grams == [(3, 5, 7), (4, 6, 8)]


def test_the_branch_leaves_the_drafts_rows_unchanged(tiny_target_backend):
    """Rows of the root and the draft are the same with the branch riding along (the branch's
    nodes are not their ancestors); the branch's own rows are its columns' predictions."""
    b = tiny_target_backend
    tokens = b.tokenize("the quick brown fox jumps", special=False)
    b.prefill(tokens[:-2])
    plain = b.forward_tree(tokens[-2:], (-1, 0))
    b.keep((0,))
    b.rollback(len(tokens) - 2)
    window = [[tokens[-2], 30, 31], [40, 41, 42]]
    extra, parents, reads = branch(window, 2)
    rows = b.forward_tree([*tokens[-2:], *extra], (-1, 0, *parents), rows=[0, 1, *(2 + r for r in reads)])
    b.keep((0, 1))
    assert np.allclose(rows[:2], plain, atol=1e-4)
    b.rollback(len(tokens) - 2)  # column 1's prediction, computed as a chain
    chain = b.forward([tokens[-2], 30, 41])
    assert np.allclose(rows[3], chain[-1], atol=1e-4)


def seeded_lookahead(prompt: list[int], pairs: list[tuple[int, int]]) -> Registry:
    """The registry plus ``lookahead-seeded``: lookahead whose pool already holds ``pairs`` after
    the prompt's last token, so the first step drafts a tree of distinct siblings."""

    def make(resources, memory, options):
        proposer = LookaheadProposer(options)
        for pair in reversed(pairs):
            proposer.pool.add(prompt[-1], pair)
        return proposer

    spec = ProposerSpec("lookahead-seeded", "lookahead with a seeded pool", make=make,
                        options=LookaheadOptions, requires=METHODS["lookahead"].requires, default_budget=8)
    return Registry([*METHODS, spec])


def lookahead_samples(tiny_engine, draws: int):
    """(counts of the first two tokens, exact distribution, drafted tokens) over seeded generations."""
    params = SamplingParams(temperature=1.0, top_k=3)
    target = tiny_engine.target
    prompt = target.tokenize("hello world hello world hello", special=False)
    exact = two_token_distribution(target, prompt, params)
    firsts = sorted({a for a, _ in exact}, key=lambda a: -sum(p for (x, _), p in exact.items() if x == a))
    pairs = [(a, max((b for x, b in exact if x == a), key=lambda b: exact[a, b])) for a in firsts]
    engine = Engine(target, chat=False, methods=seeded_lookahead(prompt, pairs), method="lookahead-seeded",
                    prior=Prior(curve=FLAT), guesses=4)
    counts, drafted = dict.fromkeys(exact, 0), 0
    for seed in range(draws):
        out = engine.generate(prompt, max_tokens=3, temperature=1.0, top_k=3, seed=seed)
        counts[tuple(out.token_ids[:2])] += 1
        drafted += out.stats["drafted_tokens"]
    return counts, exact, drafted


def p_value(counts, exact, draws: int) -> float:
    """Chi-square over the pairs, those expected fewer than 5 times pooled into one cell (the
    test's approximation needs it: one draw of a pair expected 0.04 times would dominate it)."""
    big = sorted(k for k in exact if exact[k] * draws >= 5)
    small = [k for k in exact if k not in big]
    observed = [counts[k] for k in big] + [sum(counts[k] for k in small)]
    expected = [exact[k] * draws for k in big] + [sum(exact[k] for k in small) * draws]
    return chisquare(observed, expected).pvalue


def test_sampled_lookahead_follows_the_target_distribution(tiny_engine):
    draws = 1500
    counts, exact, drafted = lookahead_samples(tiny_engine, draws)
    assert drafted > draws, "too few drafts: the test would not exercise verification"
    assert p_value(counts, exact, draws) > 1e-3, (counts, exact)


def test_a_lossy_tree_rule_is_caught_on_lookaheads_drafts(tiny_engine, monkeypatch):
    """The negative control: trying each sibling against the unchanged p (no residual after a
    rejected sibling) makes the same test fail."""

    def lossy(draft, logits, sampling, rng):
        tree, node, path = layout(draft.tree_parents()), 0, []
        while True:
            p = warp(logits[node], sampling)
            chosen = next((c for c in tree.children[node] if rng.random() < p[draft.tokens[c - 1]]), None)
            if chosen is None:
                return Acceptance(tuple(draft.tokens[c - 1] for c in path) + (sample(p, rng),), len(path),
                                  len(draft), tuple(path), max(tree.depth))
            node = chosen
            path.append(node)

    monkeypatch.setattr(quickdraft.verifiers, "verify_tree_sampling", lossy)
    draws = 1500
    counts, exact, _ = lookahead_samples(tiny_engine, draws)
    assert p_value(counts, exact, draws) < 1e-3, (counts, exact)


def test_auto_rides_lookaheads_branch_in_free_rows_and_stays_exact(tiny_engine):
    """Where a forward costs the same whatever its size (calibrated so, and a synthetic clock: every
    forward 40 ms), auto's Jacobi branch rides in every step and its pool becomes a source of
    drafts; the output stays plain decoding's token for token."""
    from test_engine_tiny import PROMPTS, SimulatedTime, Timed

    clock = SimulatedTime()
    engine = Engine(Timed(tiny_engine.target, clock, 0.04), chat=False, clock=clock, method="auto",
                    prior=Prior(curve=[1.0] * 17, step_s=0.04))
    sources: dict[str, int] = {}
    for prompt in PROMPTS:
        ar = tiny_engine.generate(prompt, max_tokens=48, method="ar")
        auto = engine.generate(prompt, max_tokens=48)
        assert auto.token_ids == ar.token_ids, prompt
        for source, n in auto.stats["draft_sources"].items():
            sources[source] = sources.get(source, 0) + n
    assert sources.get("lookahead", 0) > 3, sources


def test_no_branch_rides_where_every_row_costs(tiny_engine):
    """On a steep curve (every row half a step) no row is free: auto never evaluates the branch."""
    from quickdraft.engine import ride_free_rows
    from quickdraft.records import Draft

    engine = Engine(tiny_engine.target, chat=False, prior=Prior(curve=[1.0 + 0.5 * k for k in range(17)]))
    generation = engine.start(engine.prepare("the quick brown fox", max_tokens=8, method="auto"))
    try:
        generation.prefill()
        assert ride_free_rows(engine.target, engine.cost, [generation], [Draft()]) == [Draft()]
    finally:
        engine.release(generation)
