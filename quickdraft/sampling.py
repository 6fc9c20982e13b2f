"""Sampling parameters, warping logits into probabilities, and drawing tokens.

This module is the only place randomness enters: every draw takes an explicit
``np.random.Generator``; nothing uses global random state. The target's ``p`` and the
proposer's ``q`` are warped by the same :func:`warp` with the same parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidParameterError


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen. ``temperature == 0`` means greedy (argmax).

    top_k: keep the k most likely tokens (0 = all). top_p: keep the smallest set of most likely
    tokens whose probability reaches top_p (1.0 = all). seed: for a reproducible rng.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise InvalidParameterError(f"temperature must be a finite number >= 0, got {self.temperature}",
                                        param="temperature")
        if not (0 < self.top_p <= 1):
            raise InvalidParameterError(f"top_p must be in (0, 1], got {self.top_p}", param="top_p")
        if self.top_k < 0:
            raise InvalidParameterError(f"top_k must be >= 0 (0 disables it), got {self.top_k}", param="top_k")
        if self.seed is not None and self.seed < 0:
            raise InvalidParameterError(f"seed must be >= 0, got {self.seed}", param="seed")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def warp(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Turn logits into the distribution tokens are drawn from.

    logits: [..., V] float. Returns [..., V] float64 probabilities, rows summing to 1.
    Greedy (temperature 0) gives a point mass on the argmax. Order: temperature, top-k, top-p
    (the order llama.cpp and vLLM apply them), each on the result of the previous.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if params.greedy:
        probs = np.zeros_like(logits)
        np.put_along_axis(probs, logits.argmax(axis=-1)[..., None], 1.0, axis=-1)
        return probs
    z = logits / params.temperature
    if params.top_k and params.top_k < z.shape[-1]:
        kth = np.partition(z, -params.top_k, axis=-1)[..., -params.top_k, None]
        z = np.where(z < kth, -np.inf, z)
    z = z - z.max(axis=-1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=-1, keepdims=True)
    if params.top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass strictly above each token
        keep_sorted = before < params.top_p  # always keeps the most likely token
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """Draw one token id from ``probs`` [V] (non-negative, summing to ~1)."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(probs) - 1))


def choose(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """The token a plain decoding step emits from ``logits`` [V]."""
    if params.greedy:
        return int(np.argmax(logits))
    return sample(warp(logits, params), rng)
