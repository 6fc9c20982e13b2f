"""Is a speculative output the target's own? Compare it with plain AR decoding.

On quantized models llama.cpp's batched evaluation is not bit-identical to one-token evaluation
(other matmul kernels, an f16 KV cache written in other shapes), so two greedy runs can part where
the target's top two logits nearly tie. A divergence is certified as such a numeric *near-tie*
only when the numerics alone explain it:

1. the target's one-token margin between the AR token and the speculative token is within the
   backend's measured spread (``calibrate.near_tie_tolerance``: the largest change of a logit gap
   between one-token and batched forwards of this model on this machine), or
2. a witness exists: evaluated in one of verification's shapes (a forward of k tokens with this
   position at row j), the target itself ranks the speculative token at least as high.

Anything else is a *real divergence*: the speculative output was not the target's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .calibrate import MAX_K, near_tie_tolerance
from .sampling import SamplingParams, penalize

Witness = Callable[[int, int, int], str | None]  # (index, AR token, speculative token) -> shape, or None


@dataclass(frozen=True)
class CheckResult:
    """kind: "exact", "near-tie" or "real divergence"; index: first differing generated token;
    margin: target logit of the AR token minus that of the speculative token at ``index`` (one-token
    evaluation); tolerance: the measured spread it was held against; witness: the evaluation shape
    in which the target itself prefers the speculative token, when that certified the near-tie."""

    kind: str
    index: int | None = None
    margin: float | None = None
    tolerance: float | None = None
    witness: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind != "real divergence"

    def __str__(self) -> str:
        if self.kind == "exact":
            return "exact"
        margin = "unknown" if self.margin is None else f"{self.margin:.3f}"
        tolerance = "unknown" if self.tolerance is None else f"{self.tolerance:.3g}"
        why = f", {self.witness}" if self.witness else ""
        return f"{self.kind} at token {self.index} (margin {margin}, tolerance {tolerance}{why})"

    def to_dict(self) -> dict:
        return {"result": self.kind, "index": self.index, "margin": self.margin, "tolerance": self.tolerance,
                "witness": self.witness, "summary": str(self)}


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
             tolerance: float, end_token: int | None = None, witness: Witness | None = None) -> CheckResult:
    """Classify speculative tokens ``spec`` against AR tokens ``ar`` from the same prompt.

    logits_at(i): the target's one-token logits [V] for generated position i, given the shared
    prefix ``ar[:i]``. Where one sequence ends (EOS) and the other goes on, the missing token is
    ``end_token`` (the EOS id); without one, such a difference counts as a real divergence.
    witness(i, y, x): an evaluation shape in which the target ranks x at least as high as y at
    position i, or None (asked only when the margin exceeds ``tolerance``).
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
    if margin <= tolerance:
        return CheckResult("near-tie", i, margin, tolerance)
    shape = witness(i, y, x) if witness else None
    return CheckResult("near-tie" if shape else "real divergence", i, margin, tolerance, shape)


def check_against_ar(engine, prompt_tokens: Sequence[int], spec: Sequence[int], ar: Sequence[int],
                     sampling: SamplingParams = SamplingParams()) -> CheckResult:
    """classify() with the engine's target: one-token logits after prompt + ar[:i] (penalized as
    ``sampling`` says, as decoding did), the target's measured near-tie tolerance, and a witness
    search over verification's shapes."""
    target = engine.target

    def logits_at(i: int) -> np.ndarray:
        context = list(prompt_tokens) + list(ar[:i])
        target.prefill(context[:-1])
        return penalize(target.forward(context[-1:]), ar[:i], [()], sampling)[0]

    def witness(i: int, y: int, x: int) -> str | None:
        context = list(prompt_tokens) + list(ar[:i])
        last = len(context) - 1  # the position whose row predicts token i
        for size in range(2, MAX_K + 2):
            for row in range(min(size, last + 1)):
                start = last - row
                target.prefill(context[:start])
                rows = target.forward([*context[start:], *[context[start]] * (size - row - 1)])  # fillers after it
                logits = penalize(rows[row:row + 1], ar[:i], [()], sampling)[0]
                if logits[x] >= logits[y]:
                    return f"witness: a forward of {size} tokens with it at row {row}"
        return None

    tolerance = near_tie_tolerance(target)
    return classify(spec, ar, logits_at, tolerance, end_token=target.eos_token, witness=witness)
