"""Drafting with a smaller model of the same vocabulary (Leviathan et al. 2023)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..backends.base import check_same_vocabulary, common_prefix
from ..errors import InvalidParameterError, QuickdraftError
from ..sampling import SamplingParams, sample, warp
from ..tree import chain_parents, grow_tree
from ..types import Acceptance, Draft
from .base import register


@register("draft")
class DraftModelProposer:
    """A chain drafted token by token by a small model with its own KV cache.

    Greedy requests draft the draft model's argmax (deterministic draft, q = None); sampled
    requests draw each token from the draft's warped distribution q and return q for the
    rejection verifier. Drafting stops early when the draft's probability of its own next token
    falls below ``min_confidence`` (its softmax at temperature 1 when greedy, else q), because a
    token it doubts is likely rejected and still costs a draft step and a verify slot.

    The draft cache is kept in step with the target's context by reusing the longest common
    prefix (``Backend.prefill``), which is the rollback after a rejection.
    """

    needs_draft_model = True

    def __init__(self, target, draft: str | None = None, min_confidence: float = 0.0, **_: object) -> None:
        if not draft:
            raise QuickdraftError(f"method {self.name!r} needs a draft model (--draft NAME or PATH)")
        if not 0.0 <= min_confidence < 1.0:
            raise InvalidParameterError(f"min_confidence must be in [0, 1), got {min_confidence}")
        self.model = target.sibling(draft)
        check_same_vocabulary(target, self.model)
        self.min_confidence = min_confidence

    def begin(self, prompt: Sequence[int]) -> None:
        self.model.prefill(prompt[:-1])

    def propose(self, context: Sequence[int], budget: int, sampling: SamplingParams,
                rng: np.random.Generator) -> Draft:
        if budget <= 0:
            return Draft()
        logits = self.model.prefill(context, last_logits=True)  # catch up and predict in one forward
        return draft_chain(logits, lambda token: self.model.forward([token])[0], budget, sampling, rng,
                           self.min_confidence)

    def observe(self, acceptance: Acceptance) -> None:
        pass


@register("draft-tree")
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

    def __init__(self, target, draft: str | None = None, min_confidence: float = 0.0, tree_branch: int = 3,
                 tree_expand: int = 1, **options: object) -> None:
        super().__init__(target, draft=draft, min_confidence=min_confidence, **options)
        if tree_branch < 1 or tree_expand < 1:
            raise InvalidParameterError(f"tree_branch and tree_expand must be >= 1, got {tree_branch}, {tree_expand}")
        self.tree_branch, self.tree_expand = tree_branch, tree_expand

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
