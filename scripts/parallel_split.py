"""Parallel drafting (method ``parallel``) against drafting in turn, per thread split, and what the
measured costs predict for machines with more cores.

    .venv/bin/python scripts/parallel_split.py [--tasks humaneval,mt-bench] [--limit 2] [--rounds 2]
        [-n 96] [-k 4] [--splits 1+1,2+1,1+2,2+2] [--cores 8,16] [--out parallel-out]

1. Costs: the target's forward over k + 1 tokens (what a step verifies) and the draft model's
   one-token forward, each on 1 .. all threads of this machine, alone (medians, interleaved).
2. Speed: per prompt (the first turn of ``--limit`` prompts per task), in ``--rounds`` rounds
   interleaving plain decoding (all threads), ``draft`` (k tokens a step, in turn, all threads)
   ``parallel`` drafting ahead in every step at each split T+D (the target on T threads, the
   draft model on D, at once) and ``parallel`` as it runs by default (ahead only where it
   measured faster, the default split), every sample from a fresh engine memory; greedy answers checked against plain decoding.
   Reported: tok/s, speedup over plain (min / median over prompts and rounds), acceptance and
   the share of steps whose draft the thread had ready.
3. Prediction: a step of ``draft`` costs k d(P) + v(P) (d: a draft token, v: the verify forward,
   on P threads); one of ``parallel`` at T+D costs max(v(T), (k + 1) d(D)) when the thread's
   draft is ready (share r, measured) and k d(D) + v(T) when it is not. Each cost on n threads
   fitted as a / n + b (b: what more threads cannot shorten) to the measured 1..P-thread costs;
   the prediction at P cores checked against the measurement here, then made for ``--cores``,
   for every split, keeping the measured acceptance and r. Bandwidth limits beyond this
   machine's are not in the fit: an extrapolation, said as such in the output.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

import quickdraft
from quickdraft import Engine, Memory
from quickdraft.bench.tasks import load_tasks
from quickdraft.system import cpu_info, default_threads


def forward_costs(engine, k: int, threads: list[int], repeats: int = 7) -> dict[str, dict[int, float]]:
    """Median seconds of the target's (k + 1)-token forward ("verify") and the draft model's
    one-token forward ("draft") on each thread count, after a 200-token context, interleaved."""
    target, draft = engine.target, engine.draft_model()
    rng = np.random.default_rng(0)
    context = [int(t) for t in rng.integers(100, 20000, 200)]
    times: dict[str, dict[int, list[float]]] = {"verify": {n: [] for n in threads}, "draft": {n: [] for n in threads}}
    saved = target.n_threads, draft.n_threads
    try:
        for model in (target, draft):
            model.prefill(context)
        for _ in range(repeats):
            for n in threads:
                for name, model, size in (("verify", target, k + 1), ("draft", draft, 1)):
                    model.set_threads(n)
                    start = time.perf_counter()
                    model.forward([int(t) for t in rng.integers(100, 20000, size)])
                    times[name][n].append(time.perf_counter() - start)
                    model.rollback(len(context))
    finally:
        target.set_threads(saved[0])
        draft.set_threads(saved[1])
    return {name: {n: statistics.median(v) for n, v in per.items()} for name, per in times.items()}


def fit(costs: dict[int, float]) -> tuple[float, float]:
    """(a, b) of cost(n) = a / n + b, least squares over the measured thread counts."""
    ns = np.array(sorted(costs), dtype=float)
    a, b = np.polyfit(1.0 / ns, np.array([costs[int(n)] for n in ns]), 1)
    return float(a), max(0.0, float(b))


def predicted_speedup(verify, draft, cores: int, split: tuple[int, int], k: int, ready: float) -> float:
    """``parallel`` at ``split`` over ``draft`` on ``cores`` threads, by the step costs of the
    module doc (``verify``, ``draft``: (a, b) fits; ``ready``: the share of steps whose draft the
    thread had ready)."""
    def cost(ab, n):
        return ab[0] / n + ab[1]

    t, d = split
    in_turn = k * cost(draft, cores) + cost(verify, cores)
    overlapped = ready * max(cost(verify, t), (k + 1) * cost(draft, d)) + (1 - ready) * (k * cost(draft, d) + cost(verify, t))
    return in_turn / overlapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="humaneval,mt-bench")
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("-n", "--max-tokens", type=int, default=96)
    parser.add_argument("-k", "--num-draft", type=int, default=4)
    parser.add_argument("--splits", default="1+1,2+1,1+2,2+2", help="target+draft threads of each parallel run")
    parser.add_argument("--cores", default="8,16", help="machines to predict for")
    parser.add_argument("--out", type=Path, default=Path("parallel-out"))
    args = parser.parse_args()
    cores = default_threads()
    splits = [tuple(int(x) for x in s.split("+")) for s in args.splits.split(",")]
    engine = quickdraft.load(calibrate=False)
    console = Console()
    console.print(f"{cpu_info().name}, {cores} threads; target {engine.target.path.name}, k = {args.num_draft}")

    costs = forward_costs(engine, args.num_draft, list(range(1, cores + 1)))
    verify, draft = fit(costs["verify"]), fit(costs["draft"])

    prompts = load_tasks(args.tasks.split(","), limit=args.limit)
    def parallel(**options) -> Engine:  # an engine sharing the two models
        return Engine(engine.target, draft=engine.draft_model(), method="parallel", prior=engine.prior, **options)

    runs = [("ar", engine), ("draft", engine), ("parallel measured", parallel())] + [
        (f"parallel {t}+{d}", parallel(target_threads=t, draft_threads=d, ahead="always")) for t, d in splits]
    samples: list[dict] = []
    with Progress(console=console) as progress:
        bar = progress.add_task("samples", total=args.rounds * len(prompts) * len(runs))
        for r in range(args.rounds):
            for prompt in prompts:
                order = runs if r % 2 == 0 else runs[::-1]
                for name, runner in order:
                    runner.memory = Memory()
                    start = time.perf_counter()
                    out = runner.generate(prompt.turns[0], max_tokens=args.max_tokens, method=name.split()[0],
                                          num_draft=args.num_draft)
                    seconds = time.perf_counter() - start
                    sources = out.stats.get("draft_sources") or {}
                    samples.append({"round": r, "task": prompt.task, "prompt": prompt.prompt_id, "run": name,
                                    "tokens": out.token_ids, "tok_s": len(out.token_ids) / seconds,
                                    "acceptance": out.stats.get("acceptance_rate"),
                                    "ready": sources.get("ahead", 0) / max(1, sum(sources.values()))})
                    progress.advance(bar)

    by = {}
    for s in samples:
        by.setdefault((s["round"], s["prompt"]), {})[s["run"]] = s
    table = Table(title=f"parallel drafting, {cpu_info().name}, {cores} threads, k = {args.num_draft}, "
                        f"{args.max_tokens} tokens, greedy")
    for column in ("task", "run", "tok/s (median)", "x plain (min / median)", "acceptance", "draft ready",
                   "exact"):
        table.add_column(column)
    summary = {}
    for task in args.tasks.split(","):
        for name, _ in runs:
            rows = [(group[name], group["ar"]) for group in by.values()
                    if name in group and group[name]["task"] == task]
            ratios = [s["tok_s"] / a["tok_s"] for s, a in rows]
            exact = sum(s["tokens"] == a["tokens"] for s, a in rows)
            ready = statistics.median(s["ready"] for s, _ in rows)
            summary[(task, name)] = {"ratio": statistics.median(ratios), "ready": ready}
            table.add_row(task, name, f"{statistics.median(s['tok_s'] for s, _ in rows):.1f}",
                          f"{min(ratios):.2f} / {statistics.median(ratios):.2f}",
                          "-" if name == "ar" else f"{statistics.median(s['acceptance'] or 0 for s, _ in rows):.0%}",
                          "-" if not name.startswith("parallel") else f"{ready:.0%}", f"{exact}/{len(rows)}")
    console.print(table)

    costs_table = Table(title="costs alone (median ms)")
    for column in ("threads", f"verify ({args.num_draft + 1} tokens)", "draft token"):
        costs_table.add_column(column)
    for n in sorted(costs["verify"]):
        costs_table.add_row(str(n), f"{1000 * costs['verify'][n]:.1f}", f"{1000 * costs['draft'][n]:.1f}")
    console.print(costs_table)

    predicted = Table(title="predicted parallel / draft (fit a/n + b; beyond this machine's cores an extrapolation; "
                            "splits of more threads than cores are measured, not predicted)")
    predicted.add_column("task")
    predicted.add_column("cores")
    predicted.add_column("split T+D")
    predicted.add_column("predicted")
    predicted.add_column("measured")
    predictions = []
    for task in args.tasks.split(","):
        ready = statistics.median(summary[(task, f"parallel {t}+{d}")]["ready"] for t, d in splits)
        for machine in [cores, *(int(c) for c in args.cores.split(","))]:
            candidates = [(t, d) for t, d in splits if t + d <= cores] if machine == cores else \
                [(machine - d, d) for d in (1, 2, 4, machine // 4, machine // 2) if 0 < d < machine]
            for t, d in dict.fromkeys(candidates):
                value = predicted_speedup(verify, draft, machine, (t, d), args.num_draft, ready)
                measured = summary.get((task, f"parallel {t}+{d}")) if machine == cores else None
                draft_ratio = summary[(task, "draft")]["ratio"]
                predicted.add_row(task, str(machine), f"{t}+{d}", f"{value:.2f}",
                                  f"{measured['ratio'] / draft_ratio:.2f}" if measured else "-")
                predictions.append({"task": task, "cores": machine, "split": [t, d], "predicted": value,
                                    "measured": measured and measured["ratio"] / draft_ratio})
    console.print(predicted)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "parallel.json").write_text(json.dumps({
        "cpu": cpu_info().to_dict(), "threads": cores, "k": args.num_draft, "max_tokens": args.max_tokens,
        "costs": {name: {str(n): v for n, v in per.items()} for name, per in costs.items()},
        "fit": {"verify": verify, "draft": draft}, "samples": samples, "predictions": predictions}, indent=1))
    console.print(f"written: {args.out / 'parallel.json'}")


if __name__ == "__main__":
    main()
