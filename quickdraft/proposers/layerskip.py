"""Self-speculation by layer skipping (Draft & Verify, arXiv 2309.08168; SWIFT, arXiv 2410.06916):
the target drafts with a subset of its own decoder layers, sharing its weights and its KV cache
for the context; no second model.

Choosing the layers (``choose_layers``, a short search on the current prompt, in ``begin``):

1. Replay the last ``window`` prompt tokens through the full model once (the cache is left as it
   was) and note each layer's *influence*: 1 - cos(input, output) of its hidden states, averaged
   over the window (ShortGPT's block influence). Layers that barely turn the hidden state are
   the cheapest to skip. Layer 0 and the last layer are never skipped.
2. For a few skip fractions (``fractions`` of all layers), skip that many least-influential
   layers, replay the window through the rest and measure agreement ``a``: the share of positions
   whose argmax equals the full model's.
3. Keep the candidate and draft length k <= ``num_draft`` with the best estimated speedup,
   ``expected_tokens(a, k) / (1 + k * kept / n_layers)`` (a verify forward costs about one step
   on this backend, each draft token the kept share of one), or no drafting when none beats 1.
   With the agreement a small model reaches (about 0.65-0.7 with 20-50% of the 28 layers of
   Qwen2.5-Coder 1.5B skipped), short drafts win.

Beyond the core Backend protocol, the proposer uses only the declared ``LayerSkipping``
interface (backends/base.py: ``n_layers``, ``replay``, ``forward_layers``, ``drop_partial``):
the search replays without changing the cache, and drafting runs ``forward_layers`` from the
pending token; the skipped layers' cache is not touched and the kept layers' draft rows are
dropped before the target verifies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..backends.base import LAYER_SKIP, LayerSkipping
from ..errors import InvalidParameterError, QuickdraftError
from ..sampling import SamplingParams, draft_chain
from ..records import Draft
from .base import BaseProposer, ProposerSpec

FRACTIONS = (0.2, 0.35, 0.5, 0.65)


def expected_tokens(agreement: float, k: int) -> float:
    """Tokens per step when each of ``k`` draft tokens is accepted with probability
    ``agreement`` independently until the first rejection, plus the target's own token:
    1 + a + a^2 + ... + a^k."""
    return float(sum(agreement ** i for i in range(k + 1)))


def estimated_speedup(agreement: float, kept: int, n_layers: int, k: int) -> float:
    """Tokens per unit of time against plain decoding (1.0), assuming a verify forward costs one
    step and a draft token ``kept / n_layers`` of one."""
    return expected_tokens(agreement, k) / (1.0 + k * kept / n_layers)


def influence_order(states: np.ndarray) -> list[int]:
    """Layers from least to most influential, from hidden states [n_layers + 1, n, H] (layer i
    maps states[i] to states[i + 1]): influence = 1 - mean cosine(states[i], states[i + 1]).
    Layer 0 and the last layer are left out (never skipped)."""
    a, b = states[:-1], states[1:]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-9)
    influence = 1.0 - cos.mean(-1)  # [n_layers]
    middle = range(1, len(influence) - 1)
    return sorted(middle, key=lambda i: influence[i])


def choose_layers(target: LayerSkipping, window: int, k: int, fractions: Sequence[float] = FRACTIONS
                  ) -> tuple[list[int] | None, int, dict]:
    """The layers to draft with (sorted, or None: do not draft), the draft length (<= k) and a
    report of the search."""
    n_layers = target.n_layers
    full, states = target.replay(window, layer_states=True)
    reference = full.argmax(-1)
    order = influence_order(states.float().cpu().numpy())
    best, best_k, best_gain, tried = None, 0, 1.0, []
    for fraction in fractions:
        skip = set(order[:max(1, round(fraction * n_layers))])
        layers = [i for i in range(n_layers) if i not in skip]
        agreement = float((target.replay(window, layers).argmax(-1) == reference).mean())
        gain, length = max((estimated_speedup(agreement, len(layers), n_layers, j), j) for j in range(1, k + 1))
        tried.append({"skipped": sorted(skip), "agreement": round(agreement, 3), "num_draft": length,
                      "estimated_speedup": round(gain, 3)})
        if gain > best_gain:
            best, best_k, best_gain = layers, length, gain
    return best, best_k, {"window": window, "candidates": tried, "layers": best, "num_draft": best_k}


@dataclass(frozen=True)
class LayerSkipOptions:
    """``num_draft``: the draft length the search tunes for; ``skip_window``: prompt tokens the
    search replays; ``skip_layers``: a fixed set of layers to skip (no search); ``min_confidence``:
    stop drafting below this top probability."""

    num_draft: int = 4
    skip_window: int = 32
    skip_layers: tuple[int, ...] | None = None
    min_confidence: float = 0.0

    def __post_init__(self) -> None:
        if self.num_draft < 1 or self.skip_window < 2:
            raise InvalidParameterError(f"layerskip needs num_draft >= 1 and skip_window >= 2, got "
                                        f"{self.num_draft} and {self.skip_window}", param="num_draft")


class LayerSkipProposer(BaseProposer):
    """Drafts with the target's own layers minus a skip set chosen per prompt (see module doc),
    through the backend's declared :class:`LayerSkipping` interface."""

    def __init__(self, target: LayerSkipping, options: LayerSkipOptions) -> None:
        self.target, self.k, self.window = target, options.num_draft, options.skip_window
        self.min_confidence = options.min_confidence
        n_layers = target.n_layers
        skip = options.skip_layers
        if skip is not None:
            bad = [i for i in skip if not 0 < i < n_layers]
            if bad:
                raise QuickdraftError(f"skip_layers: layer {bad[0]} cannot be skipped (the model has layers "
                                      f"0..{n_layers - 1}; layer 0 always runs)", param="skip_layers")
        self.fixed = None if skip is None else [i for i in range(n_layers) if i not in set(skip)]
        self.layers: list[int] | None = self.fixed
        self.length = options.num_draft  # draft at most this many tokens (the search may shorten it)
        self.search: dict = {}

    def begin(self, prompt: Sequence[int]) -> None:
        if self.fixed is not None:
            return
        window = min(self.window, len(prompt) - 1)  # the target holds prompt[:-1]
        if window < 2:
            self.layers, self.search = None, {"window": window, "candidates": [], "layers": None}
            return
        self.layers, self.length, self.search = choose_layers(self.target, window, self.k)

    def propose(self, context: Sequence[int], budget: int, sampling: SamplingParams,
                rng: np.random.Generator) -> Draft:
        budget = min(budget, self.length)
        if budget <= 0 or self.layers is None:
            return Draft()
        target = self.target
        if len(target.tokens) != len(context) - 1:
            raise QuickdraftError("layerskip: the target's cache is not the context minus the pending token")
        try:
            logits = target.forward_layers([context[-1]], self.layers)[0]
            return draft_chain(logits, lambda token: target.forward_layers([token], self.layers)[0], budget,
                               sampling, rng, self.min_confidence)
        finally:
            target.drop_partial()


LAYERSKIP = ProposerSpec("layerskip", "the target drafts with its least influential layers skipped (self-speculation)",
                         make=lambda resources, memory, options: LayerSkipProposer(resources.target, options),
                         options=LayerSkipOptions, requires=frozenset({LAYER_SKIP}))
