"""Both tree sampling rules must emit tokens distributed exactly as the target's p, at the root
and at depth 2, including when every child of a node is rejected.

The target is a fixed transition matrix: after token a, p = T[a] (so depth-2 probabilities
depend on which depth-1 child was taken). The draft is another matrix Q, deliberately different.
Each step drafts a two-level tree of K children per node from the current last token, either
sampled independently from Q (SpecInfer's rule) or the top-K of Q (the deterministic rule), and
steps repeat until two tokens are emitted. The joint of the first two emitted tokens must be
T[r, x] * T[x, y] (r the token before): chi-square over all V^2 cells, significance 1e-3 with
fixed seeds, so a correct verifier passes deterministically; test_a_lossy_rule_is_caught
shows the test catches the classic mistake (not updating p after a rejected sibling).
"""

import numpy as np
import pytest
from scipy.stats import chisquare

from quickdraft.sampling import SamplingParams, sample
from quickdraft.tree import layout
from quickdraft.records import Acceptance, Draft
from quickdraft.verifiers import verify_tree_sampling

V, K, ROOT, DRAWS = 5, 2, 0, 12000
PARAMS = SamplingParams(temperature=1.0)
T = np.array([[0.40, 0.25, 0.20, 0.10, 0.05],
              [0.05, 0.05, 0.10, 0.30, 0.50],
              [0.25, 0.25, 0.25, 0.15, 0.10],
              [0.10, 0.60, 0.10, 0.10, 0.10],
              [0.30, 0.05, 0.05, 0.30, 0.30]])
Q = np.array([[0.05, 0.10, 0.15, 0.30, 0.40],
              [0.40, 0.30, 0.10, 0.10, 0.10],
              [0.20, 0.20, 0.20, 0.20, 0.20],
              [0.10, 0.10, 0.50, 0.20, 0.10],
              [0.10, 0.40, 0.40, 0.05, 0.05]])
# A target that gives zero probability to everything the draft's top-2 proposes at the root and
# after tokens 3 and 4, so every child there is rejected and the residual alone decides.
T_ZERO = T.copy()
T_ZERO[0] = [0.5, 0.3, 0.2, 0.0, 0.0]
T_ZERO[3] = [0.2, 0.8, 0.0, 0.0, 0.0]


def two_level_tree(last: int, sampled: bool, rng: np.random.Generator) -> Draft:
    """K children under the root, K under each of those; q rows when sampled."""
    tokens, parents, q = [], [], []

    def children(parent_node: int, after: int) -> list[int]:
        picks = [sample(Q[after], rng) for _ in range(K)] if sampled else list(np.argsort(-Q[after], kind="stable")[:K])
        for x in picks:
            tokens.append(int(x))
            parents.append(parent_node)
            q.append(Q[after])
        return list(range(len(tokens) - K + 1, len(tokens) + 1))  # their node indices

    for node in children(0, last):
        children(node, tokens[node - 1])
    return Draft(tuple(tokens), np.array(q) if sampled else None, parents=tuple(parents))


def emitted_pairs(target: np.ndarray, sampled: bool, verify=verify_tree_sampling, draws: int = DRAWS):
    """([draws, 2] first two emitted tokens, fraction of root steps where every child was rejected)."""
    rng = np.random.default_rng(2024)
    out, all_rejected = np.empty((draws, 2), dtype=int), 0
    for d in range(draws):
        emitted: list[int] = []
        while len(emitted) < 2:
            last = emitted[-1] if emitted else ROOT
            draft = two_level_tree(last, sampled, rng)
            logits = np.log(np.maximum(target[[last, *draft.tokens]], 1e-300))  # row j: after node j
            acceptance = verify(draft, logits, PARAMS, rng)
            all_rejected += not emitted and acceptance.accepted == 0
            emitted += acceptance.tokens
        out[d] = emitted[:2]
    return out, all_rejected / draws


def assert_follows_target(pairs: np.ndarray, target: np.ndarray) -> None:
    counts = np.zeros((V, V))
    np.add.at(counts, (pairs[:, 0], pairs[:, 1]), 1)
    exact = target[ROOT][:, None] * target  # [x, y] = T[r, x] * T[x, y]
    support = exact > 0
    assert counts[~support].sum() == 0, "emitted a pair the target gives probability 0"
    result = chisquare(counts[support], exact[support] * len(pairs))
    assert result.pvalue > 1e-3, (counts, exact * len(pairs), result)
    # the depth-1 token alone (the root's marginal), as a sharper check of the first level
    first = chisquare(counts.sum(1)[target[ROOT] > 0], target[ROOT][target[ROOT] > 0] * len(pairs))
    assert first.pvalue > 1e-3, (counts.sum(1), first)


@pytest.mark.parametrize("sampled", [True, False], ids=["independent-children", "topk-children"])
def test_tree_output_follows_p_at_root_and_depth_2(sampled):
    pairs, all_rejected = emitted_pairs(T, sampled)
    assert 0.05 < all_rejected < 0.95, all_rejected  # both accepting and all-rejected roots occur
    assert_follows_target(pairs, T)


@pytest.mark.parametrize("sampled", [True, False], ids=["independent-children", "topk-children"])
def test_every_child_rejected_still_follows_p(sampled):
    pairs, all_rejected = emitted_pairs(T_ZERO, sampled, draws=6000)
    if not sampled:
        assert all_rejected == 1.0  # the top-2 of Q[0] are tokens 3 and 4, which p excludes
    assert_follows_target(pairs, T_ZERO)


def test_a_lossy_rule_is_caught():
    """Trying each sibling against the unchanged p (no residual after a rejected sibling) and
    sampling from p when all are rejected is detectably wrong."""

    def lossy(draft, logits, params, rng):
        children, node, path = layout(draft.tree_parents()).children, 0, []
        while True:
            p = np.exp(logits[node]) / np.exp(logits[node]).sum()
            chosen = next((c for c in children[node]
                           if rng.random() < min(1.0, p[draft.tokens[c - 1]] / draft.q[c - 1][draft.tokens[c - 1]])), None)
            if chosen is None:
                tokens = tuple(draft.tokens[c - 1] for c in path) + (sample(p, rng),)
                return Acceptance(tokens, len(path), len(draft), tuple(path), 2)
            node = chosen
            path.append(node)

    with pytest.raises(AssertionError):
        pairs, _ = emitted_pairs(T, True, verify=lossy, draws=4000)
        assert_follows_target(pairs, T)
