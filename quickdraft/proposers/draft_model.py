"""Drafting with a smaller model (Leviathan et al. 2023): of the target's vocabulary, token ids
directly (a chain or a tree); of another vocabulary, text that the target's tokenizer turns into its
tokens (bridge.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..backends.base import TREE, Backend, common_prefix
from ..bridge import Bridge
from ..errors import InvalidParameterError
from ..sampling import SamplingParams, draft_chain
from ..tree import chain_parents, grow_tree
from ..records import Draft
from .base import BaseProposer, ProposerSpec, Resources


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

    def behind(self, context: Sequence[int]) -> int:
        """Tokens of ``context`` the draft model's cache lacks (a catch-up evaluates them)."""
        return len(context) - common_prefix(self.model.tokens, context)


class BridgedDraftProposer(BaseProposer):
    """A chain from a draft model of another vocabulary: it reads the context as text and drafts
    text, which the target's tokenizer turns into the draft (bridge.BridgedDrafter).

    The draft is the draft model's greedy text for greedy and sampled requests alike, and
    deterministic (q = None): its tokens have no probability in the target's vocabulary, so the
    rejection verifier takes the draft as a point mass (token x accepted with probability p(x),
    else a token from p without x), exact for any draft chosen without the verifier's random
    numbers. ``min_confidence`` stops the draft model where its top probability is below it.
    """

    def __init__(self, model, bridge: Bridge, options: DraftOptions) -> None:
        self.drafter = bridge.drafter(model, options.min_confidence)

    def begin(self, prompt: Sequence[int]) -> None:
        self.drafter.begin(prompt)

    def propose(self, context: Sequence[int], budget: int, sampling: SamplingParams,
                rng: np.random.Generator) -> Draft:
        return Draft(self.drafter.propose(context, budget, rng))

    def behind(self, context: Sequence[int]) -> int:
        """How far the draft model is behind ``context``, in target tokens."""
        return self.drafter.behind(context)


def drafter(resources: Resources, options: DraftOptions) -> DraftModelProposer | BridgedDraftProposer:
    """The chain drafter of the engine's draft model: in the target's vocabulary, or through text
    when the draft model's vocabulary is another (``resources.bridge``)."""
    if resources.bridge is None:
        return DraftModelProposer(resources.draft, options)
    return BridgedDraftProposer(resources.draft, resources.bridge, options)


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


DRAFT = ProposerSpec("draft", "a smaller model drafts a chain (Leviathan et al. 2023); one of another vocabulary "
                     "drafts text, tokenized for the target",
                     make=lambda resources, memory, options: drafter(resources, options),
                     options=DraftOptions, draft_model="required", draft_vocabulary="any", tree_variant="draft-tree")
DRAFT_TREE = ProposerSpec("draft-tree", "the draft model grows an EAGLE-2 style token tree",
                          make=lambda resources, memory, options: DraftTreeProposer(resources.draft, options),
                          options=DraftTreeOptions, draft_model="required", requires=frozenset({TREE}))
