"""Medusa and EAGLE proposers: draft from the target's own hidden states.

They read the target only through the declared :class:`~quickdraft.backends.base.HiddenStates`
interface (``model``, ``lm_head``, ``last_hidden``, ``hidden_states``) and never run it: the
target's cache is the engine's.

Which hidden state. When a request begins, the target holds the prompt minus its last token
(m = len(prompt) - 1 positions), and ``hidden_states(start, m)`` gives the prompt's features
whether the prefill evaluated them or found them cached. Then the engine keeps one pending token
(the last emitted, not yet in the target's cache) and feeds ``[pending, *draft]``; row i of
``target.last_hidden`` is the final hidden state after input i. After verification the cache
keeps the root (pending) and the accepted nodes, ``acceptance.kept_nodes()``, and their rows are
the true features of the new cache positions. The last of them is the hidden state whose LM-head
token is the *new* pending token (the bonus or recovered token), so it is the Medusa anchor:
head k on it drafts the (k+1)-th token after the pending one. EAGLE appends all of them to its
own context.

Drafts are deterministic (top-1 per position, ``q = None``), so the verifiers treat them as
point masses and the output stays lossless at any temperature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..backends.base import HiddenStates, common_prefix
from ..sampling import SamplingParams
from ..tree import grow_tree
from ..records import Acceptance, Draft, StepTimes
from . import load_for_target
from .common import DraftVocab, HeadConfig
from .eagle import KVCache


@dataclass
class HeadsMemory:
    """What a heads method keeps across requests (its memory, see proposers/base.py): the loaded
    heads, and EAGLE's own KV cache with the tokens its entries read (``seen``), so a prompt that
    extends an earlier conversation reuses the entries of the common prefix."""

    head: nn.Module
    vocab: DraftVocab
    config: HeadConfig
    cache: KVCache = field(default_factory=KVCache)
    seen: list[int] = field(default_factory=list)

    @classmethod
    def load(cls, target: HiddenStates, kind: str, directory: str | Path | None) -> "HeadsMemory":
        """The ``kind`` heads from ``directory`` (see heads.heads_dir), checked against ``target``."""
        return cls(*load_for_target(directory, kind, target.model, target.lm_head))


class HeadsProposer:
    """What every heads proposer holds: the target (read through ``HiddenStates``), the method's
    memory with the loaded head, and its options (proposers/heads.py). The Proposer protocol
    (proposers/base.py) without ``end``: what a request teaches lives in the memory already."""

    def __init__(self, target: HiddenStates, memory: HeadsMemory, options) -> None:
        self.target, self.memory, self.options = target, memory, options
        self.head, self.vocab, self.config = memory.head, memory.vocab, memory.config

    def end(self, context: Sequence[int]) -> None:
        pass


class MedusaProposer(HeadsProposer):
    """A chain of up to K tokens, head k's top-1 on the anchor (see the module docstring)."""

    anchor: torch.Tensor | None = None  # [H] hidden state of the last cached position

    def begin(self, prompt: Sequence[int]) -> None:
        m = len(prompt) - 1  # cached positions
        self.anchor = self.target.hidden_states(m - 1, m)[0] if m > 0 else None

    def propose(self, context: Sequence[int], budget: int, sampling: SamplingParams,
                rng: np.random.Generator) -> Draft:
        if self.anchor is None or budget <= 0:
            return Draft()
        with torch.no_grad():
            features = self.head(self.anchor)[:budget]  # [k, H]
            tokens = self.vocab.to_full(self.vocab.logits(features).argmax(-1))
        return Draft(tuple(int(t) for t in tokens))

    def observe(self, acceptance: Acceptance, times: StepTimes) -> None:
        self.anchor = self.target.last_hidden[acceptance.kept_nodes()[-1]]


class EagleProposer(HeadsProposer):
    """EAGLE drafting: the head reads the target's true features of the whole context (its own
    KV cache), then extrapolates token by token from its own guesses (see heads/eagle.py).

    State: the head's cache holds positions ``0 .. fed - 1`` (true features only; draft
    positions are cropped after each proposal) and ``pending`` [P, H] holds the true features of
    positions ``fed .. fed + P - 1`` not yet fed (feeding position t needs token x_{t+1}).
    The cache and ``seen``, the tokens its entries read (entry t read x_0..x_{t+1}), are the
    method's memory: a new prompt that extends an earlier conversation reuses the entries of the
    common prefix.
    """

    def __init__(self, target: HiddenStates, memory: HeadsMemory, options) -> None:
        super().__init__(target, memory, options)
        self.embed = target.model.get_input_embeddings()
        self.cache, self.pending = memory.cache, None

    @property
    def fed(self) -> int:
        return len(self.cache)

    def begin(self, prompt: Sequence[int]) -> None:
        m = len(prompt) - 1  # cached positions
        self.cache.crop(max(0, min(self.fed, common_prefix(self.memory.seen, prompt) - 1)))
        self.pending = self.target.hidden_states(self.fed, m)

    def _feed(self, features: torch.Tensor, next_tokens: Sequence[int], start: int) -> torch.Tensor:
        """Run the head on features [T, H] at positions start.. with the tokens that follow them;
        return its guess of the feature after the last one [H]."""
        ids = torch.as_tensor([list(next_tokens)], device=features.device)
        positions = torch.arange(start, start + len(features), device=features.device)
        out = self.head(features[None].to(self.vocab.weight.dtype), self.embed(ids), positions, self.cache)
        return out[0, -1]

    def propose(self, context: Sequence[int], budget: int, sampling: SamplingParams,
                rng: np.random.Generator) -> Draft:
        m = len(context) - 1  # position of the pending token
        if budget <= 0 or self.pending is None or not len(self.pending):
            return Draft()
        assert self.fed + len(self.pending) == m, (self.fed, len(self.pending), m)
        tokens: list[int] = []
        with torch.no_grad():
            guess = self._feed(self.pending, context[self.fed + 1:m + 1], self.fed)  # guess of f_m
            self.pending = self.pending[:0]
            while True:
                tokens.append(int(self.vocab.to_full(self.vocab.logits(guess).argmax(-1))))
                if len(tokens) == budget:
                    break
                guess = self._feed(guess[None], tokens[-1:], m + len(tokens) - 1)
        self.cache.crop(m)  # forget the draft positions: their features were guesses
        self.memory.seen = list(context)
        return Draft(tuple(tokens))

    def observe(self, acceptance: Acceptance, times: StepTimes) -> None:
        rows = self.target.last_hidden[list(acceptance.kept_nodes())]
        self.pending = rows if self.pending is None else torch.cat([self.pending, rows])


def _top(vocab, logits: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``width`` best full token ids and their log-probabilities: logits [F, Vd] -> 2 x [F, width]."""
    logp, index = torch.log_softmax(logits.float(), -1).topk(width, dim=-1)
    return vocab.to_full(index), logp


class MedusaTreeProposer(MedusaProposer):
    """Medusa's tree: the Cartesian product of each head's top ``tree_width`` tokens, pruned to
    the ``budget`` nodes of highest joint probability (the heads' probabilities multiplied)."""

    def propose(self, context, budget, sampling, rng) -> Draft:
        if self.anchor is None or budget <= 0:
            return Draft()
        width = self.options.tree_width
        with torch.no_grad():
            ids, logp = _top(self.vocab, self.vocab.logits(self.head(self.anchor)), width)  # [K, w]

        def children(frontier, depth, tokens, parents):  # every node of a depth shares head depth - 1's guesses
            return [ids[depth - 1].tolist()] * len(frontier), [logp[depth - 1].tolist()] * len(frontier)

        tokens, parents = grow_tree(children, budget, width, self.head.num_heads)
        return Draft(tokens, None, parents=parents)


class EagleTreeProposer(EagleProposer):
    """EAGLE-2's dynamic tree: each level runs the head once on the best ``tree_width`` frontier
    nodes (a tree attention mask over its cache), each node proposing its ``tree_width`` most
    likely next tokens; the ``budget`` best nodes by cumulative probability form the draft."""

    def propose(self, context, budget, sampling, rng) -> Draft:
        m, width = len(context) - 1, self.options.tree_width
        if budget <= 0 or self.pending is None or not len(self.pending):
            return Draft()
        with torch.no_grad():
            root_guess = self._feed(self.pending, context[self.fed + 1:m + 1], self.fed)  # guess of f_m
            self.pending = self.pending[:0]
            guess = {-1: root_guess}  # candidate -> its guess of the next feature
            entries: dict[int, list[int]] = {-1: []}  # candidate -> cache entries of it and its ancestors

            def children(frontier, depth, tokens, parents):
                if depth > 1:  # expand: feed (parent's guess, token) of each frontier node at once
                    start = len(self.cache)
                    mask = torch.zeros(len(frontier), start + len(frontier), dtype=torch.bool)
                    mask[:, :m] = True
                    for j, c in enumerate(frontier):
                        entries[c] = entries[parents[c]] + [start + j]
                        mask[j, entries[c]] = True
                    features = torch.stack([guess[parents[c]] for c in frontier])[None]
                    ids = torch.as_tensor([[tokens[c] for c in frontier]], device=features.device)
                    positions = torch.full((len(frontier),), m + depth - 2, device=features.device)
                    out = self.head(features, self.embed(ids), positions, self.cache, mask.to(features.device))[0]
                    guess.update(zip(frontier, out))
                rows = torch.stack([guess[c] for c in frontier])
                ids, logp = _top(self.vocab, self.vocab.logits(rows), width)
                return ids.tolist(), logp.tolist()

            tokens, parents = grow_tree(children, budget, width, budget)
            draft = Draft(tokens, None, parents=parents)
        self.cache.crop(m)
        self.memory.seen = list(context)
        return draft


PROPOSER_CLASSES = {("medusa", False): MedusaProposer, ("medusa", True): MedusaTreeProposer,
                    ("eagle", False): EagleProposer, ("eagle", True): EagleTreeProposer}
