"""Token trees: several draft continuations checked by the target in one forward.

A tree of ``N`` nodes is two tuples of length N:

- ``tokens[i]``: the token of node i;
- ``parents[i]``: the index of node i's parent, with ``parents[0] == -1`` and
  ``0 <= parents[i] < i`` for i >= 1 (topological order: a parent comes before its children).

Node 0, the *root*, is the engine's pending token (already emitted, not yet in the KV cache), so
a chain of n draft tokens is the one-branch tree ``parents = (-1, 0, 1, ..., n - 1)``.

A backend evaluates the N nodes after a cache of length ``L``: node i sits at position
``L + depth[i]`` and attends to the cache and to its ancestors and itself (``mask[i]``). Row i of
the result predicts the token after node i. After verification the backend keeps one *path*
(node indices from the root down, ``path[0] == 0``): node ``path[k]`` becomes cache entry
``L + k``. A backend that stores the N nodes in batch order (slot ``L + i`` for node i) gathers
slots ``L + path[k]`` into ``L + k``; llama.cpp tracks cells by sequence id instead
(``seqs``: a node belongs to the sequence of every root-to-leaf path through it).

Example, the tree ``a -> (b -> d, c)`` (root a with children b and c, d under b)::

    parents = (-1, 0, 0, 1)     depth = (0, 1, 1, 2)     leaves = (2, 3)
    paths   = ((0, 2), (0, 1, 3))  (one per leaf, in leaf order)
    mask    = [[1 0 0 0],       row i: the nodes i attends to (ancestors and itself)
               [1 1 0 0],
               [1 0 1 0],
               [1 1 0 1]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import InvalidParameterError


@dataclass(frozen=True)
class Layout:
    """Everything derived from a parents array (see the module docstring). N nodes, P leaves.

    depth: [N] distance from the root (the root has depth 0); position = cache length + depth.
    mask: [N, N] bool, ``mask[i, j]`` is True when node j is node i or one of its ancestors
        (a chain gives the lower-triangular causal mask).
    children: [N] the children of each node, in index order.
    leaves: [P] the nodes without children, in index order.
    paths: [P] for each leaf, the node indices from the root down to it.
    seqs: [N] for each node, the indices (into ``leaves``/``paths``) of the paths through it.
    """

    depth: tuple[int, ...]
    mask: np.ndarray
    children: tuple[tuple[int, ...], ...]
    leaves: tuple[int, ...]
    paths: tuple[tuple[int, ...], ...]
    seqs: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.depth)


def check_parents(parents: Sequence[int]) -> None:
    """Raise InvalidParameterError unless ``parents`` is a valid tree in topological order."""
    if len(parents) == 0:
        raise InvalidParameterError("a token tree needs at least the root node (parents = (-1,))")
    if parents[0] != -1:
        raise InvalidParameterError(f"node 0 is the root: parents[0] must be -1, got {parents[0]}")
    for i in range(1, len(parents)):
        if not 0 <= parents[i] < i:
            raise InvalidParameterError(
                f"parents[{i}] = {parents[i]}: a node's parent must be an earlier node (0 <= parent < {i})")


def layout(parents: Sequence[int]) -> Layout:
    """Derive depths, the attention mask, children, leaves, root-to-leaf paths and path membership.

    parents: [N] as described in the module docstring (checked). Costs O(N^2) for the mask.
    """
    check_parents(parents)
    n = len(parents)
    depth = [0] * n
    mask = np.eye(n, dtype=bool)
    children: list[list[int]] = [[] for _ in range(n)]
    for i in range(1, n):
        p = parents[i]
        depth[i] = depth[p] + 1
        mask[i] |= mask[p]
        children[p].append(i)
    leaves = tuple(i for i in range(n) if not children[i])
    paths = tuple(tuple(int(j) for j in np.flatnonzero(mask[leaf])) for leaf in leaves)
    seqs = tuple(tuple(s for s, leaf in enumerate(leaves) if mask[leaf, i]) for i in range(n))
    return Layout(tuple(depth), mask, tuple(tuple(c) for c in children), leaves, paths, seqs)


def chain_parents(n: int) -> tuple[int, ...]:
    """Parents of a chain of n nodes (the root and n - 1 draft tokens): (-1, 0, 1, ..., n - 2)."""
    return tuple(range(-1, n - 1))


def check_path(parents: Sequence[int], path: Sequence[int]) -> None:
    """Raise InvalidParameterError unless ``path`` starts at the root and goes from parent to child."""
    if len(path) == 0 or path[0] != 0:
        raise InvalidParameterError(f"a kept path starts at the root node 0, got {tuple(path)}")
    for a, b in zip(path, path[1:]):
        if not 0 < b < len(parents) or parents[b] != a:
            raise InvalidParameterError(f"path {tuple(path)}: node {b} is not a child of node {a}")
