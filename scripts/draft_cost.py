"""What a draft model's token costs: its output layer (the most a restricted draft vocabulary,
FR-Spec arXiv 2502.14856, could save) and the catch-up forward that starts each draft.

    .venv/bin/python scripts/draft_cost.py [--model NAME] [--rounds 5] [--tokens 48]

After a 200-token context: ``--tokens`` one-token forwards with the logits of the new position
against the same forwards without any (llama.cpp then skips the output matrix), interleaved over
``--rounds`` (ms per token, min and median, and the output layer's share of a draft step); then
forwards of 1, 2, 3 and 4 rows with the last row's logits (what a catch-up of that many accepted
tokens costs, median ms and relative to one row).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import quickdraft
from quickdraft.backends.llamacpp import LlamaCppBackend
from quickdraft.models import resolve_model
from quickdraft.system import cpu_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=quickdraft.DEFAULT_DRAFT)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()

    model = LlamaCppBackend(resolve_model(args.model), n_ctx=4096)
    rng = np.random.default_rng(0)
    ms: dict[str, list[float]] = {"last": [], "none": []}
    for r in range(args.rounds):
        for outputs in ("last", "none") if r % 2 == 0 else ("none", "last"):
            model.rollback(0)
            model.prefill([int(t) for t in rng.integers(100, 20000, 200)])
            start = time.perf_counter()
            for _ in range(args.tokens):
                model.forward([int(rng.integers(100, 20000))], outputs=outputs)
            ms[outputs].append(1000 * (time.perf_counter() - start) / args.tokens)
    median = {k: statistics.median(v) for k, v in ms.items()}
    rows: dict[int, list[float]] = {n: [] for n in (1, 2, 3, 4)}
    for _ in range(6 * args.rounds):
        for n in rows:
            length = len(model.tokens)
            start = time.perf_counter()
            model.forward([int(t) for t in rng.integers(100, 20000, n)], outputs="last")
            rows[n].append(1000 * (time.perf_counter() - start))
            model.rollback(length)
    one = statistics.median(rows[1])
    print(json.dumps({"cpu": cpu_info().name, "model": args.model, "threads": model.n_threads,
                      "with_logits_ms": [round(min(ms["last"]), 2), round(median["last"], 2)],
                      "without_logits_ms": [round(min(ms["none"]), 2), round(median["none"], 2)],
                      "output_layer_share": round(1 - median["none"] / median["last"], 3),
                      "rows_ms": {n: round(statistics.median(v), 2) for n, v in rows.items()},
                      "rows_relative": {n: round(statistics.median(v) / one, 2) for n, v in rows.items()}},
                     indent=1))


if __name__ == "__main__":
    main()
