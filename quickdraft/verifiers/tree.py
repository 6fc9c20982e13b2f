"""Verification of a token tree: walk down from the root, at each node accept at most one child,
and end with one token of the target's own (SpecInfer, Miao et al. 2023; EAGLE, Li et al. 2024).

A tree draft (``Draft.parents`` set) has n tokens; draft token i is tree node i + 1 and node 0 is
the pending token. ``target_logits`` is [n + 1, V]: row j is the target's prediction after node j
and its ancestors, so the children of node j are judged by row j.

Sampling (``verify_tree_sampling``) handles each node's children as a list of candidates, tried
in index order against the target's distribution p at that node:

- *Sampled children* (``draft.q`` given): SpecInfer's multi-step rejection. Child s, drawn from
  its row q_s, is accepted with probability min(1, p(x_s) / q_s(x_s)); if rejected,
  p <- norm(max(0, p - q_s)) and the next child is tried.
  Precondition: each child was drawn from its own q row *independently* of its siblings (given
  the context up to its parent), so siblings may repeat a token; drawing siblings without
  replacement breaks it (use deterministic children and the next rule). Checked: q_s(x_s) > 0.
- *Deterministic children* (``draft.q`` None, e.g. the draft's top-k): q_s is a point mass, so
  child s is accepted with probability p(x_s); if rejected, p(x_s) <- 0 and p is renormalised.
  Precondition: the children are a function of the context alone (not of the verifier's random
  draws) and siblings are distinct. Checked: siblings are distinct.

If every child is rejected (or the node is a leaf), the emitted token is drawn from the final
p (the residual, or the target's p itself at a leaf, the bonus token). By induction over the
children, the token emitted at a node is distributed exactly as the target's p there, whatever
the draft, so the output is lossless.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidParameterError
from ..sampling import SamplingParams, sample, warp
from ..tree import Layout, layout
from ..records import Acceptance, Draft
from .rejection import residual


def _layout(draft: Draft, target_logits: np.ndarray) -> Layout:
    """The draft's tree layout (checked against the logits' shape)."""
    n = len(draft)
    if target_logits.shape[0] != n + 1:
        raise InvalidParameterError(f"a tree of {n} draft tokens needs {n + 1} rows of logits, got {target_logits.shape[0]}")
    return layout(draft.tree_parents())


def _accepted(draft: Draft, tree: Layout, path: list[int], token: int) -> Acceptance:
    tokens = tuple(draft.tokens[node - 1] for node in path) + (token,)
    return Acceptance(tokens=tokens, accepted=len(path), drafted=len(draft), path=tuple(path),
                      depth=max(tree.depth))


def verify_tree_greedy(draft: Draft, target_logits: np.ndarray, sampling: SamplingParams | None = None,
                       rng: np.random.Generator | None = None) -> Acceptance:
    """Follow the child whose token is the target's argmax, from the root down; emit the argmax
    where no child matches. Equals plain greedy decoding: every emitted token is the target's
    argmax given exactly the tokens before it.

    Example: root children (5, 7), node of 7 with child 9; argmax after the root 7, after 7 it
    is 2 -> path (node of 7,), tokens (7, 2).
    """
    tree = _layout(draft, target_logits)
    best = np.argmax(target_logits, axis=-1)
    node, path = 0, []
    while True:
        match = next((c for c in tree.children[node] if draft.tokens[c - 1] == best[node]), None)
        if match is None:
            return _accepted(draft, tree, path, int(best[node]))
        node = match
        path.append(node)


def verify_tree_sampling(draft: Draft, target_logits: np.ndarray, sampling: SamplingParams,
                         rng: np.random.Generator) -> Acceptance:
    """Lossless multi-draft rejection sampling down the tree (rules and preconditions in the
    module docstring). draft: n tokens with parents, q [n, V] or None. target_logits: [n + 1, V]."""
    tree = _layout(draft, target_logits)
    node, path = 0, []
    while True:
        p, chosen, children = warp(target_logits[node], sampling), None, tree.children[node]
        if draft.q is None and len({draft.tokens[c - 1] for c in children}) < len(children):
            raise InvalidParameterError(f"node {node} has repeated deterministic children: "
                                        "the top-k rule needs distinct siblings")
        for c in children:
            x = draft.tokens[c - 1]
            if draft.q is None:
                q = np.zeros_like(p)
                q[x] = 1.0
            else:
                q = draft.q[c - 1]
            if q[x] <= 0:
                raise InvalidParameterError(f"draft token {x} at tree node {c} has q(x) = 0: it was not drawn from q")
            if rng.random() < min(1.0, p[x] / q[x]):
                chosen = c
                break
            p = residual(p, q)
        if chosen is None:
            return _accepted(draft, tree, path, sample(p, rng))
        node = chosen
        path.append(node)
