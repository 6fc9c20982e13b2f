"""Table-driven tests of the tree acceptance rules (pure functions, no model)."""

import numpy as np
import pytest

from quickdraft.errors import InvalidParameterError
from quickdraft.sampling import SamplingParams
from quickdraft.records import Draft
from quickdraft.verifiers import select, verify_greedy, verify_rejection, verify_tree_greedy, verify_tree_sampling

V = 6


def logits_with_argmax(*best: int) -> np.ndarray:
    rows = np.zeros((len(best), V))
    rows[np.arange(len(best)), best] = 5.0
    return rows


# The tree: root -> node 1 (token 1) -> node 3 (token 3)
#                -> node 2 (token 2) -> node 4 (token 4)
TOKENS, PARENTS = (1, 2, 3, 4), (0, 0, 1, 2)


@pytest.mark.parametrize("best, path, tokens", [
    ((1, 3, 0, 5, 0), (1, 3), (1, 3, 5)),   # first branch all the way + bonus after node 3
    ((2, 0, 4, 0, 5), (2, 4), (2, 4, 5)),   # second branch all the way + bonus after node 4
    ((2, 0, 1, 0, 0), (2,), (2, 1)),        # second child, then the target disagrees
    ((5, 3, 4, 0, 0), (), (5,)),            # no child matches the root's argmax
])
def test_greedy_tree_table(best, path, tokens):
    result = verify_tree_greedy(Draft(TOKENS, parents=PARENTS), logits_with_argmax(*best))
    assert (result.path, result.tokens, result.accepted, result.drafted, result.depth) == (path, tokens, len(path), 4, 2)
    assert result.kept_nodes() == (0, *path)


def test_chain_as_tree_equals_chain():
    """A one-branch tree gives what the chain verifiers give (and the sampling rule consumes the
    rng the same way)."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        draft = tuple(int(x) for x in rng.integers(0, V, 3))
        logits = rng.normal(size=(4, V)) * 2
        chain, tree = Draft(draft), Draft(draft, parents=(0, 1, 2))
        a, b = verify_greedy(chain, logits), verify_tree_greedy(tree, logits)
        assert (a.tokens, a.accepted) == (b.tokens, b.accepted) and b.path == tuple(range(1, a.accepted + 1))
        sampling = SamplingParams(temperature=1.0)
        q = rng.dirichlet(np.ones(V), size=3)
        seed = int(rng.integers(1 << 30))
        for qs in (None, q):
            a = verify_rejection(Draft(draft, qs), logits, sampling, np.random.default_rng(seed))
            b = verify_tree_sampling(Draft(draft, qs, parents=(0, 1, 2)), logits, sampling, np.random.default_rng(seed))
            assert (a.tokens, a.accepted) == (b.tokens, b.accepted)


def test_sampling_at_temperature_zero_is_greedy():
    greedy = SamplingParams()
    rng = np.random.default_rng(0)
    for best in [(1, 3, 0, 5, 0), (2, 0, 4, 0, 5), (2, 0, 1, 0, 0), (5, 3, 4, 0, 0)]:
        logits = logits_with_argmax(*best)
        draft = Draft(TOKENS, parents=PARENTS)
        assert verify_tree_sampling(draft, logits, greedy, rng) == verify_tree_greedy(draft, logits)


def test_preconditions_are_checked():
    sampling, rng = SamplingParams(temperature=1.0), np.random.default_rng(0)
    logits = np.zeros((4, V))
    with pytest.raises(InvalidParameterError, match="distinct siblings"):
        verify_tree_sampling(Draft((1, 1, 2), parents=(0, 0, 1)), logits, sampling, rng)
    q = np.full((3, V), 1 / V)
    q[0] = np.eye(V)[0]  # the first child, token 1, has q(1) = 0
    with pytest.raises(InvalidParameterError, match="q\\(x\\) = 0"):
        verify_tree_sampling(Draft((1, 1, 2), q, parents=(0, 0, 1)), logits, sampling, rng)
    with pytest.raises(InvalidParameterError, match="rows of logits"):
        verify_tree_greedy(Draft((1, 2), parents=(0, 0)), logits)


def test_select_tree():
    assert select(SamplingParams(), tree=True) is verify_tree_greedy
    assert select(SamplingParams(temperature=0.7), tree=True) is verify_tree_sampling
    assert select(SamplingParams(temperature=0.7)) is verify_rejection
