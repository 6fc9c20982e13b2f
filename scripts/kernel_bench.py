"""Compare llama.cpp builds' cost of one forward over k new tokens (docs/kernels.md).

    python3 scripts/kernel_bench.py run --build py0.3.36=PATH/llama-bench --build b11434=PATH/llama-bench \
        --model M1.gguf --model M2.gguf --threads 2 --rounds 3 --out bench-out/kernels
    python3 scripts/kernel_bench.py report bench-out/kernels

``run`` calls ``llama-bench -m MODEL -p 1,2,3,4,5,8,12,16,17 -n 0 -t T -r 5 -o json`` once per build,
model, thread count and round, the builds interleaved (A B in even rounds, B A in odd ones), and
before each call waits until the machine is quiet (under 10% of the CPU busy for 2 s: this is a
shared 2-core machine), saving each call's JSON as ``<out>/<build>__<model>__t<T>__r<round>.json``.
``report`` prints, per model, threads and build, the ms of k=1 and cost(k)/cost(1) for each k (each
call's median over its 5 repetitions; the ratio within a round; the median over rounds), and the
builds' ms against each other, paired by round.

``llama-bench -p k`` times one llama_decode of k tokens at depth 0 with logits for the last row only;
verification needs them for all k rows (scripts/logits_cost.cpp times both).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

KS = (1, 2, 3, 4, 5, 8, 12, 16, 17)


def cpu_busy(seconds: float = 2.0) -> float:
    """The fraction of all CPU time spent busy over the next ``seconds`` (from /proc/stat)."""
    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return idle, sum(fields)
    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(limit: float = 0.10) -> float:
    while (busy := cpu_busy()) > limit:
        print(f"  machine busy ({busy:.0%}), waiting", file=sys.stderr, flush=True)
        time.sleep(20)
    return busy


def interleaved(args, depths=(None,)):
    """(round, build name, binary, model, threads, depth) in the order the runs go: for each model,
    depth and thread count every build in turn, the builds' order reversed every other round."""
    builds = [b.split("=", 1) for b in args.build]
    for r in range(args.rounds):
        for model in args.model:
            for depth in depths:
                for threads in args.threads:
                    for name, binary in (builds if r % 2 == 0 else builds[::-1]):
                        yield r, name, binary, model, threads, depth


def measure(cmd: list[str], label: str) -> tuple[str, float]:
    """Run ``cmd`` once the machine is quiet: (its output, how busy the machine was before)."""
    busy = wait_quiet()
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    print(f"{label}: {time.time() - t0:.0f} s (busy before {busy:.0%})", file=sys.stderr, flush=True)
    return res.stdout, busy


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ks = ",".join(str(k) for k in args.k)
    for r, name, binary, model, threads, _ in interleaved(args):
        path = out / f"{name}__{Path(model).stem}__t{threads}__r{r}.json"
        if path.exists():
            continue
        cmd = [binary, "-m", model, "-p", ks, "-n", "0", "-t", str(threads), "-r", str(args.reps), "-o", "json"]
        stdout, busy = measure(cmd, f"round {r} {name} {Path(model).stem} t{threads}")
        path.write_text(json.dumps({"cmd": cmd, "busy_before": busy, "rows": json.loads(stdout)}, indent=1))


def load(out: Path):
    """{(model, threads, build): {k: {round: ms}}}: each call's median over its repetitions."""
    table: dict = defaultdict(lambda: defaultdict(dict))
    for path in sorted(out.glob("*.json")):
        name, model, threads, rnd = path.stem.split("__")
        for row in json.loads(path.read_text())["rows"]:
            table[(model, int(threads[1:]), name)][row["n_prompt"]][int(rnd[1:])] = statistics.median(row["samples_ns"]) / 1e6
    return table


def report(args) -> None:
    """Per model, threads and build: k=1 in ms (median over rounds, and the range of rounds), then
    cost(k)/cost(1) (the ratio within each round, median over rounds). Then, per model and threads,
    build against build: ms(k) of the second over the first, paired by round (median)."""
    table = load(Path(args.out))
    ks = sorted({k for costs in table.values() for k in costs})
    print("| model | threads | build | rounds | k=1 ms (range) | " + " | ".join(f"k={k}" for k in ks[1:]) + " |")
    print("|---|---|---|---|---|" + "---|" * (len(ks) - 1))
    for (model, threads, name), costs in sorted(table.items()):
        one = costs[1]
        rel = {k: statistics.median(costs[k][r] / one[r] for r in costs[k]) for k in ks[1:]}
        cells = " | ".join(f"{rel[k]:.2f}" for k in ks[1:])
        print(f"| {model} | {threads} | {name} | {len(one)} | {statistics.median(one.values()):.1f} "
              f"({min(one.values()):.1f}-{max(one.values()):.1f}) | {cells} |")
    print()
    groups = defaultdict(dict)
    for (model, threads, name), costs in table.items():
        groups[(model, threads)][name] = costs
    print("| model | threads | builds | " + " | ".join(f"k={k}" for k in ks) + " |")
    print("|---|---|---|" + "---|" * len(ks))
    for (model, threads), builds in sorted(groups.items()):
        names = sorted(builds, reverse=True)  # py0.3.36 first, then b11434
        if len(names) != 2:
            continue
        a, b = builds[names[0]], builds[names[1]]
        cells = " | ".join(f"{statistics.median(b[k][r] / a[k][r] for r in a[k] if r in b[k]):.2f}" for k in ks)
        print(f"| {model} | {threads} | {names[1]} / {names[0]} | {cells} |")


def run_logits(args) -> None:
    """scripts/logits_cost.cpp's binary per build (NAME=path/to/logits-cost), interleaved like run."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ks = ",".join(str(k) for k in args.k)
    for r, name, binary, model, threads, depth in interleaved(args, args.depth):
        path = out / f"{name}__{Path(model).stem}__t{threads}__d{depth}__r{r}.jsonl"
        if path.exists():
            continue
        cmd = [binary, model, str(threads), str(args.reps), str(depth), ks]
        stdout, _ = measure(cmd, f"round {r} {name} {Path(model).stem} t{threads} depth {depth}")
        path.write_text(stdout)


def report_logits(args) -> None:
    """Per model, depth, threads and build: ms with logits for the last row and for all rows (median of
    each call's median over rounds), and what the other rows cost per row."""
    table: dict = defaultdict(lambda: defaultdict(list))
    for path in sorted(Path(args.out).glob("*.jsonl")):
        name, model, threads, depth, _ = path.stem.split("__")
        for line in path.read_text().splitlines():
            row = json.loads(line)
            table[(model, int(depth[1:]), int(threads[1:]), name)][(row["k"], row["mode"])].append(
                statistics.median(row["samples_ns"]) / 1e6)
    ks = sorted({k for costs in table.values() for k, _ in costs})
    print("| model | depth | threads | build | rounds | " + " | ".join(f"k={k} last / all ms" for k in ks) + " |")
    print("|---|---|---|---|---|" + "---|" * len(ks))
    for key, costs in sorted(table.items()):
        med = {kk: statistics.median(v) for kk, v in costs.items()}
        cells = " | ".join(f"{med[(k, 'last')]:.0f} / {med[(k, 'all')]:.0f}" for k in ks)
        print(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {len(costs[(1, 'last')])} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    def runs(parser, binary: str):  # what both kinds of run take
        parser.add_argument("--build", action="append", required=True, help=f"NAME=path/to/{binary} (two or more)")
        parser.add_argument("--model", action="append", required=True)
        parser.add_argument("--threads", type=int, action="append")
        parser.add_argument("--k", type=int, nargs="+", default=list(KS))
        parser.add_argument("--reps", type=int, default=5)
        parser.add_argument("--rounds", type=int, default=2)
        parser.add_argument("--out", required=True)

    runs(sub.add_parser("run"), "llama-bench")
    p = sub.add_parser("report")
    p.add_argument("out")
    lr = sub.add_parser("run-logits", help="last-row against all-row logits (scripts/logits_cost.cpp)")
    runs(lr, "logits-cost")
    lr.add_argument("--depth", type=int, action="append")
    lp = sub.add_parser("report-logits")
    lp.add_argument("out")
    args = parser.parse_args()
    if args.command in ("run", "run-logits"):
        args.threads = args.threads or [2]
    if args.command == "run":
        run(args)
    elif args.command == "run-logits":
        args.depth = args.depth or [0]
        run_logits(args)
    elif args.command == "report-logits":
        report_logits(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
