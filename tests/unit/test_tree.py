"""tree.py on hand-written trees: depths, masks, leaves, paths, sequence membership, validation."""

import numpy as np
import pytest

from quickdraft.errors import InvalidParameterError
from quickdraft.tree import best_subtree, chain_parents, check_parents, check_path, grow_tree, layout, trie


def test_docstring_example():
    #   0 -> 1 -> 3
    #     -> 2
    t = layout((-1, 0, 0, 1))
    assert t.depth == (0, 1, 1, 2)
    assert t.mask.astype(int).tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
    assert t.children == ((1, 2), (3,), (), ())
    assert t.leaves == (2, 3)
    assert t.paths == ((0, 2), (0, 1, 3))
    assert len(t) == 4


def test_wider_tree():
    #   0 -> 1 -> 4 -> 6
    #          -> 5
    #     -> 2
    #     -> 3 -> 7
    parents = (-1, 0, 0, 0, 1, 1, 4, 3)
    t = layout(parents)
    assert t.depth == (0, 1, 1, 1, 2, 2, 3, 2)
    assert t.leaves == (2, 5, 6, 7)
    assert t.paths == ((0, 2), (0, 1, 5), (0, 1, 4, 6), (0, 3, 7))
    # node 6 attends to exactly 0, 1, 4 and itself; node 7 to 0, 3 and itself
    assert np.flatnonzero(t.mask[6]).tolist() == [0, 1, 4, 6]
    assert np.flatnonzero(t.mask[7]).tolist() == [0, 3, 7]
    # the mask's column j lists j's subtree; every path is an ancestor chain
    assert np.flatnonzero(t.mask[:, 1]).tolist() == [1, 4, 5, 6]
    for path in t.paths:
        assert all(parents[b] == a for a, b in zip(path, path[1:]))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_chain_is_causal(n):
    parents = chain_parents(n)
    assert parents == tuple(range(-1, n - 1))
    t = layout(parents)
    assert (t.mask == np.tril(np.ones((n, n), dtype=bool))).all()
    assert t.depth == tuple(range(n))
    assert t.leaves == (n - 1,) and t.paths == (tuple(range(n)),)


def test_root_only():
    t = layout((-1,))
    assert t.leaves == (0,) and t.paths == ((0,),) and t.mask.tolist() == [[True]]


@pytest.mark.parametrize("parents, message", [
    ((), "at least the root"),
    ((0, 0), "parents\\[0\\] must be -1"),
    ((-1, 1), "parents\\[1\\] = 1"),  # own parent
    ((-1, 0, 3, 0), "parents\\[2\\] = 3"),  # parent after the child
    ((-1, -1), "parents\\[1\\] = -1"),  # a second root
])
def test_bad_parents(parents, message):
    with pytest.raises(InvalidParameterError, match=message):
        check_parents(parents)
    with pytest.raises(InvalidParameterError):
        layout(parents)


def test_check_path():
    parents = (-1, 0, 0, 1)
    for path in [(0,), (0, 1), (0, 1, 3), (0, 2)]:
        check_path(parents, path)
    for path in [(), (1,), (0, 3), (0, 2, 3), (0, 1, 4)]:
        with pytest.raises(InvalidParameterError):
            check_path(parents, path)


def test_best_subtree_keeps_the_best_connected_nodes():
    assert best_subtree((-0.1, -2.0, -0.3), (-1, -1, 0), 2) == ((0, 2), (0, 1))
    # root -> a(-0.5) -> c(-0.6) -> e(-0.7); root -> b(-0.55) -> d(-3)
    scores, parents = (-0.5, -0.55, -0.6, -3.0, -0.7), (-1, -1, 0, 1, 2)
    assert best_subtree(scores, parents, 4) == ((0, 1, 2, 4), (0, 0, 1, 3))
    assert best_subtree(scores, parents, 10) == ((0, 1, 2, 3, 4), (0, 0, 1, 2, 3))
    assert best_subtree(scores, parents, 0) == ((), ())
    assert best_subtree((0.0, 0.0), (-1, 0), 1) == ((0,), (0,))  # a tie goes to the parent
    with pytest.raises(InvalidParameterError, match="scores must not grow"):
        best_subtree((-1.0, -0.5), (-1, 0), 1)


def test_trie_merges_prefixes_level_by_level():
    assert trie(([5, 6, 7], [5, 8], [9]), 4) == ((5, 9, 6, 8), (0, 0, 1, 1))
    assert trie(([5, 6, 7], [5, 8], [9]), 10) == ((5, 9, 6, 8, 7), (0, 0, 1, 1, 3))
    assert trie(([1, 2, 3],), 2) == ((1, 2), (0, 1))  # one continuation: a chain
    assert trie(([1, 2], [1, 2]), 5) == ((1, 2), (0, 1))  # duplicates merge
    assert trie((), 3) == ((), ()) and trie(([1],), 0) == ((), ())
    tokens, parents = trie(([1, 2, 3], [1, 4, 3], [7, 7]), 100)
    layout((-1, *parents))  # a valid tree
    for node in range(len(tokens) + 1):  # siblings are distinct
        kids = [tokens[i] for i, p in enumerate(parents) if p == node]
        assert len(kids) == len(set(kids))


def test_ngram_continuations_best_first():
    from quickdraft.proposers.ngram import ngram_continuations, ngram_match

    context = [1, 2, 3, 9, 1, 2, 4, 1, 2]
    assert ngram_continuations(context, 2) == [[4, 1], [3, 9]]
    assert ngram_continuations(context, 2, branches=1) == [[4, 1]] and ngram_match(context, 2) == [4, 1]
    # a shorter suffix adds new continuations after the longer suffix's ones
    assert ngram_continuations([7, 1, 2, 5, 2, 6, 1, 2], 1, max_ngram=2) == [[5], [6]]
    assert ngram_continuations([1, 2, 3], 4) == [] and ngram_continuations(context, 0) == []


def test_grow_tree_keeps_the_best_nodes_by_cumulative_probability():
    table = {-1: ([10, 11], [-0.1, -2.0]), 0: ([12, 13], [-0.1, -3.0])}  # candidate -> children
    seen = []

    def children(frontier, depth, tokens, parents):
        seen.append([(tokens[c], parents[c]) for c in frontier if c >= 0])
        rows = [table.get(c, ([20, 21], [-5.0, -6.0])) for c in frontier]
        return [r[0] for r in rows], [r[1] for r in rows]

    assert grow_tree(children, budget=3, width=2, max_depth=4) == ((10, 11, 12), (0, 0, 1))
    # level 2 expands both root children (fewer than 3 candidates yet); level 3 only 12: 13 (-3.1)
    # and 11's children (-7.0, -8.0) cannot beat the 3rd best (11, -2.0)
    assert seen[1] == [(10, -1), (11, -1)] and seen[2] == [(12, 0)]
    assert grow_tree(children, budget=1, width=2, max_depth=4) == ((10,), (0,))
    # a floor drops unlikely candidates; children the drafter cannot evaluate end the growth
    assert grow_tree(children, budget=3, width=2, max_depth=4, floor=-1.0) == ((10, 12), (0, 1))
    assert grow_tree(lambda f, d, t, p: ([[]] * len(f), [[]] * len(f)), budget=3, width=2, max_depth=4) == ((), ())
