"""The exact distribution the statistical tests compare speculative sampling against, and the
tests' own reference for penalties (OpenAI's formula written out, independent of the engine)."""

from collections import Counter
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy.stats import chisquare

from quickdraft.sampling import SamplingParams, warp


def penalized_row(row: np.ndarray, generated: Sequence[int], presence_penalty: float = 0.0,
                  frequency_penalty: float = 0.0, logit_bias: dict | None = None) -> np.ndarray:
    """[V] logits after OpenAI's penalties over ``generated`` and its ``logit_bias``, the slow way."""
    counts = np.bincount(np.asarray(generated, dtype=int), minlength=len(row)).astype(float)
    out = np.asarray(row, dtype=float) - counts * frequency_penalty - (counts > 0) * presence_penalty
    for token, bias in (logit_bias or {}).items():
        out[int(token)] += bias
    return out


def sampled_pairs_counts(engine, prompt: list[int], draws: int, **options) -> tuple[Counter, int, int]:
    """(counts, drafted, accepted): the first two tokens of ``draws`` generations of 3 tokens
    seeded 0 .. draws - 1 (temperature 1, top-k 3, drafts of 3; ``options``: the method and what
    is tested), counted, and the draft tokens they drafted and had accepted."""
    counts, drafted, accepted = Counter(), 0, 0
    for seed in range(draws):
        out = engine.generate(prompt, max_tokens=3, temperature=1.0, top_k=3, seed=seed, num_draft=3, **options)
        counts[tuple(out.token_ids[:2])] += 1
        drafted += out.stats["drafted_tokens"]
        accepted += out.stats["accepted_tokens"]
    return counts, drafted, accepted


def chi_square_pvalue(exact: Mapping[tuple, float], counts: Mapping[tuple, int], draws: int) -> float:
    """The chi-square test's p-value of ``counts`` (of ``draws`` samples) against the ``exact``
    distribution; 0 when a pair outside its support was drawn."""
    if {k for k, n in counts.items() if n} - set(exact):
        return 0.0
    keys = sorted(exact)
    return chisquare([counts.get(k, 0) for k in keys], [exact[k] * draws for k in keys]).pvalue


def two_token_distribution(target, prompt: list[int], params: SamplingParams,
                           process: Callable[[np.ndarray, list[int]], np.ndarray] = lambda row, generated: row,
                           ) -> dict[tuple[int, int], float]:
    """P(first two sampled tokens = (a, b)) after ``prompt``, from the target's own logits, each
    row ``process``ed (given the tokens generated before it) and warped: the support is every pair
    the warp allows (top-k 3: at most 9 pairs)."""
    return token_distribution(target, prompt, params, 2, process)


def token_distribution(target, prompt: list[int], params: SamplingParams, length: int,
                       process: Callable[[np.ndarray, list[int]], np.ndarray] = lambda row, generated: row,
                       ) -> dict[tuple[int, ...], float]:
    """P(first ``length`` sampled tokens = t) after ``prompt`` for every t the warp allows, from
    the target's own logits (each row ``process``ed given the tokens before it, then warped)."""
    exact: dict[tuple[int, ...], float] = {}

    def grow(prefix: list[int], probability: float) -> None:
        if len(prefix) == length:
            exact[tuple(prefix)] = probability
            return
        context = [*prompt, *prefix]
        target.prefill(context[:-1])
        p = warp(process(target.forward(context[-1:])[0], prefix), params)
        for token in np.flatnonzero(p):
            grow([*prefix, int(token)], probability * p[token])

    grow([], 1.0)
    return exact
