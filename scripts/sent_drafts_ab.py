"""auto with and without its winner's-curse correction, against plain continuous batching, under the server's scheduler.

    .venv/bin/python scripts/sent_drafts_ab.py [--task mt-bench] [--clients 2] [--rounds 8]
        [--variants ar,before,after]

In one process, without HTTP (as scripts/prefill_chunk.py: N closed-loop clients, 2 requests each,
greedy, 128 tokens, a 1.25 s step time), round r sends the task's prompts 4N r .. 4N (r + 1) - 1
to each variant in turn (the order reversed every other round), each from a fresh engine's state:

* ``ar``: plain continuous batching;
* ``after``: auto as it is (its shadow-graded sources scaled by what their sent drafts realized,
  ``AdaptiveBudget.realized``; suffix classes forgetting at ``hybrid.SUFFIX_DECAY``);
* ``before``: auto without either (every source's ``realized`` 1, suffix classes forgetting at 0.9);
* ``decay``: only the slower forgetting; ``realized``: only the scaling.

Per run: wall-clock tokens per second, and the steps taken priced on this machine's calibrated
cost curve (the target's forward over each step's rows; far steadier than the wall clock, since a
variant's decisions are what differ). Prints one JSON line per run and, per variant, its ratio to
the first variant per round (median, mean, min-max).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics

import quickdraft
import quickdraft.engine as engine_module
from quickdraft.control import ForwardCost
from quickdraft.engine import Memory
from quickdraft.proposers import hybrid
from quickdraft.system import cpu_info

from prefill_chunk import run, task_prompts

VARIANTS = {"ar": None, "after": (True, True), "before": (False, False), "decay": (False, True),
            "realized": (True, False)}  # (scaled by realized, slower forgetting)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mt-bench")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--variants", default="ar,before,after")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")

    engine = quickdraft.load(n_ctx=16384)
    priced = ForwardCost.from_prior(engine.prior)  # one fixed curve prices every variant's steps
    ledger = {"tokens": 0, "seconds": 0.0}
    verify_all, make_memory = engine_module.verify_all, hybrid.AutoMemory.__init__
    current = {"variant": "after"}

    def priced_verify(target, generations, drafts):
        acceptances = verify_all(target, generations, drafts)
        ledger["tokens"] += sum(a.accepted + 1 for a in acceptances)
        ledger["seconds"] += priced.seconds(sum(1 + len(d.tokens) + len(d.extra) for d in drafts))
        return acceptances

    def memory_of_variant(memory, resources, options):
        make_memory(memory, resources, options)
        if VARIANTS[current["variant"]] is None:
            return
        scaled, slower = VARIANTS[current["variant"]]
        for name, control in memory.control.items():
            if not scaled:
                control.realized = lambda: 1.0
            if not slower and name.startswith("suffix"):
                control.decay = 0.9

    engine_module.verify_all, hybrid.AutoMemory.__init__ = priced_verify, memory_of_variant
    per = 2 * args.clients
    prompts = task_prompts(engine, args.task, per * args.rounds)
    wall: dict[str, list[float]] = {v: [] for v in variants}
    model: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        chunk = prompts[r * per:(r + 1) * per]
        if len(chunk) < per:
            break
        for variant in variants if r % 2 == 0 else variants[::-1]:
            engine.memory = Memory()
            engine.clear_caches()
            current["variant"] = variant
            ledger.update(tokens=0, seconds=0.0)
            result = asyncio.run(run(engine, chunk, args.clients, "1.25s/ar" if variant == "ar" else "1.25s/auto", 128))
            wall[variant].append(result["tok_s"])
            model[variant].append(ledger["tokens"] / ledger["seconds"])
            print(json.dumps({"round": r, "variant": variant, "tok_s": round(result["tok_s"], 2),
                              "priced_tok_s": round(model[variant][-1], 2)}), flush=True)
    print(f"{cpu_info().name}, {args.task}, {args.clients} clients, {len(wall[variants[0]])} rounds: "
          f"ratio to {variants[0]} per round, median / mean (min-max)")
    for variant in variants:
        for kind, values in (("wall", wall), ("priced", model)):
            ratios = [a / b for a, b in zip(values[variant], values[variants[0]])]
            print(f"{variant} {kind}: {statistics.median(ratios):.3f} / {statistics.mean(ratios):.3f} "
                  f"({min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
