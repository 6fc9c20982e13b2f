"""Typical acceptance (verifiers/typical.py): the rule on hand-built distributions, what it emits,
the distance it reports, its reduction to greedy at temperature 0, and the rule registry."""

import numpy as np
import pytest

from quickdraft.errors import InvalidParameterError
from quickdraft.records import Draft
from quickdraft.sampling import SamplingParams, warp
from quickdraft.verifiers import (ACCEPTANCE, EXACT, TypicalAcceptance, acceptance_rule, select, verify_greedy,
                                  verify_rejection, verify_tree_greedy, verify_tree_sampling, verify_typical)
from quickdraft.verifiers.typical import emission_tv, entropy, typical_emission, typical_threshold

T1 = SamplingParams(temperature=1.0)
GREEDY = SamplingParams()


def logits(*rows):
    with np.errstate(divide="ignore"):  # p = 0: a logit of -inf
        return np.log(np.asarray(rows, dtype=float))


def test_threshold_is_the_formula():
    for p in ([0.25] * 4, [0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [1.0, 0.0, 0.0], [0.97, 0.01, 0.01, 0.01]):
        p = np.asarray(p)
        h = -sum(x * np.log(x) for x in p if x > 0)
        assert entropy(p) == pytest.approx(h)
        for eps, delta in ((0.09, 0.3), (0.05, 0.5), (0.3, 0.1)):
            assert typical_threshold(p, eps, delta) == pytest.approx(min(eps, delta * np.exp(-h)))
    assert typical_threshold(np.full(4, 0.25)) == pytest.approx(0.075)  # the entropy term binds
    assert typical_threshold(np.array([0.9, 0.05, 0.05])) == pytest.approx(0.09)  # epsilon binds


def test_each_token_is_accepted_exactly_when_its_probability_is_above_the_threshold():
    """Hand-built rows: a token at 0.10 passes epsilon 0.09, one at 0.08 does not; the first
    rejected position emits the target's argmax; a fully accepted draft ends with a sample of p."""
    rows = [[0.6, 0.3, 0.1, 0.0], [0.08, 0.02, 0.5, 0.4], [0.25, 0.25, 0.25, 0.25]]
    rng = np.random.default_rng(0)
    for draft, accepted, last in (((2, 0), 1, 2), ((1, 3), 2, None), ((3,), 0, 0), ((0, 2), 2, None)):
        tokens = rows[:len(draft) + 1]
        out = verify_typical(Draft(draft), logits(*tokens), T1, rng)
        assert out.accepted == accepted, draft
        assert out.tokens[:accepted] == draft[:accepted]
        if last is not None:
            assert out.tokens[-1] == last  # the argmax of the first rejecting row
    # every token of row 2 (uniform over 4: tau = 0.075) passes; the bonus comes from p
    bonus = {verify_typical(Draft((0, 3)), logits(*rows), T1, np.random.default_rng(s)).tokens[-1]
             for s in range(40)}
    assert bonus == {0, 1, 2, 3}


def test_the_rule_ignores_the_draft_distribution():
    """Unlike rejection sampling, acceptance does not depend on q: a token the draft was sure of
    and one it barely chose are judged alike."""
    row = [[0.5, 0.12, 0.38], [1 / 3] * 3]
    for q in (np.array([[0.0, 1.0, 0.0]]), np.array([[0.98, 0.01, 0.01]])):
        out = verify_typical(Draft((1,), q), logits(*row), T1, np.random.default_rng(1))
        assert out.accepted == 1


def test_greedy_requests_get_the_exact_greedy_verifiers():
    rule = TypicalAcceptance()
    assert select(GREEDY, rule=rule) is verify_greedy
    assert select(GREEDY, tree=True, rule=rule) is verify_tree_greedy
    assert rule.lossless_for(GREEDY) and not rule.lossless_for(T1)
    # and the typical rule itself, run on a greedy (point-mass) p, is greedy acceptance
    rng = np.random.default_rng(0)
    for _ in range(50):
        rows = rng.normal(size=(4, 9)) * 3
        draft = Draft(tuple(int(t) for t in rng.integers(0, 9, 3)))
        draft = Draft(tuple(int(np.argmax(rows[i])) if rng.random() < 0.7 else draft.tokens[i] for i in range(3)))
        assert verify_typical(draft, rows, GREEDY, rng).tokens == verify_greedy(draft, rows).tokens
        assert verify_typical(draft, rows, GREEDY, rng).tv == 0.0


def test_exact_rule_selects_the_lossless_verifiers():
    assert select(GREEDY) is verify_greedy and select(T1) is verify_rejection
    assert select(T1, tree=True) is verify_tree_sampling and select(T1, rule=EXACT) is verify_rejection
    assert EXACT.lossless_for(T1) and ACCEPTANCE["exact"].lossless and not ACCEPTANCE["typical"].lossless


def test_emission_matches_the_verifier_in_distribution():
    """The distribution ``typical_emission`` predicts for the first emitted token is what the
    verifier emits (chi-square), for a sampled draft and for a deterministic one; the TV it
    reports is 1/2 |t - p|."""
    from scipy.stats import chisquare

    p = np.array([0.45, 0.25, 0.2, 0.06, 0.04])
    q = np.array([0.1, 0.2, 0.3, 0.2, 0.2])
    tau = typical_threshold(p)
    for child, draws in ((q, 20000), (3, 50), (2, 50)):  # a deterministic child: a deterministic token
        support, t = typical_emission(p, tau, [child])
        dense = np.zeros(5)
        dense[support] = t
        rng, counts = np.random.default_rng(7), np.zeros(5)
        for _ in range(draws):
            x = int(rng.choice(5, p=q)) if isinstance(child, np.ndarray) else child
            out = verify_typical(Draft((x,), q[None] if isinstance(child, np.ndarray) else None),
                                 logits(p, p), T1, rng)
            counts[out.tokens[0]] += 1
        kept = dense > 0
        assert counts[~kept].sum() == 0
        if kept.sum() > 1:
            assert chisquare(counts[kept], dense[kept] * draws).pvalue > 1e-3, (child, counts, dense)
        assert emission_tv(p, support, t) == pytest.approx(0.5 * np.abs(dense - p).sum())
    assert tau == pytest.approx(0.3 * np.exp(-entropy(p)))  # 0.076: token 3 (0.06) fails, the argmax goes out
    # a deterministic child that passes is emitted surely: TV = 1 - p(child)
    assert emission_tv(p, *typical_emission(p, tau, [2])) == pytest.approx(1 - 0.2)


def test_tv_of_a_step_adds_up_the_emitted_positions():
    p0, p1, p2 = np.array([0.5, 0.3, 0.2]), np.array([0.7, 0.2, 0.1]), np.array([1 / 3] * 3)
    out = verify_typical(Draft((1, 2)), logits(p0, p1, p2), T1, np.random.default_rng(0))
    assert out.accepted == 2  # 0.3 and 0.1 both above 0.09
    expected = (1 - 0.3) + (1 - 0.1)  # deterministic children taken surely; the bonus is exact
    assert out.tv == pytest.approx(expected)


def test_a_tree_takes_the_first_child_that_passes():
    # root children: node 1 token 2 (p 0.05: fails), node 2 token 1 (p 0.35: passes); node 3 under node 2
    parents = (0, 0, 2)
    rows = logits([0.6, 0.35, 0.05], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25])
    out = verify_typical(Draft((2, 1, 0), None, parents=parents), rows, T1, np.random.default_rng(0))
    assert out.path == (2, 3) and out.tokens[:2] == (1, 0) and out.accepted == 2
    # deterministic siblings: the first passes surely, so t is a point mass on it
    assert out.tv == pytest.approx((1 - 0.35) + (1 - 0.1))


def test_a_tree_verifies_like_its_chain():
    rows = logits([0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2])
    chain = verify_typical(Draft((1, 2)), rows, T1, np.random.default_rng(3))
    tree = verify_typical(Draft((1, 2), None, parents=(0, 1)), rows, T1, np.random.default_rng(3))
    assert chain.tokens == tree.tokens and chain.tv == pytest.approx(tree.tv)
    assert chain.path == () and tree.path == (1, 2)


def test_rules_by_name_with_options_and_clear_errors():
    rule = acceptance_rule("typical", posterior_threshold=0.05, posterior_alpha=None)
    assert rule == TypicalAcceptance(0.05, 0.3)
    assert acceptance_rule(rule) is rule and acceptance_rule("exact") == EXACT
    with pytest.raises(InvalidParameterError, match="exact, typical") as e:
        acceptance_rule("medusa")
    assert e.value.param == "acceptance"
    with pytest.raises(InvalidParameterError, match="no option") as e:
        acceptance_rule("exact", posterior_threshold=0.1)
    assert e.value.param == "posterior_threshold"
    for option, value in (("posterior_threshold", 0.0), ("posterior_alpha", 1.5), ("posterior_alpha", True)):
        with pytest.raises(InvalidParameterError, match=option) as e:
            acceptance_rule("typical", **{option: value})
        assert e.value.param == option
    with pytest.raises(InvalidParameterError) as e:
        acceptance_rule(rule, posterior_alpha=0.2)
    assert e.value.param == "posterior_alpha"


def test_warped_p_is_what_is_judged():
    """top-k removes a token from p before the rule sees it: a token outside the top-k never passes."""
    row = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    params = SamplingParams(temperature=1.0, top_k=2)
    assert warp(row, params)[2] == 0
    out = verify_typical(Draft((2,)), np.stack([row, row]), params, np.random.default_rng(0))
    assert out.accepted == 0 and out.tokens == (0,)
