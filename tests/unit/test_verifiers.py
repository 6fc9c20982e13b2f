"""Table-driven tests of the acceptance rules (pure functions, no model)."""

import numpy as np
import pytest

from quickdraft.sampling import SamplingParams, warp
from quickdraft.records import Draft
from quickdraft.verifiers import select, verify_greedy, verify_rejection

V = 6


def logits_with_argmax(*best: int) -> np.ndarray:
    """[len(best), V] logits whose row i has its argmax at best[i]."""
    rows = np.zeros((len(best), V))
    rows[np.arange(len(best)), best] = 5.0
    return rows


@pytest.mark.parametrize("draft, best, accepted, tokens", [
    ((1, 2, 3), (1, 2, 3, 4), 3, (1, 2, 3, 4)),  # all accepted + bonus
    ((1, 2, 3), (5, 2, 3, 4), 0, (5,)),  # first rejected: the target's token
    ((1, 2, 3), (1, 0, 3, 4), 1, (1, 0)),  # a middle rejection ends the draft
    ((), (4,), 0, (4,)),  # empty draft = a plain step
])
def test_greedy_table(draft, best, accepted, tokens):
    result = verify_greedy(Draft(draft), logits_with_argmax(*best))
    assert (result.accepted, result.tokens, result.drafted) == (accepted, tokens, len(draft))


def test_rejection_at_temperature_zero_is_greedy():
    # warp() at T=0 is a point mass, so rejection sampling must reduce to exact matching.
    rng = np.random.default_rng(0)
    greedy = SamplingParams()
    for draft, best in [((1, 2, 3), (1, 2, 3, 4)), ((1, 2, 3), (1, 0, 3, 4)), ((), (4,))]:
        logits = logits_with_argmax(*best)
        assert verify_rejection(Draft(draft), logits, greedy, rng) == verify_greedy(Draft(draft), logits)


def test_select_picks_rule_by_sampling():
    assert select(SamplingParams()) is verify_greedy
    assert select(SamplingParams(temperature=0.7)) is verify_rejection


def test_rejection_accepts_when_p_equals_q():
    params = SamplingParams(temperature=1.0)
    logits = np.random.default_rng(1).normal(size=(4, V))
    q = warp(logits[:3], params)
    for seed in range(50):
        result = verify_rejection(Draft((0, 1, 2), q), logits, params, np.random.default_rng(seed))
        assert result.accepted == 3 and len(result.tokens) == 4


def test_rejection_never_emits_a_token_outside_p_support():
    # p has no mass on token 0 (top-k 2 keeps tokens 4 and 5); the draft proposes token 0.
    params = SamplingParams(temperature=1.0, top_k=2)
    logits = np.tile(np.arange(V, dtype=float), (2, 1))
    for seed in range(200):
        result = verify_rejection(Draft((0,)), logits, params, np.random.default_rng(seed))
        assert result.accepted == 0 and result.tokens[0] in (4, 5)


def test_rejection_refuses_a_token_q_could_not_draw():
    params = SamplingParams(temperature=1.0)
    q = np.zeros((1, V))
    q[0, 3] = 1.0
    with pytest.raises(ValueError, match="q\\(x\\) = 0"):
        verify_rejection(Draft((2,), q), np.zeros((2, V)), params, np.random.default_rng(0))


def test_draft_q_shape_is_checked():
    with pytest.raises(ValueError):
        Draft((1, 2), np.ones((3, V)) / V)
