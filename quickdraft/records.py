"""The data that flows through one speculative step (docs/design.md, "The step").

Shapes: ``n`` is the number of draft tokens, ``V`` the vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TokenLogprob:
    """The target's log-probability of an emitted ``token`` (its distribution after penalties and
    logit_bias, at temperature 1: before temperature, top-k and top-p), and ``top``: the most
    likely tokens there as ``(token, logprob)`` pairs, most likely first (as many as asked)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Draft:
    """Proposed continuation of the context: a chain of ``n`` tokens, or a tree of them.

    tokens: [n] token ids, in order (for a tree: in topological order, parents first).
    q: [n, V] the proposer's warped distribution each token was sampled from, or None when
       the draft is deterministic (greedy drafting, n-gram copying). For verification a
       deterministic draft is a point mass: q(x) = 1 for the drafted token x.
    parents: None for a chain; for a tree, [n] where draft token i is tree node i + 1 and
       ``parents[i]`` is its parent node (0 = the pending token, the root; see tree.py). The
       tree's parents array is ``(-1, *parents)``; a chain would be ``(0, 1, ..., n - 1)``.
       With q, each child was sampled from its q row independently of its siblings; without,
       siblings are distinct tokens chosen from the context alone (verifiers/tree.py).
    extra: [m] tokens evaluated in the same forward that are not drafts (never emitted, never
       verified): lookahead's Jacobi branch. Tree nodes n + 1 .. n + m, after the draft's.
    extra_parents: [m] the parent of each extra node, a node of the whole tree (0 the root,
       1..n the draft's, n + 1.. the extra ones before it).
    extra_rows: the extra nodes (0..m-1) whose predictions the proposer reads back
       (``Acceptance.guesses``); the other rows are not computed.
    """

    tokens: tuple[int, ...] = ()
    q: np.ndarray | None = None
    parents: tuple[int, ...] | None = None
    source: str = ""  # where the draft came from, when a method has several sources (auto); for stats
    extra: tuple[int, ...] = ()
    extra_parents: tuple[int, ...] = ()
    extra_rows: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.q is not None and self.q.shape[0] != len(self.tokens):
            raise ValueError(f"q has {self.q.shape[0]} rows for {len(self.tokens)} draft tokens")
        if self.parents is not None and len(self.parents) != len(self.tokens):
            raise ValueError(f"parents has {len(self.parents)} entries for {len(self.tokens)} draft tokens")
        if len(self.extra_parents) != len(self.extra):
            raise ValueError(f"extra_parents has {len(self.extra_parents)} entries for {len(self.extra)} extra tokens")

    def forward_tree(self) -> tuple[tuple[int, ...], list[int]] | None:
        """The whole tree the target evaluates when it is not a plain chain: (parents of the root,
        the draft and the extra nodes; the rows to compute: the root's, the draft's and
        ``extra_rows``). None for a chain without extras."""
        if self.parents is None and not self.extra:
            return None
        n = len(self.tokens)
        return self.tree_parents() + self.extra_parents, [*range(n + 1), *(n + 1 + i for i in self.extra_rows)]

    def tree_parents(self) -> tuple[int, ...]:
        """The parents array of the tree (root first): (-1, *parents), or a chain's."""
        return (-1, *(self.parents if self.parents is not None else range(len(self.tokens))))

    def row_prefixes(self) -> tuple[tuple[int, ...], ...]:
        """[n + 1] for each row of the verification logits, the draft tokens it was computed
        after: a chain's row i follows ``tokens[:i]``, a tree's row j the tokens on the path from
        the root down to node j (node j's own included, the root's not).

        Example: the tree ``tokens (5, 7, 9), parents (0, 0, 1)`` -> ((), (5,), (7,), (5, 9)).
        """
        parents, prefixes = self.tree_parents(), [()]
        for node in range(1, len(parents)):
            prefixes.append((*prefixes[parents[node]], self.tokens[node - 1]))
        return tuple(prefixes)

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class Acceptance:
    """What the verifier kept of a draft.

    tokens: the emitted tokens: the ``accepted`` draft tokens followed by exactly one token of
        the target's own (the recovered token at the first rejection, or the bonus token after a
        fully accepted draft). Contract: ``len(tokens) == accepted + 1``.
    accepted: number of draft tokens kept, 0 <= accepted <= drafted.
    drafted: number of draft tokens proposed.
    path: for a tree draft, the tree nodes of the accepted draft tokens (root excluded, so
        ``len(path) == accepted``); empty for a chain (its nodes are 1..accepted).
    depth: for a tree draft, its longest root-to-leaf path in draft tokens (its positions);
        None for a chain (``drafted``).
    guesses: the target's greedy prediction after each of the draft's ``extra_rows`` (what
        lookahead's Jacobi window learns from); empty without extras.
    logprobs: [accepted + 1] the target's log-probabilities of ``tokens`` when the request asks
        for them (the engine adds them after the verifier), else None.
    tv: how far a lossy acceptance rule moved the emitted tokens from the target's distribution:
        the sum over them of the total variation distance between the distribution each was
        emitted from and the target's there (verifiers/typical.py); 0 for a lossless rule.
    """

    tokens: tuple[int, ...]
    accepted: int
    drafted: int
    path: tuple[int, ...] = ()
    depth: int | None = None
    guesses: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None
    tv: float = 0.0

    def __post_init__(self) -> None:
        assert 0 <= self.accepted <= self.drafted, (self.accepted, self.drafted)
        assert len(self.tokens) == self.accepted + 1, (self.tokens, self.accepted)
        assert not self.path or len(self.path) == self.accepted, (self.path, self.accepted)
        assert self.logprobs is None or len(self.logprobs) == len(self.tokens), (self.logprobs, self.tokens)

    def kept_nodes(self) -> tuple[int, ...]:
        """The tree path the cache keeps, root included: (0, *path) (a chain: 0..accepted)."""
        return (0, *(self.path or range(1, self.accepted + 1)))

    @property
    def positions(self) -> int:
        """How many draft positions (depths) the draft covered: ``depth`` or, for a chain, ``drafted``."""
        return self.drafted if self.depth is None else self.depth


@dataclass(frozen=True)
class StepTimes:
    """What one step cost, in seconds: ``draft_s`` proposing, ``verify_s`` the target's forward
    over the pending token and the draft, the acceptance rule and the cache trim. ``batch``: the
    generations that shared that forward (what each learns from it counts 1/batch of a step)."""

    draft_s: float
    verify_s: float
    batch: int = 1


@dataclass(frozen=True)
class Piece:
    """One chunk of a streamed generation: the text of ``token_ids`` and where they came from.

    from_draft[i] is True when token_ids[i] was proposed by the proposer and accepted by the
    target, False for tokens the target produced itself (recovered, bonus, plain steps).
    logprobs[i]: the target's log-probability of token_ids[i] (drafted ones included), when the
    request asked for them (``Engine.prepare(logprobs=k)``), else None.
    """

    text: str
    token_ids: tuple[int, ...]
    from_draft: tuple[bool, ...]
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True)
class GenerationResult:
    """A finished generation: ``text``, its ``token_ids``, why it stopped and its stats;
    ``logprobs`` (one per token id) when the request asked for them."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_tokens)
    stats: dict = field(default_factory=dict)
    prompt_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None

    def to_dict(self) -> dict:
        out = {
            "text": self.text,
            "token_ids": list(self.token_ids),
            "finish_reason": self.finish_reason,
            "stats": self.stats,
        }
        if self.logprobs is not None:
            out["logprobs"] = [{"token": lp.token, "logprob": lp.logprob, "top": [list(t) for t in lp.top]}
                               for lp in self.logprobs]
        return out
