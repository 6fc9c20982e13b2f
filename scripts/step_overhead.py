"""What the step loop costs beyond llama.cpp's own work (the never-slower goals, README "Overhead").

    .venv/bin/python scripts/step_overhead.py [--target NAME] [--draft NAME] [--tokens 128] [--rounds 3]

In one process, interleaved A B A B over ``--rounds``, on the demo prompt:

* ``raw``: the floor: a bare loop of one-token ``llama_decode`` + argmax on the target;
* ``ar``: quickdraft's plain decoding (``--method ar``) through ``Engine.step``;
* ``auto``: its plain steps (one-token target forwards, no draft drafted) against an ``ar`` step;
* ``draft``: the draft model's cost per drafted token inside the loop against its own plain step
  (``raw`` on the draft model).

Every ``llama_decode`` is timed (target and draft separately), so Python's share of a step is the
step's wall time minus the time inside llama.cpp. Prints one JSON line per measurement and a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import quickdraft
from quickdraft.backends import llamacpp
from quickdraft.system import cpu_info

PROMPT = "Write a Python function that merges two sorted lists."


class DecodeClock:
    """Wraps llama_cpp.llama_decode: seconds and calls per context."""

    def __init__(self):
        self.inner = llamacpp.ll.llama_decode
        self.seconds: dict[int, float] = {}
        self.tokens: list[tuple[int, int]] = []  # (ctx id, n_tokens) of each call since reset
        llamacpp.ll.llama_decode = self

    def __call__(self, ctx, batch):
        start = time.perf_counter()
        status = self.inner(ctx, batch)
        key = ctx_id(ctx)
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
        self.tokens.append((key, batch.n_tokens))
        return status

    def reset(self):
        self.seconds.clear()
        self.tokens.clear()


def ctx_id(ctx) -> int:
    return ctx if isinstance(ctx, int) else getattr(ctx, "value", None) or id(ctx)


def ctx_key(backend) -> int:
    return ctx_id(backend._ctx)


def raw_loop(backend, prompt_ids: list[int], n: int) -> float:
    """Seconds per token of the barest greedy loop on ``backend``."""
    backend.rollback(0)
    logits = backend.prefill(prompt_ids, last_logits=True)
    token = int(np.argmax(logits))
    start = time.perf_counter()
    for _ in range(n):
        token = int(np.argmax(backend.forward([token], outputs="last")[-1]))
    elapsed = time.perf_counter() - start
    backend.rollback(0)
    return elapsed / n


def stepped(engine, clock: DecodeClock, method: str, n: int) -> list[dict]:
    """Run one request step by step; per step: wall seconds, target/draft llama_decode seconds,
    target tokens in the forward, draft decode calls."""
    request = engine.prepare(PROMPT, max_tokens=n, method=method)
    generation = engine.start(request)
    steps = []
    try:
        generation.prefill()
        target, draft = ctx_key(engine.target), ctx_key(engine.draft_model()) if engine.draft_model() else None
        while not generation.done:
            clock.reset()
            start = time.perf_counter()
            engine.step([generation])
            wall = time.perf_counter() - start
            steps.append({
                "wall": wall,
                "target_s": clock.seconds.get(target, 0.0),
                "draft_s": clock.seconds.get(draft, 0.0) if draft is not None else 0.0,
                "target_tokens": sum(t for k, t in clock.tokens if k == target),
                "draft_calls": sum(1 for k, _ in clock.tokens if k == draft),
            })
    finally:
        engine.release(generation)
    stats = generation.result().stats
    steps.append({"stats": {k: stats[k] for k in ("drafted_tokens", "draft_time_s", "generated_tokens")}})
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=quickdraft.DEFAULT_TARGET)
    parser.add_argument("--draft", default=quickdraft.DEFAULT_DRAFT)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    engine = quickdraft.load(args.target, args.draft)
    clock = DecodeClock()
    draft_model = engine.draft_model()
    prompt_ids = engine.prompt_tokens(PROMPT)
    rows: dict[str, list[float]] = {k: [] for k in (
        "raw_ms", "ar_step_ms", "ar_python_ms", "auto_plain_step_ms", "auto_plain_python_ms",
        "draft_raw_ms", "draft_in_loop_ms", "draft_step_ms", "draft_python_ms")}
    for r in range(args.rounds):
        rows["raw_ms"].append(1000 * raw_loop(engine.target, prompt_ids, args.tokens))
        ar = [s for s in stepped(engine, clock, "ar", args.tokens) if "wall" in s]
        rows["ar_step_ms"].append(1000 * statistics.median(s["wall"] for s in ar))
        rows["ar_python_ms"].append(1000 * statistics.median(s["wall"] - s["target_s"] for s in ar))
        auto = [s for s in stepped(engine, clock, "auto", args.tokens) if "wall" in s]
        plain = [s for s in auto if s["target_tokens"] == 1 and s["draft_calls"] == 0]
        if plain:
            rows["auto_plain_step_ms"].append(1000 * statistics.median(s["wall"] for s in plain))
            rows["auto_plain_python_ms"].append(1000 * statistics.median(s["wall"] - s["target_s"] for s in plain))
        rows["draft_raw_ms"].append(1000 * raw_loop(draft_model, prompt_ids, args.tokens))
        run = stepped(engine, clock, "draft", args.tokens)
        stats = run[-1]["stats"]
        rows["draft_in_loop_ms"].append(1000 * stats["draft_time_s"] / max(stats["drafted_tokens"], 1))
        steps = [s for s in run if "wall" in s]
        rows["draft_step_ms"].append(1000 * statistics.median(s["wall"] for s in steps))
        rows["draft_python_ms"].append(1000 * statistics.median(s["wall"] - s["target_s"] - s["draft_s"] for s in steps))
        print(json.dumps({"round": r, **{k: round(v[-1], 3) for k, v in rows.items() if v}}), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    mins = {k: min(v) for k, v in rows.items() if v}
    summary = {
        "cpu": cpu_info().name, "target": args.target, "draft": args.draft, "tokens": args.tokens, "rounds": args.rounds,
        "median_ms": {k: round(v, 3) for k, v in med.items()}, "min_ms": {k: round(v, 3) for k, v in mins.items()},
        "ar_step_over_raw": round(med["ar_step_ms"] / med["raw_ms"], 4),
        "python_share_of_ar_step": round(med["ar_python_ms"] / med["ar_step_ms"], 4),
        "auto_plain_step_over_ar_step": round(med.get("auto_plain_step_ms", float("nan")) / med["ar_step_ms"], 4),
        "draft_in_loop_over_draft_raw": round(med["draft_in_loop_ms"] / med["draft_raw_ms"], 4),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
