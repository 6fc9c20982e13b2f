"""auto against the best single source and draft length chosen in hindsight, per task.

    .venv/bin/python scripts/hindsight.py [--tasks humaneval,code-edit,mt-bench,everyday,grounded]
        [--ks 2,4,8] [--limit 3] [--repeat 2] [-n 96] [--out hindsight-out]

Runs ``quickdraft bench`` once with ``auto`` and once per draft length k with every single source
(``suffix``, ``ngram``, ``draft``, drafting k tokens every step), each run against plain decoding
interleaved in that run, every sample from a fresh engine. Then, per task, the best
(source, k) in hindsight (its geometric-mean speedup over the task's prompt-turns, as the bench
report computes it), auto's, and auto / best: how much the controller loses to an oracle that
knew the task's best fixed choice in advance (the goal: at least 0.95). Runs resume (``--out``
keeps one folder per run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from quickdraft.bench.metrics import summarize
from quickdraft.system import cpu_info

SOURCES = ("suffix", "ngram", "draft")


def bench(out: Path, methods: str, k: int | None, args: argparse.Namespace) -> list[dict]:
    """The rows of one bench run (resumed if its folder has results)."""
    exe = Path(sys.executable).with_name("quickdraft")
    cmd = [str(exe), "bench", "--tasks", args.tasks, "--methods", methods, "--limit", str(args.limit),
           "--repeat", str(args.repeat), "-n", str(args.max_tokens), "--out", str(out)]
    if k is not None:
        cmd += ["-k", str(k)]
    if (out / "results.json").exists():
        cmd.append("--resume")
    subprocess.run(cmd, check=True)
    return summarize(json.loads((out / "results.json").read_text())["samples"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="humaneval,code-edit,mt-bench,everyday,grounded")
    parser.add_argument("--ks", default="2,4,8", help="draft lengths for the single sources")
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("-n", "--max-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=Path("hindsight-out"))
    args = parser.parse_args()
    auto = {r["task"]: r for r in bench(args.out / "auto", "ar,auto", None, args) if r["method"] == "auto"}
    fixed: dict[str, list[tuple[float, str]]] = {}
    for k in (int(k) for k in args.ks.split(",")):
        for r in bench(args.out / f"k{k}", ",".join(("ar", *SOURCES)), k, args):
            if r["method"] in SOURCES and r["speedup"]:
                fixed.setdefault(r["task"], []).append((r["speedup"], f"{r['method']} k={k}"))
    table = Table(title=f"auto against the best fixed (source, k) in hindsight, {cpu_info().name}")
    for column in ("task", "auto", "best in hindsight", "its speedup", "auto / best"):
        table.add_column(column)
    lines = [f"{cpu_info().name}; {args.tasks}; {args.limit} prompts, {args.repeat} repeats, {args.max_tokens} tokens;"
             f" single sources at k = {args.ks}", "",
             "| task | auto | best in hindsight | its speedup | auto / best |", "|---|---|---|---|---|"]
    for task, row in auto.items():
        best, name = max(fixed.get(task, [(1.0, "plain")]))
        best = max(best, 1.0)  # plain decoding is a fixed choice too
        name = name if best > 1.0 else "plain"
        cells = (task, f"{row['speedup']:.2f}x", name, f"{best:.2f}x", f"{row['speedup'] / best:.2f}")
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console().print(table)
    (args.out / "hindsight.md").write_text("\n".join(lines) + "\n")
    print(f"table: {args.out / 'hindsight.md'}")


if __name__ == "__main__":
    main()
