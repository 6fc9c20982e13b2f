"""Drafting with a smaller model of the same vocabulary (Leviathan et al. 2023)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..backends.base import check_same_vocabulary, common_prefix
from ..errors import InvalidParameterError, QuickdraftError
from ..sampling import SamplingParams, sample, warp
from ..tree import best_subtree, chain_parents
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

    Each level expands the ``tree_width`` candidates of the newest level with the highest
    cumulative draft log-probability (evaluated together in one ``extend_tree`` forward); each
    expanded node gets its ``tree_width`` most likely next tokens as candidate children. At the
    end the ``budget`` best candidates overall form the draft (``best_subtree``). Growth stops
    once no frontier node can beat the budget-th best candidate (a child never scores above its
    parent), or at depth ``budget``. ``min_confidence`` drops candidates whose cumulative draft
    probability is below it. The children are deterministic given the context (top-k), so
    sampled requests use the tree verifier's deterministic rule (``q`` is None).
    """

    def __init__(self, target, draft: str | None = None, min_confidence: float = 0.0, tree_width: int = 3,
                 **options: object) -> None:
        super().__init__(target, draft=draft, min_confidence=min_confidence, **options)
        if tree_width < 1:
            raise InvalidParameterError(f"tree_width must be >= 1, got {tree_width}")
        self.tree_width = tree_width

    def propose(self, context: Sequence[int], budget: int, sampling: SamplingParams,
                rng: np.random.Generator) -> Draft:
        if budget <= 0:
            return Draft()
        model = self.model
        model.rollback(common_prefix(model.tokens, context[:-1]))
        if len(context) - len(model.tokens) > model.max_tree_nodes // 2:  # a long catch-up: leave room
            model.prefill(context[:-1])
        trunk = list(context[len(model.tokens):])  # catch up and predict in one forward
        rows = model.forward_tree(trunk, chain_parents(len(trunk)))[-1:]
        evaluated = len(trunk)  # nodes in the draft model's pending tree
        node = {-1: len(trunk) - 1}  # candidate -> its node there (-1: the root)
        frontier = [-1]  # the candidates ``rows`` belong to
        floor = np.log(self.min_confidence) if self.min_confidence else -np.inf
        tokens: list[int] = []
        scores: list[float] = []  # cumulative draft log-probability
        parents: list[int] = []  # -1: a child of the root, else an earlier candidate
        for depth in range(1, budget + 1):
            newest = len(tokens)
            for c, row in zip(frontier, rows):
                logp = row - row.max() - np.log(np.exp(row - row.max()).sum())
                for x in np.argsort(-logp, kind="stable")[:self.tree_width]:
                    score = (scores[c] if c >= 0 else 0.0) + float(logp[x])
                    if score >= floor:
                        tokens.append(int(x))
                        scores.append(score)
                        parents.append(c)
            cut = sorted(scores, reverse=True)[budget - 1] if len(scores) >= budget else -np.inf
            level = sorted(range(newest, len(tokens)), key=lambda c: -scores[c])[:self.tree_width]
            frontier = [c for c in level if scores[c] > cut]  # only these can have children in the best
            if depth == budget or not frontier or evaluated + len(frontier) > model.max_tree_nodes:
                break
            node.update((c, evaluated + j) for j, c in enumerate(frontier))
            rows = model.extend_tree([tokens[c] for c in frontier], [node[parents[c]] for c in frontier])
            evaluated += len(frontier)
        model.keep(tuple(range(len(trunk))))
        kept, tree = best_subtree(scores, parents, budget)
        return Draft(tuple(tokens[c] for c in kept), None, parents=tree)


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
