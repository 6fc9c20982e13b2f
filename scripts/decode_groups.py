"""What splitting a batched forward into several ``llama_decode`` calls (``decode_groups``) saves.

    .venv/bin/python scripts/decode_groups.py [--reps 3] [--scheduler --clients 16 --rounds 2]

Shapes: 16 sequences of 300 tokens in the target's cache (as under load); for each shape (N
sequences x R new tokens each, optionally a 64-token prompt chunk of a new sequence), the
median time of the forward in one ``llama_decode`` against the groups ``forward_batch`` makes,
the two interleaved.

``--scheduler``: the server's scheduler in process (``scripts/prefill_chunk.py``'s closed loop:
N clients x 2 code-edit requests, 128 tokens, default engine), one decode per step against the
groups, interleaved over rounds, each run from a fresh engine's state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from contextlib import contextmanager

import numpy as np

import quickdraft
import quickdraft.backends.llamacpp as llamacpp
from quickdraft.backends.base import Chunk
from quickdraft.engine import Memory
from quickdraft.models import DEFAULT_TARGET, resolve_model
from quickdraft.system import cpu_info

SHAPES = [(16, 1, 0), (16, 3, 0), (16, 5, 0), (8, 8, 0), (6, 12, 0), (4, 16, 0), (2, 40, 0), (16, 1, 64),
          (4, 5, 64), (1, 17, 64)]


@contextmanager
def one_decode(on: bool):
    """Within: every forward_batch in one llama_decode (on) or in its groups (off)."""
    groups = llamacpp.decode_groups
    if on:
        llamacpp.decode_groups = lambda chunks, *args: [list(range(len(chunks)))] if chunks else []
    try:
        yield
    finally:
        llamacpp.decode_groups = groups


def shapes(reps: int) -> None:
    backend = llamacpp.LlamaCppBackend(resolve_model(DEFAULT_TARGET), n_ctx=16384, n_threads=2)
    rng = np.random.default_rng(0)

    def tokens(n: int) -> list[int]:
        return [int(t) for t in rng.integers(100, 20000, n)]

    sequences = [backend.new_sequence() for _ in range(16)]
    for s in sequences:
        s.prefill(tokens(300))

    def once(n: int, r: int, prompt: int) -> float:
        joining = backend.new_sequence()
        chunks = [Chunk(s, tokens(r)) for s in sequences[:n]]
        chunks += [Chunk(joining, tokens(prompt), rows="none")] if prompt else []
        start = time.perf_counter()
        backend.forward_batch(chunks)
        took = time.perf_counter() - start
        for s in sequences[:n]:
            s.rollback(300)
        backend.release(joining)
        backend.forget_retired()
        return took

    print(f"{cpu_info().name}, 2 threads, {DEFAULT_TARGET}, 16 sequences of 300 tokens in the cache; median of {reps}")
    print("| forward | one llama_decode | groups | ratio |\n|---|---|---|---|")
    for n, r, prompt in SHAPES:
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(reps):
            for single in (True, False):
                with one_decode(single):
                    times[single].append(once(n, r, prompt))
        one, split = (1000 * statistics.median(times[k]) for k in (True, False))
        name = f"{n} sequences x {r} rows" + (f" + a {prompt}-token prompt chunk" if prompt else "")
        print(f"| {name} | {one:.0f} ms | {split:.0f} ms | {split / one:.2f} |", flush=True)


def scheduler(clients: int, rounds: int) -> None:
    from prefill_chunk import run, task_prompts  # the closed loop over the server's scheduler

    engine = quickdraft.load(n_ctx=16384)
    prompts = task_prompts(engine, "code-edit", 2 * clients)
    results: dict[bool, list[dict]] = {True: [], False: []}
    for r in range(rounds):
        for single in (True, False) if r % 2 == 0 else (False, True):
            engine.memory = Memory()
            engine.clear_caches()
            with one_decode(single):
                result = asyncio.run(run(engine, prompts, clients, 64, 128))
            results[single].append(result)
            print(json.dumps({"round": r, "one_decode": single, **{k: round(v, 3) for k, v in result.items()}}),
                  flush=True)
    for single, runs in results.items():
        cells = [f"{key} {statistics.median(x[key] for x in runs):.2f} ({min(x[key] for x in runs):.2f}-"
                 f"{max(x[key] for x in runs):.2f})" for key in ("tok_s", "ttft_p50_s", "tpot_p50_ms", "pause_max_s")]
        print("one decode" if single else "groups    ", " | ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--scheduler", action="store_true")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.scheduler:
        scheduler(args.clients, args.rounds)
    else:
        shapes(args.reps)


if __name__ == "__main__":
    main()
