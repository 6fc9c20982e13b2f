"""The rejection verifier's output must follow p exactly, at every position of a chain.

Fixed p and q (deliberately different, including tokens q favours that p dislikes and the
reverse), many seeded draws, chi-square goodness of fit. The significance level is 1e-3 with a
fixed seed, so a correct verifier passes deterministically; a verifier that, e.g., skips the
residual (samples the recovered token from p) or takes the bonus from q fails by a wide margin
(see test_a_lossy_rule_is_caught).
"""

import numpy as np
import pytest
from scipy.stats import chisquare

from quickdraft.sampling import SamplingParams, sample, warp
from quickdraft.records import Acceptance, Draft
from quickdraft.verifiers import verify_rejection

V, N, DRAWS = 5, 3, 20000
PARAMS = SamplingParams(temperature=1.0)
P_ROWS = np.array([[0.50, 0.20, 0.15, 0.10, 0.05],
                   [0.05, 0.05, 0.10, 0.30, 0.50],
                   [0.25, 0.25, 0.25, 0.15, 0.10],
                   [0.10, 0.60, 0.10, 0.10, 0.10]])  # [N + 1, V]: p is the same whatever came before
Q_ROWS = np.array([[0.10, 0.10, 0.20, 0.20, 0.40],
                   [0.40, 0.30, 0.10, 0.10, 0.10],
                   [0.20, 0.20, 0.20, 0.20, 0.20]])  # [N, V]


def emitted_chains(verify, deterministic: bool = False, draws: int = DRAWS) -> np.ndarray:
    """[draws, N + 1] the first N + 1 emitted tokens, running steps until that many exist.

    Because p and q do not depend on the context here, the token at every output position
    must be distributed as that position's p row (the row index is the output position).
    """
    rng = np.random.default_rng(1234)
    out = np.empty((draws, N + 1), dtype=int)
    for d in range(draws):
        tokens: list[int] = []
        while len(tokens) < N + 1:
            pos = len(tokens)
            n = N + 1 - pos - 1  # draft length so the step can cover the remaining positions
            q = Q_ROWS[pos:pos + n] if not deterministic else None
            draft_tokens = tuple(sample(q[i], rng) for i in range(n)) if not deterministic else \
                tuple(int(np.argmax(Q_ROWS[pos + i])) for i in range(n))
            logits = np.log(P_ROWS[pos:pos + n + 1])
            tokens += verify(Draft(draft_tokens, q), logits, PARAMS, rng).tokens
        out[d] = tokens[:N + 1]
    return out


def assert_follows_p(chains: np.ndarray) -> None:
    for pos in range(N + 1):
        counts = np.bincount(chains[:, pos], minlength=V)
        result = chisquare(counts, P_ROWS[pos] * len(chains))
        assert result.pvalue > 1e-3, (pos, counts, result)


@pytest.mark.parametrize("deterministic", [False, True], ids=["sampled-draft", "deterministic-draft"])
def test_every_chain_position_follows_p(deterministic):
    assert_follows_p(emitted_chains(verify_rejection, deterministic))


def test_a_lossy_rule_is_caught():
    """The test has teeth: recovering from p instead of the residual is detectably wrong."""

    def lossy(draft, logits, params, rng):
        p = warp(logits, params)
        for i, x in enumerate(draft.tokens):
            if rng.random() >= min(1.0, p[i, x] / draft.q[i, x]):
                return Acceptance(tuple(draft.tokens[:i]) + (sample(p[i], rng),), i, len(draft))
        return verify_rejection(draft, logits, params, rng)

    with pytest.raises(AssertionError):
        assert_follows_p(emitted_chains(lossy, draws=5000))
