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
slots ``L + path[k]`` into ``L + k``; llama.cpp tracks cells by sequence id instead (node i is
sequence i; node j's cell belongs to the sequences of j and of its descendants, ``mask[:, j]``).

Example, the tree ``a -> (b -> d, c)`` (root a with children b and c, d under b)::

    parents = (-1, 0, 0, 1)     depth = (0, 1, 1, 2)     leaves = (2, 3)
    paths   = ((0, 2), (0, 1, 3))  (one per leaf, in leaf order)
    children = ((1, 2), (3,), (), ())
    mask    = [[1 0 0 0],       row i: the nodes i attends to (ancestors and itself)
               [1 1 0 0],
               [1 0 1 0],
               [1 1 0 1]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

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
    """

    depth: tuple[int, ...]
    mask: np.ndarray
    children: tuple[tuple[int, ...], ...]
    leaves: tuple[int, ...]
    paths: tuple[tuple[int, ...], ...]

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
    """Derive depths, the attention mask, children, leaves and root-to-leaf paths.

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
    return Layout(tuple(depth), mask, tuple(tuple(c) for c in children), leaves, paths)


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


def best_subtree(scores: Sequence[float], parents: Sequence[int], n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Keep the ``n`` best of C candidate draft tokens (EAGLE-2's re-ranking).

    scores: [C] e.g. cumulative log-probabilities; a candidate's score must not exceed its
        parent's, so the best n (ties go to the earlier candidate) include every kept
        candidate's parent. parents: [C] -1 for a child of the root, else an earlier candidate.
    Returns (kept candidate indices in index order, their parents as tree nodes): kept[j] becomes
    tree node j + 1 and its parent is node 0 (the root) or the node of its parent candidate, the
    ``Draft.parents`` convention.

    Example: scores (-0.1, -2.0, -0.3), parents (-1, -1, 0), n = 2 -> ((0, 2), (0, 1)).
    """
    best = sorted(sorted(range(len(scores)), key=lambda c: (-scores[c], c))[:max(n, 0)])
    node = {c: j + 1 for j, c in enumerate(best)}
    for c in best:
        if parents[c] >= 0 and parents[c] not in node:
            raise InvalidParameterError(f"candidate {c} scores above its parent {parents[c]}: scores must not grow down the tree")
    return tuple(best), tuple(node.get(parents[c], 0) for c in best)


def grow_tree(children: Callable[[list[int], int, list[int], list[int]],
                                 tuple[Sequence[Sequence[int]], Sequence[Sequence[float]]]],
              budget: int, width: int, max_depth: int,
              floor: float = -math.inf) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A draft tree grown level by level, EAGLE-2 style, then cut to the ``budget`` best nodes.

    ``children(frontier, depth, tokens, parents)`` gives, for each frontier candidate (-1 is the
    root), its next tokens and their log-probabilities, two nested lists [F][w] (rows may be
    empty: no children, e.g. when the drafter has no room left); ``tokens`` and ``parents`` are
    the candidates so far (parent -1: a child of the root), for a drafter that evaluates the
    frontier nodes. A candidate scores its parent's score plus its own
    log-probability; candidates below ``floor`` are dropped. Each level expands the ``width``
    newest candidates with the highest score, and only those that can still be among the
    ``budget`` best (a child never scores above its parent), in candidate order; growth stops at
    ``max_depth`` or when no candidate is left to expand. Returns (tokens, parents) of the
    ``budget`` best candidates (``best_subtree``) in the ``Draft`` convention.

    Example: width 2, budget 3, root children a (-0.1), b (-2.0); a's children c (-0.2 in all),
    d (-3.1) -> nodes a, b, c: tokens (a, b, c), parents (0, 0, 1).
    """
    tokens: list[int] = []
    scores: list[float] = []
    parents: list[int] = []
    frontier = [-1]
    for depth in range(1, max_depth + 1):
        newest = len(tokens)
        ids, logp = children(frontier, depth, tokens, parents)
        for c, row_ids, row_logp in zip(frontier, ids, logp):
            for token, lp in zip(row_ids, row_logp):
                score = (scores[c] if c >= 0 else 0.0) + float(lp)
                if score >= floor:
                    tokens.append(int(token))
                    scores.append(score)
                    parents.append(c)
        cut = sorted(scores, reverse=True)[budget - 1] if len(scores) >= budget else -math.inf
        level = sorted(range(newest, len(tokens)), key=lambda c: -scores[c])[:width]
        frontier = sorted(c for c in level if scores[c] > cut)
        if not frontier:
            break
    kept, tree = best_subtree(scores, parents, budget)
    return tuple(tokens[c] for c in kept), tree


def trie(continuations: Sequence[Sequence[int]], budget: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Merge candidate continuations into a token tree of at most ``budget`` draft tokens.

    Shared prefixes become one branch, so siblings are distinct tokens. Tokens are added level by
    level, and within a level in the order of ``continuations`` (best first), so when the budget
    runs out the shallow levels, where branches differ most often, are covered first.
    Returns (tokens, parents) in the ``Draft`` convention (token i is node i + 1, 0 the root).

    Example: ([5, 6, 7], [5, 8], [9]), budget 4 -> tokens (5, 9, 6, 8), parents (0, 0, 1, 1).
    """
    tokens: list[int] = []
    parents: list[int] = []
    child: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    at = [0] * len(continuations)  # the node each continuation has reached
    for depth in range(max((len(c) for c in continuations), default=0)):
        for k, cont in enumerate(continuations):
            if depth >= len(cont) or at[k] < 0:
                continue
            key = (at[k], int(cont[depth]))
            if key not in child:
                if len(tokens) == budget:
                    at[k] = -1  # no room: this continuation stops here
                    continue
                tokens.append(key[1])
                parents.append(key[0])
                child[key] = len(tokens)
            at[k] = child[key]
    return tuple(tokens), tuple(parents)
