"""Relative cost of a token-tree forward on the target, beside a chain of the same size.

    python scripts/tree_cost.py [--target NAME_OR_PATH] [--repeats 7] [--threads N]

Prints, for N = 1, 4, 8, 16 new tokens, the median time of ``forward`` (a chain) and of
``forward_tree`` + ``keep`` for a binary tree and a 4-branch tree, relative to a one-token forward,
measured interleaved after a ~300-token context. Run it on a quiet machine: on 2 shared cores any
other load changes the numbers several-fold.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from quickdraft.backends.llamacpp import LlamaCppBackend
from quickdraft.models import DEFAULT_TARGET

SIZES = (1, 4, 8, 16)
SHAPES = {
    "binary": lambda n: tuple([-1] + [(i - 1) // 2 for i in range(1, n)]),
    "4-branch": lambda n: tuple([-1] + [0 if i <= 4 else i - 4 for i in range(1, n)]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    model = LlamaCppBackend(args.target, n_ctx=2048, n_threads=args.threads)
    context = model.tokenize("def merge_sorted(a, b):\n    result = []\n    i = j = 0\n" * 12, special=False)
    model.prefill(context)
    cached = len(context)

    def timed(run) -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    def chain(n):
        model.forward([300 + i for i in range(n)])
        model.rollback(cached)

    def tree(n, parents):
        model.forward_tree([300 + i for i in range(n)], parents)
        model.keep((0,))
        model.rollback(cached)

    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.repeats):
        for n in SIZES:
            times.setdefault(("chain", n), []).append(timed(lambda: chain(n)))
            for shape, parents in SHAPES.items():
                times.setdefault((shape, n), []).append(timed(lambda: tree(n, parents(n))))
    median = {key: float(np.median(v)) for key, v in times.items()}
    one = median[("chain", 1)]
    print(f"{model.path.name}, {model.n_threads} threads, {cached} cached tokens; one-token forward {1e3 * one:.1f} ms")
    print("N    chain  " + "  ".join(f"{s:>9}" for s in SHAPES))
    for n in SIZES:
        print(f"{n:<4} {median[('chain', n)] / one:5.2f}  " + "  ".join(f"{median[(s, n)] / one:9.2f}" for s in SHAPES))


if __name__ == "__main__":
    main()
