"""Typical acceptance is NOT the target's distribution, and the tests say so: the same
chi-square that every lossless rule passes (test_rejection_distribution.py) rejects its output
decisively. That is the documented expectation for a lossy rule, not a bug. What it does emit
is what ``typical_emission`` predicts (the distribution behind the distance the bench reports),
and that chi-square passes.

Fixed p and q rows (the same as the rejection test's), many seeded draws, significance 1e-3.
"""

import numpy as np
import pytest
from scipy.stats import chisquare

from quickdraft.verifiers import verify_rejection, verify_typical
from quickdraft.verifiers.typical import emission_tv, typical_emission, typical_threshold
from test_rejection_distribution import DRAWS, P_ROWS, Q_ROWS, V, emitted_chains


def position_pvalue(chains: np.ndarray, pos: int, expected: np.ndarray) -> float:
    """Chi-square p-value of the tokens at output position ``pos`` against ``expected`` [V]
    (cells the expectation rules out must be empty, else the p-value is 0)."""
    counts = np.bincount(chains[:, pos], minlength=V)
    support = expected > 0
    if counts[~support].any():
        return 0.0
    return float(chisquare(counts[support], expected[support] * len(chains)).pvalue)


def test_typical_acceptance_fails_the_chi_square_against_p():
    """The negative result that marks the rule lossy: its first output token is not distributed
    as p (p-value far below 1e-3), while rejection sampling's is (same draws, same harness)."""
    typical = emitted_chains(verify_typical)
    assert position_pvalue(typical, 0, P_ROWS[0]) < 1e-6
    assert position_pvalue(emitted_chains(verify_rejection), 0, P_ROWS[0]) > 1e-3


def test_its_first_token_follows_the_predicted_emission_and_the_tv_is_its_distance():
    """Position 0 of every chain is emitted at the root from p = P_ROWS[0] and a child drawn
    from q = Q_ROWS[0]: the distribution there is typical_emission's, and the distance from p it
    reports is 1/2 |t - p|."""
    p, q = P_ROWS[0], Q_ROWS[0]
    support, t = typical_emission(p, typical_threshold(p), [q])
    predicted = np.zeros(V)
    predicted[support] = t
    chains = emitted_chains(verify_typical, draws=DRAWS)
    assert position_pvalue(chains, 0, predicted) > 1e-3
    # tau = 0.3 exp(-H(p)) = 0.079: token 4 (p 0.05) fails, so q's 0.4 on it goes to the argmax:
    # t = (0.5, 0.1, 0.2, 0.2, 0) against p = (0.5, 0.2, 0.15, 0.1, 0.05)
    assert np.allclose(predicted, [0.5, 0.1, 0.2, 0.2, 0.0])
    assert emission_tv(p, support, t) == pytest.approx(np.abs(predicted - p).sum() / 2) == 0.15
