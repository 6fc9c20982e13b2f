"""Medusa and EAGLE proposers: draft from the target's own hidden states (torch backend).

Which hidden state. The engine keeps one pending token (the last emitted, not yet in the
target's cache) and feeds ``[pending, *draft]``; row i of ``target.last_hidden`` is the final
hidden state after input i. After verification the cache keeps the root (pending) and the
accepted nodes, ``acceptance.kept_nodes()``, and their rows are the true features of the new
cache positions. The last of them is the hidden state whose LM-head token is the *new* pending
token (the bonus or recovered token), so it is the Medusa anchor: head k on it drafts the
(k+1)-th token after the pending one. EAGLE appends all of them to its own context.

Drafts are deterministic (top-1 per position, ``q = None``), so the verifiers treat them as
point masses and the output stays lossless at any temperature.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import QuickdraftError
from ..sampling import SamplingParams
from ..types import Acceptance, Draft
from . import load_for_target
from .eagle import KVCache


def _check_backend(target, method: str, heads: str | None) -> None:
    if not all(hasattr(target, a) for a in ("last_hidden", "model", "lm_head")):
        raise QuickdraftError(f"method '{method}' reads the target's hidden states: use the torch backend "
                              "(--backend torch)")
    if not heads:
        raise QuickdraftError(f"method '{method}' needs trained heads (--heads DIR); make them with "
                              f"`quickdraft train {method} --target MODEL --out DIR`")


def prompt_features(target, prompt: Sequence[int], start: int) -> torch.Tensor:
    """The target's final hidden states for prompt positions ``start .. m - 1`` [m - start, H],
    called right after the engine's ``target.prefill(prompt[:-1])`` (m = len(prompt) - 1).

    The prefill leaves the rows of the positions it evaluated in ``last_hidden`` (the trailing
    ones: a cached prefix is not evaluated again). Rows it did not evaluate are recomputed by
    rolling the target back to ``start`` and prefilling again.
    """
    m = len(prompt) - 1
    start = max(0, start)
    if start >= m:
        return torch.empty(0, target.model.config.hidden_size)
    rows = target.last_hidden
    if rows is None or len(rows) < m - start or list(target.tokens) != list(prompt[:-1]):
        target.rollback(min(start, len(target.tokens)))
        target.prefill(prompt[:-1])
        rows = target.last_hidden
    return rows[len(rows) - (m - start):]


class MedusaProposer:
    """A chain of up to K tokens, head k's top-1 on the anchor (see the module docstring)."""

    def __init__(self, target, heads: str | None = None, **_: object) -> None:
        _check_backend(target, "medusa", heads)
        self.target = target
        self.head, self.vocab, self.config = load_for_target(heads, "medusa", target.model, target.lm_head)
        self.anchor: torch.Tensor | None = None  # [H] hidden state of the last cached position

    def begin(self, prompt: Sequence[int]) -> None:
        rows = prompt_features(self.target, prompt, len(prompt) - 2)
        self.anchor = rows[-1] if len(rows) else None

    def propose(self, context: Sequence[int], budget: int, sampling: SamplingParams,
                rng: np.random.Generator) -> Draft:
        if self.anchor is None or budget <= 0:
            return Draft()
        with torch.no_grad():
            features = self.head(self.anchor)[:budget]  # [k, H]
            tokens = self.vocab.to_full(self.vocab.logits(features).argmax(-1))
        return Draft(tuple(int(t) for t in tokens))

    def observe(self, acceptance: Acceptance) -> None:
        self.anchor = self.target.last_hidden[acceptance.kept_nodes()[-1]]


class EagleProposer:
    """EAGLE drafting: the head reads the target's true features of the whole context (its own
    KV cache), then extrapolates token by token from its own guesses (see heads/eagle.py).

    State: the head's cache holds positions ``0 .. fed - 1`` (true features only; draft
    positions are cropped after each proposal) and ``pending`` [P, H] holds the true features of
    positions ``fed .. fed + P - 1`` not yet fed (feeding position t needs token x_{t+1}).
    """

    def __init__(self, target, heads: str | None = None, **_: object) -> None:
        _check_backend(target, "eagle", heads)
        self.target = target
        self.head, self.vocab, self.config = load_for_target(heads, "eagle", target.model, target.lm_head)
        self.embed = target.model.get_input_embeddings()
        self.cache, self.pending = KVCache(), None

    @property
    def fed(self) -> int:
        return len(self.cache)

    def begin(self, prompt: Sequence[int]) -> None:
        self.cache = KVCache()
        self.pending = prompt_features(self.target, prompt, 0)

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
        return Draft(tuple(tokens))

    def observe(self, acceptance: Acceptance) -> None:
        rows = self.target.last_hidden[list(acceptance.kept_nodes())]
        self.pending = rows if self.pending is None else torch.cat([self.pending, rows])
