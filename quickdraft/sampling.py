"""Sampling parameters, warping logits into probabilities, and drawing tokens.

This module is the only place randomness enters: every draw takes an explicit
``np.random.Generator``; nothing uses global random state. The target's ``p`` and the
proposer's ``q`` are warped by the same :func:`warp` with the same parameters.

The order of processing, as plain decoding applies it: the model's logits, then
:func:`penalize` (presence and frequency penalties over the tokens generated so far, and
``logit_bias``), then :func:`constrain` (a grammar's mask), then :func:`warp` (temperature,
top-k, top-p). :func:`token_logprobs` reports log-probabilities of the penalized and constrained
logits at temperature 1.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import InvalidParameterError
from .records import Draft, TokenLogprob

MAX_PENALTY = 2.0  # presence and frequency penalties lie in [-2, 2] (OpenAI's range)
MAX_BIAS = 100.0  # a logit_bias value lies in [-100, 100]
MAX_LOGPROBS = 20  # most likely alternatives reported per token at most


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are chosen. ``temperature == 0`` means greedy (argmax).

    top_k: keep the k most likely tokens (0 = all). top_p: keep the smallest set of most likely
    tokens whose probability reaches top_p (1.0 = all). seed: for a reproducible rng.
    presence_penalty, frequency_penalty, logit_bias: what :func:`penalize` applies to the
    target's logits before warping (``logit_bias``: ``(token id, bias)`` pairs, token ids
    distinct; checked against the vocabulary by ``Engine.prepare``).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

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
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (np.isfinite(value) and -MAX_PENALTY <= value <= MAX_PENALTY):
                raise InvalidParameterError(f"{name} must be in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}], got {value}",
                                            param=name)
        tokens = [token for token, _ in self.logit_bias]
        if any(token < 0 for token in tokens) or len(set(tokens)) < len(tokens):
            raise InvalidParameterError("logit_bias keys must be distinct token ids >= 0", param="logit_bias")
        for token, bias in self.logit_bias:
            if not (np.isfinite(bias) and -MAX_BIAS <= bias <= MAX_BIAS):
                raise InvalidParameterError(f"logit_bias values must be in [-{MAX_BIAS:g}, {MAX_BIAS:g}], got "
                                            f"{bias} for token {token}", param="logit_bias")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalized(self) -> bool:
        """Whether :func:`penalize` changes anything."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def penalize(logits: np.ndarray, generated: Sequence[int], before: Sequence[Sequence[int]],
             params: SamplingParams) -> np.ndarray:
    """The logits plain decoding samples from, at every row of a verification forward.

    logits: [R, V], row r the model's prediction after the tokens generated so far and then
    ``before[r]`` (the draft tokens that row was computed after: ``Draft.row_prefixes()``; ``()``
    for a plain step). generated: the completion's tokens so far (the prompt is not counted, as
    OpenAI counts). Returns [R, V] float64 (``logits`` itself when ``params`` penalize nothing)::

        logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty
        logit[j] += logit_bias[j]

    where count[j] counts token j in ``generated`` plus ``before[r]``: a drafted position is
    penalized exactly as plain decoding would penalize it after the same tokens, so speculation
    stays lossless with respect to the penalized distribution.

    Example: presence 1, frequency 0.5, generated (7, 7), before ((), (7,), (7, 3)): token 7 gets
    -2 in row 0, -2.5 in rows 1 and 2; token 3 gets -1.5 in row 2 only.
    """
    if not params.penalized:
        return logits

    def penalty(count: np.ndarray) -> np.ndarray:
        return count * params.frequency_penalty + (count > 0) * params.presence_penalty

    out = np.array(logits, dtype=np.float64)
    counts = Counter(generated)
    if counts:
        ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        out[:, ids] -= penalty(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
    for row, tokens in zip(out, before):
        for token, extra in Counter(tokens).items():
            had = np.float64(counts[token])
            row[token] -= penalty(had + extra) - penalty(had)
    if params.logit_bias:
        ids, bias = zip(*params.logit_bias)
        out[:, list(ids)] += bias
    return out


def constrain(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The logits plain constrained decoding samples from: ``logits`` [R, V] with the tokens
    ``allowed`` [R, V] (bool: a grammar's tokens after each row's prefix, grammar.Constraint)
    does not allow set to -inf, so every warp gives them probability 0.

    Example: logits [[1, 2, 3]], allowed [[True, False, True]] -> [[1, -inf, 3]].
    """
    return np.where(allowed, logits, -np.inf)


def token_logprobs(logits: np.ndarray, tokens: Sequence[int], top: int) -> tuple[TokenLogprob, ...]:
    """Each token's log-probability under its row's softmax, with the ``top`` most likely tokens.

    logits: [R, V] (row r the distribution ``tokens[r]`` was chosen from, penalized but not
    warped: temperature 1, no top-k or top-p). tokens: [R]. ``top``: 0 to V; the top tokens come
    most likely first, and only tokens that could be chosen (a grammar's mask leaves fewer).
    """
    out = []
    for row, token in zip(np.asarray(logits, dtype=np.float64), tokens):
        shifted = row - row.max()
        logp = shifted - np.log(np.exp(shifted).sum())
        best = np.argpartition(-logp, top - 1)[:top] if top else np.empty(0, dtype=np.int64)  # O(V), no sort
        best = best[np.lexsort((best, -logp[best]))]
        best = best[np.isfinite(logp[best])]
        out.append(TokenLogprob(int(token), float(logp[token]),
                                tuple((int(t), float(logp[t])) for t in best)))
    return tuple(out)


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


def draft_chain(logits: np.ndarray, step, budget: int, sampling: SamplingParams, rng: np.random.Generator,
                min_confidence: float = 0.0, stopped=lambda: False) -> Draft:
    """Draft up to ``budget`` tokens one at a time from a model's next-token ``logits`` [V];
    ``step(token) -> logits [V]`` feeds a drafted token and predicts the next.

    Greedy requests take the argmax (q = None); sampled ones draw from the warped distribution q
    and return it for the rejection verifier. Stops early when the probability of the next token
    (softmax at temperature 1 when greedy, else q) is below ``min_confidence``, or when
    ``stopped()`` says so (checked before each forward: drafting on another thread, told to stop).
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
        if len(tokens) == budget or stopped():
            break
        logits = step(token)
    return Draft(tuple(tokens), np.stack(qs) if qs else None)
