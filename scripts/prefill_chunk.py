"""The server's ``--prefill-chunk`` / ``--step-time`` trade-off: time to first token against pauses in running streams.

    .venv/bin/python scripts/prefill_chunk.py [--chunks 64,128,256,1.5s] [--clients 8] [--task code-edit] [--rounds 2]
        [--methods auto,ar]

In one process, without HTTP: N closed-loop clients, each sending 2 requests one after another
(greedy, 128 tokens, the task's first 2N prompts; code edits of 170-230 tokens, as the load bench
takes), against the server's own scheduler (``quickdraft.server.scheduler.Scheduler``, default
engine and method), once per setting and round, the settings interleaved. A setting is a chunk
size or, ending in ``s``, a step time. A joining prompt is prefilled ``chunk`` tokens a step
(or as many as keep the step within the step time), riding in the forward of the running
requests' step: a larger chunk brings its first token sooner and makes that step, a pause for
every running stream, longer. Per run: tokens per second, time to
first token p50 and max, time per output token p50, the longest pause between two pieces of a
stream (p50 over requests, and max). Prints one JSON line per run and a summary (median, min-max).
``--methods``: each setting with each method (``1.25s/ar``: plain continuous batching, to see what
speculation adds or costs under that load). ``--retain-cells 0,4096``: each setting with each budget
of KV cells finished requests' sequences may keep as prefix donors (``LlamaCppBackend.retain_cells``;
``1.25s/retain 0``), to see what keeping them costs the running requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import quickdraft
from quickdraft.bench.tasks import TASKS
from quickdraft.engine import Memory
from quickdraft.records import Piece
from quickdraft.server.metrics import Metrics
from quickdraft.server.scheduler import Failed, Finished, Job, Scheduler
from quickdraft.system import cpu_info


async def one_request(scheduler: Scheduler, engine, prompt: str, max_tokens: int, method: str) -> dict:
    """Submit one chat request and follow its events: TTFT, TPOT, the longest pause, tokens."""
    job = Job(engine.prepare([{"role": "user", "content": prompt}], max_tokens=max_tokens, method=method),
              timeout_s=600, loop=asyncio.get_running_loop())
    start, first, last, pause, tokens = time.perf_counter(), None, None, 0.0, 0
    scheduler.submit(job)
    while True:
        _, event = await job.events.get()
        if isinstance(event, Piece):
            now = time.perf_counter() - start
            first = now if first is None and event.text else first
            pause = max(pause, now - last) if last is not None else pause
            last, tokens = now, tokens + len(event.token_ids)
        elif isinstance(event, Failed):
            raise RuntimeError(event.error.message)
        elif isinstance(event, Finished):
            end = time.perf_counter() - start
            first = end if first is None else first  # an answer with no text: its first token is its end
            return {"ttft": first, "tpot": (end - first) / max(1, tokens - 1), "pause": pause, "tokens": tokens}


def task_prompts(engine, task: str, count: int) -> list[str]:
    """The task's first ``count`` prompts (code edits: those of 170-230 tokens, as the load bench takes)."""
    prompts = [p.turns[0] for p in TASKS[task]()]
    if task == "code-edit":
        prompts = [p for p in prompts if 170 <= len(engine.prompt_tokens([{"role": "user", "content": p}])) <= 230]
    return prompts[:count]


def scheduling(setting: str) -> tuple[dict, str]:
    """A setting's Scheduler keywords and method: ``"64"`` a prefill chunk, ``"1.5s"`` a step time,
    either followed by ``/METHOD`` (default auto)."""
    admission, _, method = setting.partition("/")
    keywords = {"step_time": float(admission[:-1])} if admission.endswith("s") else {"prefill_chunk": int(admission)}
    return keywords, method or "auto"


async def run(engine, prompts: list[str], clients: int, setting: str, max_tokens: int) -> dict:
    keywords, method = scheduling(setting)
    scheduler = Scheduler([engine], max_queue=4 * clients, metrics=Metrics(), max_batch=clients, **keywords)
    scheduler.start()
    records: list[dict] = []

    async def client(i: int) -> None:
        for j in range(2):
            records.append(await one_request(scheduler, engine, prompts[i + j * clients], max_tokens, method))

    start = time.perf_counter()
    try:
        await asyncio.gather(*(client(i) for i in range(clients)))
    finally:
        scheduler.stop()
    wall = time.perf_counter() - start
    ttft, tpot, pause = (sorted(r[k] for r in records) for k in ("ttft", "tpot", "pause"))
    return {"setting": setting, "tok_s": sum(r["tokens"] for r in records) / wall, "ttft_p50_s": statistics.median(ttft),
            "ttft_max_s": ttft[-1], "tpot_p50_ms": 1000 * statistics.median(tpot),
            "pause_p50_s": statistics.median(pause), "pause_max_s": pause[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default="64,128,256")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--task", default="code-edit", choices=sorted(TASKS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--methods", default="auto", help="comma-separated: each setting with each method")
    parser.add_argument("--retain-cells", default=None,
                        help="comma-separated: each setting with each budget of cells finished sequences keep")
    args = parser.parse_args()

    engine = quickdraft.load(n_ctx=16384)
    prompts = task_prompts(engine, args.task, 2 * args.clients)
    methods = args.methods.split(",")
    chunks = [c if methods == ["auto"] else f"{c}/{m}" for c in args.chunks.split(",") for m in methods]
    retain = ({f"{c}/retain {n}": int(n) for c in chunks for n in args.retain_cells.split(",")}
              if args.retain_cells else {c: None for c in chunks})
    default_retain = engine.target.retain_cells
    runs: dict[str, list[dict]] = {c: [] for c in retain}
    for r in range(args.rounds):
        for chunk in list(retain) if r % 2 == 0 else list(retain)[::-1]:
            engine.memory = Memory()  # every run from a fresh engine's state: no answer seen before
            engine.clear_caches()
            for backend in (engine.target, engine.draft.backend):
                if backend is not None:
                    backend.retain_cells = default_retain if retain[chunk] is None else retain[chunk]
            result = asyncio.run(run(engine, prompts, args.clients, chunk.split("/retain")[0], args.max_tokens))
            result["setting"] = chunk
            runs[chunk].append(result)
            print(json.dumps({"round": r, **{k: v if isinstance(v, str) else round(v, 3) for k, v in result.items()}}),
                  flush=True)
    print(f"{cpu_info().name}, {args.clients} clients x 2 {args.task} requests, {args.max_tokens} tokens, "
          f"{args.rounds} rounds: median (min-max)")
    for chunk, results in runs.items():
        cells = []
        for key in ("tok_s", "ttft_p50_s", "ttft_max_s", "tpot_p50_ms", "pause_p50_s", "pause_max_s"):
            values = [x[key] for x in results]
            cells.append(f"{key} {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"{chunk}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
