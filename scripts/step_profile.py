"""Where each millisecond of a batched step goes, at 1, 4, 8 and 16 sequences (issue 27).

    .venv/bin/python scripts/step_profile.py [--sizes 1,4,8,16] [--methods auto,ar] [--steps 24]
                                             [--task code-edit] [--scheduler]

The engine the server runs (default pair, greedy, ``Engine.start(request, batched=True)``): per
method, the task's first ``max(sizes)`` prompts are started in sequences of their own and
prefilled, then for each size N the first N generations take ``--steps`` steps together
(``Engine.step``, after 2 warm-up steps). Every part of a step is timed where it runs:

* ``decode``: the target's ``llama_decode`` (llama.cpp's own work, logits of every row included);
* ``batch+logits``: the rest of ``forward_batch`` (filling the llama.cpp batch, reading the logits
  rows out);
* ``verify``: ``verifiers.judge`` of every generation (argmax, acceptance);
* ``draft dec``: the draft model's ``llama_decode`` (its prefill and drafting);
* ``proposers``: offers and drafting without the draft model's decodes;
* ``allocate``, ``settle`` (learning, text, stop strings), ``other`` (the rest of ``Engine.step``);
* ``rows/step``: tokens in the target's forward (pending tokens, drafts, lookahead's branch).

``floor``: one ``forward_batch`` of N one-token chains in the same sequences, logits for every
row (what one plain decoding step of N sequences costs llama.cpp, which llama-server's step also
pays), and its ``llama_decode`` alone. ``--scheduler``: the server's worker loop as well (its
own ``Scheduler`` in process, N jobs whose events an asyncio consumer reads), the share of the
loop's wall time spent outside ``Engine.step``. Prints a JSON line per measurement and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from contextlib import contextmanager

import quickdraft
from quickdraft import engine as engine_module
from quickdraft import verifiers
from quickdraft.backends import llamacpp
from quickdraft.backends.base import Chunk
from quickdraft.bench.tasks import TASKS
from quickdraft.engine import Generation, Memory
from quickdraft.system import cpu_info

PARTS = ("decode", "batch+logits", "verify", "draft dec", "proposers", "allocate", "settle", "other")


class Timers:
    """Seconds spent in wrapped callables, by name; ``llama_decode`` split by context."""

    def __init__(self, target_ctx, draft_ctx=None) -> None:
        self.seconds: dict[str, float] = {}
        self._target, self._draft = target_ctx, draft_ctx
        self._undo: list[tuple[object, str, object]] = []

    def add(self, key: str, seconds: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds

    def wrap(self, owner, name: str, key: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.add(key, time.perf_counter() - start)

        self._undo.append((owner, name, vars(owner).get(name)))  # None: an instance's method, deleted again
        setattr(owner, name, timed)

    def wrap_decode(self) -> None:
        inner = llamacpp.ll.llama_decode

        def timed(ctx, batch):
            start = time.perf_counter()
            status = inner(ctx, batch)
            key = "decode" if ctx is self._target else "draft dec" if ctx is self._draft else "other dec"
            self.add(key, time.perf_counter() - start)
            if ctx is self._target:
                self.add("target rows", batch.n_tokens)  # a count, not seconds
            return status

        self._undo.append((llamacpp.ll, "llama_decode", inner))
        llamacpp.ll.llama_decode = timed

    def restore(self) -> None:
        for owner, name, original in reversed(self._undo):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._undo.clear()

    def take(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, {}
        return seconds


@contextmanager
def instrumented(engine):
    """The engine's step with every part timed (restored afterwards)."""
    draft = engine.draft.backend
    timers = Timers(engine.target._ctx, draft._ctx if draft is not None else None)
    timers.wrap_decode()
    timers.wrap(engine.target, "forward_batch", "forward_batch")
    timers.wrap(verifiers, "judge", "verify")
    timers.wrap(engine_module, "allocate", "allocate")
    for name in ("offers", "draft"):
        timers.wrap(Generation, name, "proposers")
    timers.wrap(Generation, "settle", "settle")
    try:
        yield timers
    finally:
        timers.restore()


def breakdown(seconds: dict[str, float], wall: float, steps: int) -> dict[str, float]:
    """Milliseconds per step of each part (``PARTS``), from the timers' seconds over ``steps``.

    Example: breakdown({"decode": 0.8, "forward_batch": 0.9, "verify": 0.1}, 1.2, 10)
    gives decode 80, batch+logits 10, verify 10 and other 20 ms (the rest zero)."""
    ms = {k: 1000 * v / steps for k, v in seconds.items()}
    draft_decode = ms.get("draft dec", 0.0)
    parts = {"decode": ms.get("decode", 0.0), "batch+logits": ms.get("forward_batch", 0.0) - ms.get("decode", 0.0),
             "verify": ms.get("verify", 0.0), "draft dec": draft_decode,
             "proposers": max(0.0, ms.get("proposers", 0.0) - draft_decode), "allocate": ms.get("allocate", 0.0),
             "settle": ms.get("settle", 0.0)}
    parts["other"] = 1000 * wall / steps - sum(parts.values())
    return parts


def floor(engine, generations, reps: int) -> tuple[float, float]:
    """Milliseconds of one forward_batch of a one-token chain per generation (all rows' logits)
    and of its llama_decode alone (median of ``reps``); the caches are left as they were."""
    target, walls, decodes = engine.target, [], []
    timers = Timers(target._ctx)
    timers.wrap_decode()
    try:
        for _ in range(reps):
            chunks = [Chunk(g.sequence, [g.context[-1]]) for g in generations]
            start = time.perf_counter()
            target.forward_batch(chunks)
            walls.append(time.perf_counter() - start)
            decodes.append(timers.take().get("decode", 0.0))
            for g in generations:
                g.sequence.rollback(len(g.context) - 1)
    finally:
        timers.restore()
    return 1000 * statistics.median(walls), 1000 * statistics.median(decodes)


def profile_method(engine, method: str, prompts: list[str], sizes: list[int], steps: int, max_tokens: int,
                   log) -> tuple[list[dict], dict[int, tuple[float, float]], list[list[int]]]:
    """The step's parts per size; then, at the contexts reached, the floor per size and every
    generation's context (for :func:`streams_floor`)."""
    engine.memory = Memory()
    engine.clear_caches()
    generations = []
    for i, prompt in enumerate(prompts):
        request = engine.prepare([{"role": "user", "content": prompt}], max_tokens=max_tokens, method=method)
        generation = engine.start(request, batched=True)
        generation.prefill()
        generations.append(generation)
        log(f"{method}: prefilled {i + 1}/{len(prompts)}")
    rows = []
    try:
        for n in sizes:
            batch = [g for g in generations if not g.done][:n]  # an answer that ended is left out
            if len(batch) < n:
                log(f"warning: {method} n={n}: only {len(batch)} generations left running")
            for _ in range(2):
                engine.step(batch)
            with instrumented(engine) as timers:
                emitted, start = 0, time.perf_counter()
                for _ in range(steps):
                    emitted += sum(len(p.token_ids) for p in engine.step(batch) if p is not None)
                wall = time.perf_counter() - start
                seconds = timers.take()
            floor_ms, floor_decode_ms = floor(engine, batch, 5)
            row = {"method": method, "n": n, "step_ms": 1000 * wall / steps, "tokens_per_step": emitted / steps,
                   "rows_per_step": seconds.pop("target rows", 0) / steps,
                   "tok_s": emitted / wall, **breakdown(seconds, wall, steps),
                   "floor_ms": floor_ms, "floor_decode_ms": floor_decode_ms}
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        floors = {n: floor(engine, generations[:n], 5) for n in sizes}
        contexts = [list(g.context) for g in generations]
    finally:
        for g in generations:
            engine.release(g)
    return rows, floors, contexts


def streams_floor(path, threads: int, sequences: list[list[int]], sizes: list[int], reps: int, log) -> dict[int, float]:
    """What llama-server's decode of the same batch costs: a context of its own with a KV stream
    per sequence (``kv_unified`` off, ``-np`` slots, llama-server's default), the sequences'
    tokens prefilled, then the median ``llama_decode`` milliseconds of one token per sequence
    (logits for every row) for the first N of them, per N in ``sizes``."""
    ll = llamacpp.ll
    model = ll.llama_model_load_from_file(str(path).encode(), ll.llama_model_default_params())
    cparams = ll.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_ubatch = 16384, 512, 512
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.n_seq_max, cparams.kv_unified = len(sequences), False
    ctx = ll.llama_init_from_model(model, cparams)
    mem, batch = ll.llama_get_memory(ctx), ll.llama_batch_init(512, 0, 1)

    def decode(entries: list[tuple[int, int, int, bool]]) -> float:  # (token, position, seq, logits)
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
            batch.seq_id[i][0] = seq
        start = time.perf_counter()
        if ll.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - start

    try:
        for seq, tokens in enumerate(sequences):
            for at in range(0, len(tokens) - 1, 512):
                part = tokens[at:min(at + 512, len(tokens) - 1)]
                decode([(t, at + i, seq, False) for i, t in enumerate(part)])
            log(f"streams: prefilled {seq + 1}/{len(sequences)}")
        out = {}
        for n in sizes:
            times = []
            for _ in range(reps):
                times.append(decode([(tokens[-1], len(tokens) - 1, seq, True)
                                     for seq, tokens in enumerate(sequences[:n])]))
                for seq, tokens in enumerate(sequences[:n]):
                    ll.llama_memory_seq_rm(mem, seq, len(tokens) - 1, -1)
            out[n] = 1000 * statistics.median(times)
        return out
    finally:
        ll.llama_batch_free(batch)
        ll.llama_free(ctx)
        ll.llama_model_free(model)


def scheduler_share(engine, prompts: list[str], n: int, method: str, steps: int) -> dict:
    """The server's worker loop over ``n`` jobs (the server's Scheduler, events read by asyncio),
    once all ``n`` run: ``steps`` steps of the whole batch, their mean wall, and the loop's time
    outside Engine.step per step."""
    from quickdraft.server.metrics import Metrics
    from quickdraft.server.scheduler import Failed, Job, Scheduler

    engine.memory = Memory()
    engine.clear_caches()
    marks: list[tuple[float, float]] = []  # steps of the whole batch with no prompt riding
    inner = engine.step

    def step(generations, prefill=()):
        start = time.perf_counter()
        try:
            return inner(generations, prefill)
        finally:
            if len(generations) == n and not prefill:
                marks.append((start, time.perf_counter()))

    async def run() -> None:
        scheduler = Scheduler([engine], max_queue=4 * n, metrics=Metrics(), max_batch=n, prefill_chunk=512)
        scheduler.start()
        loop = asyncio.get_running_loop()
        jobs = [Job(engine.prepare([{"role": "user", "content": p}], max_tokens=600, method=method),
                    timeout_s=3600, loop=loop) for p in prompts[:n]]
        scheduler.submit(*jobs)
        try:
            while len(marks) <= steps and (scheduler.running or scheduler.waiting):
                for job in jobs:  # read every event, as the server's request tasks do
                    while not job.events.empty():
                        if isinstance(job.events.get_nowait()[1], Failed):
                            raise RuntimeError("a job failed")
                await asyncio.sleep(0.005)
        finally:
            await asyncio.to_thread(scheduler.stop)

    engine.step = step
    try:
        asyncio.run(run())
    finally:
        del engine.step
    pairs = list(zip(marks, marks[1:]))[:steps]
    if not pairs:
        return {"method": method, "n": n, "steps": 0, "step_ms": float("nan"), "loop_ms": float("nan"),
                "outside_step_ms": float("nan")}
    inside = statistics.mean(a[1] - a[0] for a, _ in pairs)
    loop = statistics.mean(b[0] - a[0] for a, b in pairs)
    return {"method": method, "n": n, "steps": len(pairs), "step_ms": 1000 * inside,
            "loop_ms": 1000 * loop, "outside_step_ms": 1000 * (loop - inside)}


def table(rows: list[dict], cpu: str, args) -> str:
    head = ["method", "N", "step ms", "tok/step", "rows/step", *PARTS, "floor: forward_batch / llama_decode ms"]
    lines = [f"{cpu}, {args.threads or 'default'} threads, {args.task} prompts, greedy, {args.steps} steps "
             f"(ms per step)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], str(r["n"]), f"{r['step_ms']:.1f}", f"{r['tokens_per_step']:.2f}",
                 f"{r['rows_per_step']:.1f}",
                 *(f"{r[p]:.1f}" for p in PARTS), f"{r['floor_ms']:.1f} / {r['floor_decode_ms']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_steps(engine, rows, floors, contexts, sizes, method, cpu, args, log) -> None:
    streams = streams_floor(engine.target.path, engine.target.n_threads, contexts, sizes, 5, log)
    print(table(rows, cpu, args))
    print(f"\none token per sequence, logits of every row, at the contexts the {method} run reached "
          f"({min(map(len, contexts))}-{max(map(len, contexts))} tokens each), ms:\n")
    print("| N | our forward_batch | its llama_decode (one unified KV cache) | "
          "llama_decode with a KV stream per sequence (llama-server) |\n|---|---|---|---|")
    for n in sizes:
        print(f"| {n} | {floors[n][0]:.1f} | {floors[n][1]:.1f} | {streams[n]:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=quickdraft.DEFAULT_TARGET)
    parser.add_argument("--draft", default=quickdraft.DEFAULT_DRAFT)
    parser.add_argument("--sizes", default="1,4,8,16", help="Sequences per step, comma-separated.")
    parser.add_argument("--methods", default="auto,ar", help="Comma-separated methods.")
    parser.add_argument("--steps", type=int, default=24, help="Timed steps per size (after 2 warm-up steps).")
    parser.add_argument("--task", default="code-edit", choices=sorted(TASKS))
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--scheduler", action="store_true", help="Also time the server's worker loop.")
    parser.add_argument("--skip-steps", action="store_true", help="Only the worker loop (with --scheduler).")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if not sizes or sizes[0] < 1 or args.steps < 1:
        parser.error("--sizes must be positive integers and --steps >= 1")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    engine = quickdraft.load(args.target, args.draft, n_ctx=16384, n_threads=args.threads)
    engine.draft_model()  # loaded now, so its decodes are told apart from the first step on
    prompts = [p.turns[0] for p in TASKS[args.task]()][:sizes[-1] + 4]  # spares for answers that end
    rows = []
    for method in [] if args.skip_steps else args.methods.split(","):
        method_rows, floors, contexts = profile_method(engine, method, prompts, sizes, args.steps, args.max_tokens, log)
        rows += method_rows
    cpu = cpu_info().model
    if rows:
        print_steps(engine, rows, floors, contexts, sizes, method, cpu, args, log)
    if args.scheduler:
        print("\nthe server's worker loop (Scheduler in process), ms per step of the whole batch:\n")
        print("| method | N | steps | Engine.step | loop | outside the step |\n|---|---|---|---|---|---|")
        for method in args.methods.split(","):
            for n in sizes[1:] or sizes:
                log(f"scheduler: {method} n={n}")
                s = scheduler_share(engine, prompts, n, method, args.steps)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()}), flush=True)
                print(f"| {method} | {n} | {s['steps']} | {s['step_ms']:.1f} | {s['loop_ms']:.1f} | "
                      f"{s['outside_step_ms']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
