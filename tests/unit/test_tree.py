"""tree.py on hand-written trees: depths, masks, leaves, paths, sequence membership, validation."""

import numpy as np
import pytest

from quickdraft.errors import InvalidParameterError
from quickdraft.tree import chain_parents, check_parents, check_path, layout


def test_docstring_example():
    #   0 -> 1 -> 3
    #     -> 2
    t = layout((-1, 0, 0, 1))
    assert t.depth == (0, 1, 1, 2)
    assert t.mask.astype(int).tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
    assert t.children == ((1, 2), (3,), (), ())
    assert t.leaves == (2, 3)
    assert t.paths == ((0, 2), (0, 1, 3))
    assert t.seqs == ((0, 1), (1,), (0,), (1,))
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
    assert t.seqs[0] == (0, 1, 2, 3) and t.seqs[1] == (1, 2) and t.seqs[4] == (2,)
    # node 6 attends to exactly 0, 1, 4 and itself; node 7 to 0, 3 and itself
    assert np.flatnonzero(t.mask[6]).tolist() == [0, 1, 4, 6]
    assert np.flatnonzero(t.mask[7]).tolist() == [0, 3, 7]
    # every node lies on the paths its seqs name, and on no other
    for i in range(len(parents)):
        assert {s for s, p in enumerate(t.paths) if i in p} == set(t.seqs[i])


@pytest.mark.parametrize("n", [1, 2, 5])
def test_chain_is_causal(n):
    parents = chain_parents(n)
    assert parents == tuple(range(-1, n - 1))
    t = layout(parents)
    assert (t.mask == np.tril(np.ones((n, n), dtype=bool))).all()
    assert t.depth == tuple(range(n))
    assert t.leaves == (n - 1,) and t.paths == (tuple(range(n)),)
    assert t.seqs == ((0,),) * n


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
