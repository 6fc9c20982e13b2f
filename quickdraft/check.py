"""Is a speculative output the target's own? Compare it with plain AR decoding.

On quantized models llama.cpp's batched evaluation is not bit-identical to one-token
evaluation, so two greedy runs can part where the target's top two logits nearly tie. The
classifier tells such a numeric near-tie from a real divergence by looking at the target's
one-token logits at the first differing position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

DEFAULT_TOLERANCE = 1.0  # logits; we measured batched-vs-single differences up to ~0.6 on Q4_K_M


@dataclass(frozen=True)
class CheckResult:
    """kind: "exact", "near-tie" or "real divergence"; index: first differing generated token;
    margin: target logit of the AR token minus that of the speculative token at ``index``."""

    kind: str
    index: int | None = None
    margin: float | None = None
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def ok(self) -> bool:
        return self.kind != "real divergence"

    def __str__(self) -> str:
        if self.kind == "exact":
            return "exact"
        if self.kind == "near-tie":
            return f"near-tie at token {self.index} (margin {self.margin:.3f}, tolerance {self.tolerance})"
        margin = "unknown" if self.margin is None else f"{self.margin:.3f}"
        return f"real divergence at token {self.index} (margin {margin}, tolerance {self.tolerance})"

    def to_dict(self) -> dict:
        return {"result": self.kind, "index": self.index, "margin": self.margin,
                "tolerance": self.tolerance, "summary": str(self)}


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where a and b differ (a shorter sequence differs where it
    ends early), or None if they are equal.

    Example: first_divergence([1, 2, 3], [1, 2, 4]) == 2; first_divergence([1], [1, 5]) == 1.
    """
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def classify(spec: Sequence[int], ar: Sequence[int], logits_at: Callable[[int], np.ndarray],
             tolerance: float = DEFAULT_TOLERANCE, end_token: int | None = None) -> CheckResult:
    """Classify speculative tokens ``spec`` against AR tokens ``ar`` from the same prompt.

    logits_at(i): the target's one-token logits [V] for generated position i, given the shared
    prefix ``ar[:i]``. Where one sequence ends (EOS) and the other goes on, the missing token is
    ``end_token`` (the EOS id); without one, such a difference counts as a real divergence.
    """
    i = first_divergence(spec, ar)
    if i is None:
        return CheckResult("exact", tolerance=tolerance)
    x = spec[i] if i < len(spec) else end_token
    y = ar[i] if i < len(ar) else end_token
    if x is None or y is None:  # one output ended and nothing says how: no margin to measure
        return CheckResult("real divergence", i, None, tolerance)
    logits = logits_at(i)
    margin = float(logits[y] - logits[x])
    return CheckResult("near-tie" if margin <= tolerance else "real divergence", i, margin, tolerance)


def check_against_ar(engine, prompt_tokens: Sequence[int], spec: Sequence[int], ar: Sequence[int],
                     tolerance: float = DEFAULT_TOLERANCE) -> CheckResult:
    """classify() with the engine's target computing one-token logits after prompt + ar[:i]."""
    target = engine.target

    def logits_at(i: int) -> np.ndarray:
        context = list(prompt_tokens) + list(ar[:i])
        target.prefill(context[:-1])
        return target.forward(context[-1:])[0]

    return classify(spec, ar, logits_at, tolerance, end_token=target.eos_token)
