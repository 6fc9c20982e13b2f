"""Record the traces replay prices policies on (quickdraft/bench/traces.py): per prompt-turn the
target's greedy answer and the draft model's greedy continuation at every position of it.

    .venv/bin/python scripts/record_traces.py [--tasks humaneval,code-edit,mt-bench,everyday,grounded]
        [--limit 8] [-n 96] [--out quickdraft/bench/data/traces.json.gz]

Resumes: prompt-turns already in --out are kept (their answers are computed again only where a
later turn needs them); --lookahead-only adds lookahead's schedules to the traces that lack them
(the first --lookahead-per-task of each task: a lookahead run is slow where rows cost a step). The file's "about" says the models, the machine and the draft's agreement
measured by calibration (what auto's prior would hold), which replay uses as the prior everywhere.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from quickdraft import load
from quickdraft.bench.tasks import load_tasks
from quickdraft.bench.traces import (LOOKAHEAD_CONFIGS, TRACES, load_traces, record, record_lookahead,
                                     save_traces)


def progress_over(items, what: str):
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        yield from progress.track(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="humaneval,code-edit,mt-bench,everyday,grounded")
    parser.add_argument("--limit", type=int, default=8, help="prompts per task")
    parser.add_argument("-n", "--max-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=TRACES)
    parser.add_argument("--lookahead-only", action="store_true", help="only add missing lookahead schedules")
    parser.add_argument("--lookahead-per-task", type=int, default=None,
                        help="with --lookahead-only: at most this many traces per task carry them")
    args = parser.parse_args()
    engine = load(method="ar")
    engine.draft_model()  # loaded, checked and its prior measured
    about = {"target": engine.target.path.name, "draft": engine.draft_model().path.name,
             "max_tokens": args.max_tokens, "system": engine.describe(),
             "agreement": engine.prior.draft_accept}
    traces = load_traces(args.out)[1] if args.out.exists() else []
    if args.lookahead_only:
        about = load_traces(args.out)[0]
        per_task = args.lookahead_per_task or len(traces)
        chosen = [t for t in traces if sum(u.task == t.task for u in traces[:traces.index(t)]) < per_task]
        for trace in progress_over(chosen, "lookahead"):
            i = traces.index(trace)
            if set(trace.lookahead) != set(LOOKAHEAD_CONFIGS):
                traces[i] = replace(trace, lookahead=record_lookahead(engine, trace.prompt, len(trace.path)))
                save_traces(traces, args.out, about)
        return
    done = {(t.task, t.prompt_id, t.turn) for t in traces}
    prompts = load_tasks(args.tasks.split(","), limit=args.limit)
    total = sum(len(p.turns) for p in prompts)
    columns = (TextColumn("recording"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns) as progress:
        bar = progress.add_task("", total=total, completed=len(done))

        def keep(trace) -> None:
            traces.append(trace)
            save_traces(traces, args.out, about)
            progress.update(bar, advance=1, description=trace.name)

        record(engine, prompts, args.max_tokens, on_trace=keep, done=done)
    print(f"{len(traces)} traces in {args.out}")


if __name__ == "__main__":
    main()
