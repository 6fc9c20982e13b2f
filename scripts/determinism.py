#!/usr/bin/env python
"""Does a row's logits depend on the shape of the forward it is computed in?

For one context and one next token, compute the logits of that token's row in forwards of
different shapes: alone (1 token), as row j of a forward of n tokens of the same sequence, and
beside another sequence's tokens in one batch. Prints, per shape, the largest absolute difference
from the one-token row and whether it is bit-identical to the first batched shape.

    .venv/bin/python scripts/determinism.py [--batch-invariant] [model ...]
"""

from __future__ import annotations

import sys

import numpy as np

from quickdraft.backends.base import Chunk
from quickdraft.backends.llamacpp import LlamaCppBackend
from quickdraft.models import resolve_model

TEXT = ("Write a Python function that merges two sorted lists into one sorted list, "
        "and explain its complexity in one sentence.")


def row_in(backend, context: list[int], row: int, size: int, others: int = 0) -> np.ndarray:
    """The logits after context[-1], computed as row ``row`` of a forward of ``size`` tokens of its
    own sequence (fillers after it), beside ``others`` tokens of another sequence."""
    seq, other = backend.new_sequence(), backend.new_sequence()
    try:
        start = len(context) - 1 - row
        seq.prefill(context[:start])
        if others:
            other.prefill(context[:8])
        tokens = [*context[start:], *[context[0]] * (size - row - 1)]
        chunks = [Chunk(seq, tokens)]
        if others:
            chunks.append(Chunk(other, [context[1]] * others, rows="none"))
        return backend.forward_batch(chunks)[0][row]
    finally:
        backend.release(seq)
        backend.release(other)


def main() -> None:
    invariant = "--batch-invariant" in sys.argv
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    for name in names or ["qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-1.5b-instruct-q4_0"]:
        backend = LlamaCppBackend(resolve_model(name), n_ctx=2048, batch_invariant=invariant)
        context = backend.tokenize(backend.chat_prompt([{"role": "user", "content": TEXT}]), special=True)
        alone = row_in(backend, context, 0, 1)
        shapes = [(0, 2, 0), (1, 2, 0), (0, 4, 0), (3, 4, 0), (4, 5, 0), (0, 8, 0), (5, 8, 0), (0, 1, 3), (0, 2, 5),
                  (2, 6, 9)]
        first = None
        print(f"{name}: argmax alone {int(alone.argmax())}")
        for row, size, others in shapes:
            logits = row_in(backend, context, row, size, others)
            first = logits if first is None else first
            print(f"  row {row} of {size}{f' + {others} of another sequence' if others else ''}: "
                  f"max |diff| from alone {np.abs(logits - alone).max():.4g}, "
                  f"identical to row 0 of 2: {np.array_equal(logits, first)}, argmax {int(logits.argmax())}")
        backend.close()


if __name__ == "__main__":
    main()
