"""Typical acceptance (Medusa, Cai et al. 2024, section 3.3.1; vLLM's TypicalAcceptanceSampler).
**LOSSY**: its output is not the target's distribution. Opt-in only (``acceptance="typical"``).

The rule. At a node whose target distribution is p ([V], after penalties and the request's
warping: temperature, top-k, top-p), a drafted child x is accepted when

    p(x) > tau(p) = min(epsilon, delta * exp(-H(p))),     H(p) = -sum over p(y) > 0 of p(y) log p(y)

with epsilon = ``posterior_threshold`` and delta = ``posterior_alpha`` (0.09 and 0.3 = sqrt(0.09),
the defaults of Medusa and vLLM). Which distribution the draft was drawn from does not matter.
A chain's tokens are judged in order; a tree's children in index order, the first that passes
being taken (Medusa instead keeps the longest accepted candidate path of its tree). At the
first node where no child passes, the target's argmax there is emitted (vLLM's recovered
token; the Medusa paper decodes this token greedily too); after a fully accepted draft the
bonus token is sampled from p, as vLLM does. Entropy is exact here; vLLM adds 1e-5 inside the
logarithm, which lowers the entropy of a long-tailed distribution by hundredths of a nat.

What it emits. With S = {y : p(y) > tau} and children drawn independently from q_1..q_m (a
deterministic child is a point mass), the token emitted at a node is distributed as

    t = sum_s (prod_{s' < s} F_s') * q_s restricted to S  +  (prod_s F_s) * [the argmax of p],
    F_s = q_s(outside S)  (the chance child s fails),

and at a leaf as p. t equals p only by accident: a good draft makes t close to its own q on
the typical set, so the output follows the draft where the target is unsure.

How far it moves. ``emission_tv`` gives TV(t, p) = 1/2 sum_y |t(y) - p(y)|: the probability
that the emitted token differs from a plain sample of p when the two are coupled as closely as
possible. The verifier adds it up over the tokens it emits (``Acceptance.tv``), so a generation
reports the mean per emitted token, and the sum over an answer is an upper bound on the total
variation distance between the answer's distribution and plain sampling's (couple the two token
by token: they part only at a position where the coupled tokens differ, and the chance of that
at each position, given the same tokens before it, is that position's TV). Each answer is one
unbiased sample of that bound, computed exactly from the rows verification already has: no
extra runs, no sampling noise beyond which answer was drawn.

Temperature 0: p is a point mass on the argmax, H = 0 and tau = min(epsilon, delta) < 1, so only
the argmax passes and the argmax is emitted: exactly greedy decoding (vLLM gets the same by
making greedy rows one-hot before its sampler). ``TypicalAcceptance`` hands greedy requests the
greedy verifiers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..records import Acceptance, Draft
from ..sampling import SamplingParams, sample, warp
from ..tree import layout

POSTERIOR_THRESHOLD = 0.09  # epsilon: Medusa's and vLLM's default
POSTERIOR_ALPHA = 0.3  # delta: sqrt(epsilon), Medusa's and vLLM's default

Child = int | np.ndarray  # a deterministic child's token, or the q row [V] a sampled child was drawn from


def entropy(p: np.ndarray) -> float:
    """H(p) = -sum p log p over the tokens with p > 0, in nats. p: [V] probabilities.

    Example: entropy([0.5, 0.5, 0]) = log 2 = 0.693.
    """
    p = np.asarray(p, dtype=np.float64)
    # a sum, not np.dot: a BLAS call wakes OpenBLAS's threads, which then spin on the cores the
    # draft model's next forward needs (it measured twice as slow after one on 2 cores)
    return float(-(p * np.log(p, out=np.zeros_like(p), where=p > 0)).sum())


def typical_threshold(p: np.ndarray, posterior_threshold: float = POSTERIOR_THRESHOLD,
                      posterior_alpha: float = POSTERIOR_ALPHA) -> float:
    """tau(p) = min(epsilon, delta * exp(-H(p))): a token passes when p(token) > tau. p: [V].

    Example: p uniform over 4 tokens: H = log 4, delta * exp(-H) = 0.3 / 4 = 0.075 < 0.09, so
    tau = 0.075 and every one of them (0.25) passes; p = (0.9, 0.05, 0.05): H = 0.394,
    0.3 * 0.674 = 0.202 > 0.09, so tau = 0.09 and only the first passes.
    """
    return float(min(posterior_threshold, posterior_alpha * np.exp(-entropy(p))))


def typical_emission(p: np.ndarray, tau: float, children: Sequence[Child]) -> tuple[np.ndarray, np.ndarray]:
    """The distribution of the token typical acceptance emits at a node (module docstring): p
    [V] the target's distribution there, tau its threshold, ``children`` the drafted children in
    the order they are tried, each a token (deterministic) or the q row [V] it was drawn from,
    independently of its siblings. Returns ``(support, t)``: token ids [K] (sorted) and their
    probabilities [K]; every other token has probability 0. No children (a leaf): t = p.

    Example: p = (0.6, 0.3, 0.1), tau = 0.09, one child drawn from q = (0.2, 0.2, 0.6): every
    token passes, so t = q (support (0, 1, 2)); with q = (0.5, 0, 0.5) and tau = 0.2, token 2
    fails half the time and the argmax 0 is emitted instead: t = (1, 0) on support (0, 1).
    """
    if not children:
        support = np.flatnonzero(p)
        return support, p[support]
    best = int(np.argmax(p))
    support = np.union1d(np.flatnonzero(p > tau), [best])
    passes = p[support] > tau
    t, fail = np.zeros(len(support)), 1.0
    for child in children:
        if isinstance(child, (int, np.integer)):
            on = ((support == child) & passes).astype(np.float64)
        else:
            on = np.where(passes, child[support], 0.0)
        t += fail * on
        fail *= max(0.0, 1.0 - on.sum())
    t[np.searchsorted(support, best)] += fail
    return support, t


def emission_tv(p: np.ndarray, support: np.ndarray, t: np.ndarray) -> float:
    """Total variation distance 1/2 sum |t - p| between p [V] and a distribution t [K] on
    ``support`` [K] (zero elsewhere)."""
    outside = max(0.0, 1.0 - float(p[support].sum()))
    return 0.5 * (float(np.abs(t - p[support]).sum()) + outside)


def verify_typical(draft: Draft, target_logits: np.ndarray, sampling: SamplingParams, rng: np.random.Generator,
                   *, posterior_threshold: float = POSTERIOR_THRESHOLD,
                   posterior_alpha: float = POSTERIOR_ALPHA) -> Acceptance:
    """Typical acceptance down a chain or a tree (module docstring): LOSSY.

    draft: n tokens (a chain, or a tree with ``parents``), q [n, V] or None (deterministic).
    target_logits: [n + 1, V], row j the target's prediction after node j (node 0 the pending
    token). Returns the emitted tokens and ``tv``: the sum over them of TV(t, p) at the node each
    was emitted from.

    Example: draft (5, 7), the target's p after the root gives 5 probability 0.3 (> tau) and after
    5 gives 7 probability 0.01 (< tau) -> accepted 1, tokens (5, argmax of row 1).
    """
    n = len(draft)
    assert target_logits.shape[0] == n + 1, (target_logits.shape, n)
    tree = layout(draft.tree_parents())
    node, path, tv = 0, [], 0.0
    while True:
        p = warp(target_logits[node], sampling)
        children = tree.children[node]
        if not children:  # a leaf: the bonus token, from p itself
            token = sample(p, rng)
            break
        tau = typical_threshold(p, posterior_threshold, posterior_alpha)
        tv += emission_tv(p, *typical_emission(p, tau, [draft.tokens[c - 1] if draft.q is None else draft.q[c - 1]
                                                         for c in children]))
        chosen = next((c for c in children if p[draft.tokens[c - 1]] > tau), None)
        if chosen is None:  # no child passes: the target's argmax
            token = int(np.argmax(p))
            break
        node = chosen
        path.append(node)
    tokens = tuple(draft.tokens[c - 1] for c in path) + (token,)
    if draft.parents is None:
        return Acceptance(tokens=tokens, accepted=len(path), drafted=n, tv=tv)
    return Acceptance(tokens=tokens, accepted=len(path), drafted=n, path=tuple(path), depth=max(tree.depth), tv=tv)
