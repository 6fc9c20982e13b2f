"""Lookahead decoding (Fu et al. 2024, arXiv 2402.02057): training-free guesses from Jacobi
iterations, verified as n-grams.

Each step's forward carries, besides the pending token and the draft, a *lookahead branch*: a
window of guessed tokens for the next positions, ``levels`` deep and ``window`` wide. Column c's
guesses form a diagonal trajectory: level j of column c stands at position P + c + j (P: the
pending token's). The target's prediction after the deepest level of each column is one Jacobi
step further; the column's tokens plus that prediction are an n-gram (``ngram`` tokens) the model
itself might write, kept in a pool under its first token. Then every level moves up one and the
predictions become the deepest level. The draft of a step is the pool's n-grams that start with
the pending token (their other ``ngram - 1`` tokens), merged into a token tree and verified
losslessly as any tree (greedy: the longest path the target agrees with; sampling: multi-draft
rejection with deterministic, distinct siblings). The branch's tokens are never emitted: what
the target says about them only feeds the pool, so whatever they are, the output is the target's.

The branch as a tree, ``window`` W = 3 and 3 levels (``ngram`` 4): the root r is the pending
token and level 0's first column; level 0 continues as a chain (a, b); each column hangs its
deeper levels from its level-0 node (llama.cpp's lookahead example builds the same mask from
sequence ids)::

    r ─ a ─ b           level 0: columns 0 (r), 1 (a), 2 (b)
    │   │   └ b1 ─ b2   column 2: levels 1, 2
    │   └ a1 ─ a2       column 1
    └ r1 ─ r2           column 0; rows are read after r2, a2, b2

It costs ``window - 1 + window * (levels - 1)`` extra rows a step: it pays where a machine
verifies rows nearly for free (a GPU, a memory-bound CPU), not where every row costs a step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from ..backends.base import TREE
from ..errors import InvalidParameterError
from ..records import Acceptance, Draft, StepTimes
from ..tree import trie
from .base import BaseProposer, ProposerSpec


@dataclass(frozen=True)
class LookaheadOptions:
    """``window``: Jacobi columns (W); ``ngram``: the n-gram size (N, so N - 1 levels and drafts
    of N - 1 tokens); ``guesses``: n-grams kept per first token, all verified in one tree (G)."""

    window: int = 4
    ngram: int = 3
    guesses: int = 4

    def __post_init__(self) -> None:
        for name, low in (("window", 1), ("ngram", 3), ("guesses", 1)):
            if getattr(self, name) < low:
                raise InvalidParameterError(f"{name} must be >= {low}, got {getattr(self, name)}", param=name)

    @property
    def branch_rows(self) -> int:
        """Rows the lookahead branch adds to a forward."""
        return self.window - 1 + self.window * (self.ngram - 2)


class NgramPool:
    """For each first token, up to ``size`` distinct continuations seen after it, newest first.

    Example: pool = NgramPool(2); pool.add(5, (6, 7)); pool.add(5, (8, 9)); pool.add(5, (6, 7))
    -> pool.get(5) == [(6, 7), (8, 9)].
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._pool: dict[int, list[tuple[int, ...]]] = {}

    def add(self, first: int, continuation: tuple[int, ...]) -> None:
        known = self._pool.setdefault(first, [])
        if continuation in known:
            known.remove(continuation)
        known.insert(0, continuation)
        del known[self.size:]

    def get(self, first: int) -> list[tuple[int, ...]]:
        return list(self._pool.get(first, ()))


def branch(levels: Sequence[Sequence[int]], offset: int) -> tuple[list[int], list[int], list[int]]:
    """The lookahead branch of a window as tree nodes (see the module docstring).

    levels: [L][W] the guesses, L >= 2 levels of W columns; level 0's column 0 is the root (the
    pending token), so its guess is not evaluated. offset: the tree index the branch's first
    node gets (the nodes before it: the root and the draft).
    Returns (tokens, parents, reads): parents index the whole tree (0 the root); ``reads``[c] is
    the position in ``tokens`` of column c's deepest node, whose row is the next Jacobi guess.

    Example: levels [[r, a], [r1, a1]], offset 3 -> tokens [a, r1, a1], parents [0, 0, 3],
    reads [1, 2].
    """
    width, depth = len(levels[0]), len(levels)
    tokens, parents = [], []
    trunk = [0]  # column c's level-0 node
    for c in range(1, width):
        tokens.append(levels[0][c])
        parents.append(trunk[-1])
        trunk.append(offset + len(tokens) - 1)
    above = list(trunk)  # each column's node at the level above
    for j in range(1, depth):
        for c in range(width):
            tokens.append(levels[j][c])
            parents.append(above[c])
            above[c] = offset + len(tokens) - 1
    return tokens, parents, [a - offset for a in above]


def jacobi_step(levels: Sequence[Sequence[int]], root: int, predictions: Sequence[int]
                ) -> tuple[list[list[int]], list[tuple[int, ...]]]:
    """One Jacobi iteration of the window: the n-grams it completed (each column's tokens, the
    root in column 0's first place, then the column's prediction) and the next window (every level
    up one, the predictions as the deepest).

    Example: jacobi_step([[9, 4], [5, 6]], root=3, predictions=[7, 8]) ->
    ([[5, 6], [7, 8]], [(3, 5, 7), (4, 6, 8)]).
    """
    width = len(levels[0])
    grams = [tuple([root if c == 0 else levels[0][c], *(level[c] for level in levels[1:]), predictions[c]])
             for c in range(width)]
    return [list(level) for level in levels[1:]] + [list(predictions)], grams


class Jacobi:
    """A request's Jacobi window and the n-gram pool it fills (see the module docstring): what
    the ``lookahead`` method drafts from, and what auto's lookahead source rides on free rows.

    ``start(prompt, window, ngram)`` sets the window's shape and first guesses (tokens of the
    prompt: any guesses would do, these are likely); ``ride(draft, root)`` adds the branch to a
    draft as its extra nodes; ``learn(guesses)`` takes the target's predictions after the branch's
    deepest nodes (``Acceptance.guesses``) and stores the n-grams they complete."""

    def __init__(self, guesses: int) -> None:
        self.pool = NgramPool(guesses)
        self.levels: list[list[int]] = []
        self._root: int | None = None  # the pending token of the step whose branch is in flight

    def start(self, prompt: Sequence[int], window: int, ngram: int) -> None:
        picks = np.random.default_rng(len(prompt)).choice(np.asarray(prompt), size=(ngram - 1, window))
        self.levels = picks.tolist()

    @property
    def rows(self) -> int:
        """Rows the branch adds to a forward."""
        return len(self.levels[0]) - 1 + len(self.levels[0]) * (len(self.levels) - 1) if self.levels else 0

    def ride(self, draft: Draft, root: int) -> Draft:
        """``draft`` with the branch as its extra nodes (after the pending token ``root``)."""
        self._root = root
        extra, parents, reads = branch(self.levels, 1 + len(draft))
        return replace(draft, extra=tuple(extra), extra_parents=tuple(parents), extra_rows=tuple(reads))

    def learn(self, guesses: Sequence[int]) -> None:
        """One Jacobi step, if the branch rode in the step just verified (else nothing)."""
        if self._root is not None and len(guesses) == len(self.levels[0]):
            self.levels, grams = jacobi_step(self.levels, self._root, guesses)
            for gram in grams:
                self.pool.add(gram[0], gram[1:])
        self._root = None


class LookaheadProposer(BaseProposer):
    """Lookahead decoding: drafts are deterministic (q is None), a tree of the pool's n-grams
    after the pending token, and the Jacobi branch rides in every step (:class:`Jacobi`)."""

    def __init__(self, options: LookaheadOptions, max_nodes: int | None = None) -> None:
        if max_nodes is not None and 1 + options.branch_rows > max_nodes:
            raise InvalidParameterError(f"a lookahead window of {options.window} x {options.ngram - 1} levels needs "
                                        f"{1 + options.branch_rows} tree nodes, more than the backend's "
                                        f"max_tree_nodes ({max_nodes}); choose a smaller window or ngram", param="window")
        self.options, self.room = options, (max_nodes or 1 << 30) - 1 - options.branch_rows  # draft nodes at most
        self.jacobi = Jacobi(options.guesses)
        self.pool = self.jacobi.pool

    def begin(self, prompt: Sequence[int]) -> None:
        self.jacobi.start(prompt, self.options.window, self.options.ngram)

    def propose(self, context: Sequence[int], budget: int, sampling, rng) -> Draft:
        root = int(context[-1])
        found, budget = self.pool.get(root), min(budget, self.room)
        if budget <= 0 or not found:
            draft = Draft()
        elif len(found) == 1:
            draft = Draft(tuple(found[0][:budget]))
        else:
            tokens, parents = trie(found, budget)
            draft = Draft(tokens, None, parents=parents)
        return self.jacobi.ride(draft, root)

    def observe(self, acceptance: Acceptance, times: StepTimes) -> None:
        self.jacobi.learn(acceptance.guesses)


LOOKAHEAD = ProposerSpec("lookahead", "lookahead decoding: Jacobi iterations ride in each forward and fill a pool of "
                         "n-grams, verified as a token tree (Fu et al. 2024)",
                         make=lambda resources, memory, options: LookaheadProposer(
                             options, resources.target.max_tree_nodes),
                         options=LookaheadOptions, requires=frozenset({TREE}), default_budget=8)
