"""Drafting with a smaller model of the same vocabulary (Leviathan et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..backends.base import TREE, Backend, common_prefix
from ..errors import InvalidParameterError
from ..sampling import SamplingParams, sample, warp
from ..tree import chain_parents, grow_tree
from ..records import Draft
from .base import BaseProposer, ProposerSpec


@dataclass(frozen=True)
class DraftOptions:
    """``min_confidence``: stop drafting where the draft model's top probability is below this."""

    min_confidence: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence < 1.0:
            raise InvalidParameterError(f"min_confidence must be in [0, 1), got {self.min_confidence}",
                                        param="min_confidence")


@dataclass(frozen=True)
class DraftTreeOptions(DraftOptions):
    """``tree_branch``: children per expanded node; ``tree_expand``: nodes expanded per level."""

    tree_branch: int = 3
    tree_expand: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tree_branch < 1 or self.tree_expand < 1:
            raise InvalidParameterError(f"tree_branch and tree_expand must be >= 1, got {self.tree_branch}, "
                                        f"{self.tree_expand}", param="tree_branch")


class DraftModelProposer(BaseProposer):
    """A chain drafted token by token by a small model with its own KV cache.

    Greedy requests draft the draft model's argmax (deterministic draft, q = None); sampled
    requests draw each token from the draft's warped distribution q and return q for the
    rejection verifier. Drafting stops early when the draft's probability of its own next token
    falls below ``min_confidence`` (its softmax at temperature 1 when greedy, else q), because a
    token it doubts is likely rejected and still costs a draft step and a verify slot.

    The draft cache is kept in step with the target's context by reusing the longest common
    prefix (``Backend.prefill``), which is the rollback after a rejection.
    """

    def __init__(self, model: Backend, options: DraftOptions) -> None:
        self.model = model
        self.min_confidence = options.min_confidence

    def begin(self, prompt: Sequence[int]) -> None:
        self.model.prefill(prompt[:-1])

    def propose(self, context: Sequence[int], budget: int, sampling: SamplingParams,
                rng: np.random.Generator) -> Draft:
        if budget <= 0:
            return Draft()
        logits = self.model.prefill(context, last_logits=True)  # catch up and predict in one forward
        return draft_chain(logits, lambda token: self.model.forward([token])[0], budget, sampling, rng,
                           self.min_confidence)


class DraftTreeProposer(DraftModelProposer):
    """A token tree grown by the draft model, EAGLE-2 style (Li et al. 2024, arXiv 2406.16858).

    Every expanded node gets its ``tree_branch`` most likely next tokens as candidate children,
    scored by cumulative draft log-probability (temperature 1). Each level expands the
    ``tree_expand`` best candidates of the newest level, evaluated together in one
    ``extend_tree`` forward, and the ``budget`` best candidates overall form the draft
    (``best_subtree``). With ``tree_expand=1`` a level costs the draft model one token, like a
    chain, and the siblings come for free. Growth stops once no frontier node can beat the
    budget-th best candidate (a child never scores above its parent), or at depth ``budget``.
    ``min_confidence`` drops candidates whose cumulative draft probability is below it. The
    children are deterministic given the context (top-k), so sampled requests use the tree
    verifier's deterministic rule (``q`` is None).
    """

    def __init__(self, model: Backend, options: DraftTreeOptions) -> None:
        super().__init__(model, options)
        self.tree_branch, self.tree_expand = options.tree_branch, options.tree_expand

    def propose(self, context: Sequence[int], budget: int, sampling: SamplingParams,
                rng: np.random.Generator) -> Draft:
        if budget <= 0:
            return Draft()
        model = self.model
        model.rollback(common_prefix(model.tokens, context[:-1]))
        if len(context) - len(model.tokens) > model.max_tree_nodes // 2:  # a long catch-up: leave room
            model.prefill(context[:-1])
        trunk = list(context[len(model.tokens):])  # catch up and predict in one forward
        rows = model.forward_tree(trunk, chain_parents(len(trunk)), rows=[len(trunk) - 1])
        room = min(model.max_tree_nodes, model.n_ctx - len(model.tokens))
        evaluated = len(trunk)  # nodes in the draft model's pending tree
        node = {-1: len(trunk) - 1}  # candidate -> its node there (-1: the root)
        floor = np.log(self.min_confidence) if self.min_confidence else -np.inf

        def children(frontier: list[int], depth: int, tokens: list[int], parents: list[int]):
            nonlocal rows, evaluated
            if depth > 1:  # evaluate the frontier (the last level's best candidates) in one forward
                if evaluated + len(frontier) > room:
                    return [], []
                node.update((c, evaluated + j) for j, c in enumerate(frontier))
                rows = model.extend_tree([tokens[c] for c in frontier], [node[parents[c]] for c in frontier])
                evaluated += len(frontier)
            ids, logp = [], []
            for row in rows:
                top = np.argpartition(-row, self.tree_branch - 1)[:self.tree_branch]  # O(V), not a sort
                top = top[np.argsort(-row[top], kind="stable")]
                log_total = row.max() + np.log(np.exp(row - row.max()).sum())
                ids.append(top.tolist())
                logp.append((row[top] - log_total).tolist())
            return ids, logp

        tokens, tree = grow_tree(children, budget, self.tree_expand, budget, floor)
        model.keep(tuple(range(len(trunk))))
        chain = tree == tuple(range(len(tree)))  # a confident draft: send it the chain way
        return Draft(tokens, None, parents=None if chain else tree)


def draft_chain(logits: np.ndarray, step, budget: int, sampling: SamplingParams, rng: np.random.Generator,
                min_confidence: float = 0.0) -> Draft:
    """Draft up to ``budget`` tokens one at a time from a model's next-token ``logits`` [V];
    ``step(token) -> logits [V]`` feeds a drafted token and predicts the next.

    Greedy requests take the argmax (q = None); sampled ones draw from the warped distribution q
    and return it for the rejection verifier. Stops early when the probability of the next token
    (softmax at temperature 1 when greedy, else q) is below ``min_confidence``.
    """
    tokens: list[int] = []
    qs: list[np.ndarray] = []
    while True:
        if sampling.greedy:
            token = int(np.argmax(logits))
            confidence = 1.0 / np.exp(logits - logits[token]).sum() if min_confidence else 1.0
        else:
            q = warp(logits, sampling)
            token = sample(q, rng)
            confidence = float(q.max())
        if confidence < min_confidence:
            break
        tokens.append(token)
        if not sampling.greedy:
            qs.append(q)
        if len(tokens) == budget:
            break
        logits = step(token)
    return Draft(tuple(tokens), np.stack(qs) if qs else None)


DRAFT = ProposerSpec("draft", "a smaller model with the target's vocabulary drafts a chain (Leviathan et al. 2023)",
                     make=lambda resources, memory, options: DraftModelProposer(resources.draft, options),
                     options=DraftOptions, draft_model="required", tree_variant="draft-tree")
DRAFT_TREE = ProposerSpec("draft-tree", "the draft model grows an EAGLE-2 style token tree",
                          make=lambda resources, memory, options: DraftTreeProposer(resources.draft, options),
                          options=DraftTreeOptions, draft_model="required", requires=frozenset({TREE}))
