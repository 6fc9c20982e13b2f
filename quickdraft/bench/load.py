"""The load bench: N concurrent OpenAI clients against servers on loopback, in one run.

For each server (``quickdraft serve`` with continuous batching, the same one request at a time,
llama.cpp's own ``llama-server`` with ``-np N`` slots, with and without its draft model; every one
on the same model files, threads and context) and each concurrency N, a freshly started server
(no server sees a prompt's answer before it is asked), N clients (the real ``openai`` client,
streaming) send requests one after another, the prompts taken in turn from a task. Every level
asks the same prompts (``equal_levels``, the default): the largest level's,
``requests_per_client`` for each of its clients, spread over the level's clients in turn, so the
levels do the same work and their throughputs compare; otherwise each level's clients send
``requests_per_client`` each (a shorter run, whose levels differ in work). Per request: time to
first token, time per output token after it (TPOT, what the issue calls inter-token latency),
the longest gap between two chunks, and the answer. Per (server, N): total tokens per second
over the wall time, TTFT and TPOT p50/p99, errors, and how the answers compare with each prompt's greedy answer served alone by quickdraft
(``exact``; ``differs`` from some token on, the numerics of another batch shape; ``mixed``: it
is another prompt's answer, a bug). An answer that differs is then checked as ``--check`` checks
one (check.check_against_ar, against the answer alone): a certified numeric near-tie, or not.

``soak`` runs one server under a fixed load for a time instead, and adds the server's memory
over time (RSS from /proc) to the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import httpx
from rich.console import Console
from rich.table import Table

from ..errors import QuickdraftError
from ..models import DEFAULT_DRAFT, DEFAULT_TARGET, resolve_draft, resolve_model
from ..system import cpu_info, default_threads

SERVERS = ("quickdraft", "quickdraft-one-at-a-time", "llama-server", "llama-server-draft")
MODEL_NAME = "model"


@dataclass(frozen=True)
class LoadConfig:
    """What to run. ``task``: a bench task name or a JSONL file of prompts (bench/tasks.py);
    ``prompt_tokens``: keep its prompts of this many tokens (chat template included), to fix the
    prompt length of the run. ``equal_levels``: every level asks the run's prompts, the largest
    level's clients x ``requests_per_client`` (see :func:`level_requests`). ``server_args``: more
    options for the quickdraft servers' ``quickdraft serve`` command line
    (``("--prefill-chunk", "128")``)."""

    target: str = DEFAULT_TARGET
    draft: str = DEFAULT_DRAFT
    task: str = "code-edit"
    prompt_tokens: tuple[int, int] = (170, 230)
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    requests_per_client: int = 2
    equal_levels: bool = True
    max_tokens: int = 128
    n_ctx: int = 16384
    threads: int | None = None
    servers: tuple[str, ...] = SERVERS
    method: str = "auto"
    soak_s: float = 0.0  # > 0: one server, the first concurrency, for this long
    request_timeout_s: float = 600.0
    server_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.servers) - set(SERVERS))
        if unknown:
            raise QuickdraftError(f"unknown server {unknown[0]!r}; choose from {', '.join(SERVERS)}")
        if not self.concurrency or min(self.concurrency) < 1 or max(self.concurrency) > 64:
            raise QuickdraftError("concurrency levels must be between 1 and 64")
        if self.requests_per_client < 1 or self.max_tokens < 1:
            raise QuickdraftError("--requests-per-client and --max-tokens must be >= 1")


@dataclass
class Record:
    """One request as a client saw it."""

    server: str
    concurrency: int
    client: int
    prompt: int  # index into the run's prompts
    start: float = 0.0
    first: float | None = None  # seconds from start to the first text
    end: float | None = None  # seconds from start to the last chunk
    tokens: int = 0  # completion tokens (usage, else chunks)
    max_gap: float = 0.0  # the longest wait between two chunks after the first
    text: str = ""
    error: str | None = None
    answer: str | None = None  # exact | differs | mixed, against the prompt's answer alone
    near_tie: bool | None = None  # an answer that differs: where it parts, a certified near-tie (check.py)
    resent: bool = False  # answered when sent a second time: the first attempt's connection failed (send)

    @property
    def tpot(self) -> float | None:
        """Seconds per output token after the first."""
        if self.first is None or self.end is None or self.tokens < 2:
            return None
        return (self.end - self.first) / (self.tokens - 1)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values.

    Example: percentile([1, 2, 3, 4], 50) == 2; percentile([1, 2, 3, 4], 99) == 4.
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summarize(records: Sequence[Record]) -> dict:
    """Per (server, concurrency) of ``records``: throughput, latency percentiles, answers."""
    ok = [r for r in records if r.error is None and r.end is not None]
    wall = (max(r.end + r.start for r in ok) - min(r.start for r in ok)) if ok else None
    tokens = sum(r.tokens for r in ok)
    ttft = [r.first for r in ok if r.first is not None]
    tpot = [r.tpot for r in ok if r.tpot is not None]
    answers = {kind: sum(r.answer == kind for r in ok) for kind in ("exact", "differs", "mixed")}
    answers["near_ties"] = sum(r.near_tie is True for r in ok)
    return {"requests": len(records), "errors": len(records) - len(ok), "tokens": tokens,
            "wall_s": wall, "throughput_tok_s": tokens / wall if wall else None,
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "tpot_p50_s": percentile(tpot, 50), "tpot_p99_s": percentile(tpot, 99),
            "max_gap_p99_s": percentile([r.max_gap for r in ok], 99), "answers": answers}


def classify_answer(text: str, own: str, others: Sequence[str]) -> str:
    """``exact`` if ``text`` is ``own``; ``mixed`` if it is mostly another prompt's answer instead
    (shares more with it than with ``own``, and at least half of ``text``: answers of similar
    prompts may begin alike, so a near-tie early on must not look like a mix-up); else ``differs``
    (it parts from ``own`` somewhere, as a near-tie may).

    Example: classify_answer("ab", "ab", ["cd"]) == "exact"; classify_answer("cd", "ab", ["cd"]) ==
    "mixed"; classify_answer("ax", "ab", ["cd"]) == "differs".
    """
    if text == own:
        return "exact"
    shared = len(os.path.commonprefix([text, own]))
    if any(o and o != own and len(os.path.commonprefix([text, o])) > max(shared, len(text) // 2) for o in others):
        return "mixed"
    return "differs"


# --- clients ----------------------------------------------------------------------------------

async def one_request(client, record: Record, messages: list[dict], max_tokens: int) -> None:
    """Send one streaming request and fill ``record`` (an exception is its ``error``)."""
    record.start = time.perf_counter()
    last = None
    try:
        stream, record.resent = await send(client, model=MODEL_NAME, messages=messages, max_tokens=max_tokens,
                                           temperature=0, stream=True, stream_options={"include_usage": True})
        chunks = 0
        async for chunk in stream:
            now = time.perf_counter() - record.start
            content = chunk.choices[0].delta.content if chunk.choices else None
            if content:
                if record.first is None:
                    record.first = now
                elif last is not None:
                    record.max_gap = max(record.max_gap, now - last)
                last = now
                chunks += 1
                record.text += content
            if chunk.usage:
                record.tokens = chunk.usage.completion_tokens
        record.tokens = record.tokens or chunks
        record.end = time.perf_counter() - record.start
    except Exception as e:  # counted: the point is to see them
        record.error = f"{type(e).__name__}: {e}"[:300]


async def send(client, **request) -> tuple:
    """A chat request (an AsyncOpenAI ``client``'s answer or stream), and whether it was sent
    again: once, if the connection failed before any answer. A keep-alive connection the server
    closed as the last answer ended (llama-server's did, once in a chat run) fails the next request
    before the server sees it; a server that is down fails the second time too, and that raises."""
    from openai import APIConnectionError

    try:
        return await client.chat.completions.create(**request), False
    except APIConnectionError:
        return await client.chat.completions.create(**request), True


def level_requests(config: LoadConfig, n: int) -> int:
    """How many requests a level of ``n`` clients sends (its clients ask prompts 0, 1, ... of the
    run in turn): the largest level's clients x ``requests_per_client`` at every level with
    ``equal_levels`` (the same work, so the levels' throughputs compare), else ``requests_per_client``
    for each of its own clients.

    Example: levels (1, 4), 2 requests per client: 8 requests at each level (8 one after another,
    or 4 clients x 2); without equal_levels, 2 and 8."""
    return max(config.concurrency if config.equal_levels else (n,)) * config.requests_per_client


async def run_clients(base_url: str, server: str, n: int, prompts: Sequence[list[dict]], requests: int,
                      max_tokens: int, timeout_s: float, until: float | None = None) -> list[Record]:
    """``n`` clients sending ``requests`` requests in all, each one after another (or until the
    monotonic time ``until``): client i asks prompts i, i + n, i + 2n, ... (wrapped)."""
    from openai import AsyncOpenAI

    records: list[Record] = []

    async def client_loop(index: int) -> None:
        async with AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=timeout_s) as client:
            sent = 0
            while (index + sent * n < requests) if until is None else (time.monotonic() < until):
                prompt = (index + sent * n) % len(prompts)
                record = Record(server, n, index, prompt)
                records.append(record)
                await one_request(client, record, prompts[prompt], max_tokens)
                sent += 1

    await asyncio.gather(*(client_loop(i) for i in range(n)))
    return records


# --- servers ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def launched(command: list[str], port: int, log: Path, ready_s: float = 600.0) -> Iterator[subprocess.Popen]:
    """Run a server process until the block ends; wait until its /health answers 200."""
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if process.poll() is not None:
                raise QuickdraftError(f"the server exited with code {process.returncode}; see {log}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise QuickdraftError(f"the server did not become ready in {ready_s:.0f} s; see {log}")
            time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def server_command(server: str, config: LoadConfig, slots: int, port: int, target: Path, draft: Path) -> list[str]:
    threads = str(config.threads or default_threads())
    if server.startswith("quickdraft"):
        parallel = 1 if server == "quickdraft-one-at-a-time" else max(config.concurrency)
        return [sys.executable, "-m", "quickdraft.cli", "serve", "--target", str(target), "--draft", str(draft),
                "--method", config.method, "--parallel", str(parallel), "--n-ctx", str(config.n_ctx),
                "--threads", threads, "--port", str(port), "--model-name", MODEL_NAME, "--max-queue", "256",
                "--timeout", str(config.request_timeout_s), *config.server_args]
    from .llamacpp_server import llama_server_path

    binary = llama_server_path()
    if binary is None:
        raise QuickdraftError("llama-server is not built: run `make llama-server` first (or leave it out with "
                              "--servers)")
    command = [str(binary), "-m", str(target), "-np", str(slots), "-c", str(config.n_ctx), "-t", threads,
               "--host", "127.0.0.1", "--port", str(port), "-a", MODEL_NAME, "--temp", "0"]
    if server == "llama-server-draft":
        command += ["-md", str(draft)]  # its own default draft lengths (b11434: at most 3, p-min 0)
    return command


# --- the run ----------------------------------------------------------------------------------

def plain_engine(config: LoadConfig):
    """An engine of the run's target decoding plainly, in this process (the answers alone and
    their checks); the caller closes its target."""
    from .. import load

    return load(config.target, None, method="ar", n_ctx=config.n_ctx, calibrate=False, n_threads=config.threads)


def load_prompts(config: LoadConfig, console: Console) -> tuple[list[list[dict]], list[list[int]], list[str]]:
    """The run's chat prompts (of the configured length, with the target's template) and each
    one's greedy answer served alone by quickdraft (plain decoding, ``max_tokens``): its tokens
    and its text."""
    from .runner import progress_bar
    from .tasks import load_tasks

    engine = plain_engine(config)
    low, high = config.prompt_tokens
    prompts = []
    path = Path(config.task)
    for prompt in load_tasks([], [path]) if path.suffix == ".jsonl" else load_tasks([config.task]):
        messages = [{"role": "user", "content": prompt.turns[0]}]
        if low <= len(engine.prompt_tokens(messages)) <= high:
            prompts.append(messages)
    if not prompts:
        raise QuickdraftError(f"no {config.task} prompt has {low}-{high} tokens")
    if not config.soak_s:  # a level's clients ask prompts 0, 1, ... in turn: no more are ever sent
        top = max(config.concurrency)
        wanted = level_requests(config, top)
        if wanted > len(prompts):  # a prompt asked twice in a level would meet its own earlier answer
            raise QuickdraftError(f"{top} clients x {config.requests_per_client} requests ask "
                                  f"{wanted} prompts, and {config.task} has {len(prompts)} of {low}-{high} tokens: "
                                  f"ask at most {len(prompts) // top} requests per client "
                                  f"(--requests-per-client) or widen --prompt-tokens", param="requests_per_client")
        prompts = prompts[:wanted]
    alone = []
    with progress_bar(console) as bar:
        task = bar.add_task("answers alone", total=len(prompts), status="")
        for p in prompts:
            alone.append(engine.generate(p, max_tokens=config.max_tokens))
            bar.advance(task)
    engine.target.close()
    return prompts, [a.token_ids for a in alone], [a.text for a in alone]


def certify(config: LoadConfig, prompts: Sequence[list[dict]], alone: Sequence[list[int]],
            records: Sequence[Record], console: Console) -> None:
    """Set ``near_tie`` of every record whose answer differs from its prompt's answer alone: its
    text in the target's tokens checked against the answer alone as ``--check`` does
    (check.check_against_ar: the target's margin where they part within the near-tie tolerance
    measured here, or a verification shape in which the target itself prefers the served token).
    A served text the tokenizer splits otherwise than it was generated may fail to certify, never
    pass wrongly."""
    from ..check import check_against_ar
    from .runner import progress_bar

    differing = [r for r in records if r.answer == "differs"]
    if not differing:
        return
    engine = plain_engine(config)
    with progress_bar(console) as bar:
        task = bar.add_task("answers that differ: near-ties?", total=len(differing), status="")
        for r in differing:
            served = engine.target.tokenize(r.text, special=False)
            result = check_against_ar(engine, engine.prompt_tokens(prompts[r.prompt]), served, alone[r.prompt])
            r.near_tie = result.kind == "near-tie"
            bar.advance(task)
    engine.target.close()


def run_load(config: LoadConfig, out: Path, console: Console | None = None) -> dict:
    """Run the load bench; writes ``out/load.json``, ``out/load.md`` and plots; returns the document."""
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    target = resolve_model(config.target)
    draft = resolve_draft(config.draft, target)
    console.print("preparing prompts and their answers alone ...")
    prompts, alone, answers = load_prompts(config, console)
    doc = {"config": {**asdict(config), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_info().to_dict()},
           "prompts": len(prompts), "levels": [], "records": [], "memory_mb": []}
    servers = config.servers[:1] if config.soak_s else config.servers
    levels = config.concurrency[:1] if config.soak_s else config.concurrency
    for server, n in schedule(servers, levels):
        # Every level starts a fresh server: the levels send the same prompts, and a server that
        # learns from its answers (quickdraft's suffix drafts) must not see one prompt's answer
        # before it is asked again; llama-server's -np N is fixed when it starts anyway.
        port = free_port()
        command = server_command(server, config, n, port, target, draft)
        with launched(command, port, out / f"{server}.log") as process:
            console.print(f"{server}: {n} concurrent client(s) ...")
            records = asyncio.run(_level(config, server, n, port, prompts, process, doc))
        for r in records:
            if r.error is None:
                r.answer = classify_answer(r.text, answers[r.prompt], answers)
        certify(config, prompts, alone, records, console)
        level = {"server": server, "concurrency": n, **summarize(records)}
        doc["levels"].append(level)
        doc["levels"].sort(key=lambda x: (servers.index(x["server"]), levels.index(x["concurrency"])))
        doc["records"] += [{**asdict(r), "tpot": r.tpot} for r in records]
        _save(doc, out)
        console.print(_level_line(level))
    write_load_report(doc, out)
    console.print(load_table(doc))
    return doc


def schedule(servers: Sequence[str], levels: Sequence[int]) -> list[tuple[str, int]]:
    """The order the (server, clients) levels run in: level by level, every server in turn, their
    order reversed every other level. A machine's speed drifts over a run (the same in-process
    level of plain decoding has measured 26-33 tok/s within an hour on one machine), so servers
    compared at one level run minutes apart, never a whole server's levels apart, and none is
    always first.

    Example: schedule(["a", "b"], [1, 2, 4]) == [("a", 1), ("b", 1), ("b", 2), ("a", 2), ("a", 4), ("b", 4)].
    """
    return [(server, n) for i, n in enumerate(levels) for server in (servers if i % 2 == 0 else servers[::-1])]


async def _level(config: LoadConfig, server: str, n: int, port: int, prompts, process, doc) -> list[Record]:
    base_url = f"http://127.0.0.1:{port}/v1"
    until = time.monotonic() + config.soak_s if config.soak_s else None
    clients = asyncio.ensure_future(run_clients(base_url, server, n, prompts, level_requests(config, n),
                                                config.max_tokens, config.request_timeout_s, until))
    start = time.monotonic()
    while not clients.done():  # the server's memory every 10 s while the clients run
        doc["memory_mb"].append({"server": server, "concurrency": n, "t_s": round(time.monotonic() - start, 1),
                                 "rss_mb": rss_mb(process.pid)})
        await asyncio.wait([clients], timeout=10)
    return clients.result()


def _save(doc: dict, out: Path) -> None:
    tmp = out / "load.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out / "load.json")


def _fmt(value, digits: int = 2, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _level_line(level: dict) -> str:
    a = level["answers"]
    return (f"  {level['throughput_tok_s'] and round(level['throughput_tok_s'], 1)} tok/s, TTFT p50/p99 "
            f"{_fmt(level['ttft_p50_s'])}/{_fmt(level['ttft_p99_s'])} s, TPOT p50/p99 "
            f"{_fmt(level['tpot_p50_s'], 0, 1e3)}/{_fmt(level['tpot_p99_s'], 0, 1e3)} ms, errors {level['errors']}, "
            f"answers {a['exact']} exact / {a['differs']} differ ({a.get('near_ties', 0)} near-ties) / "
            f"{a['mixed']} mixed")


LOAD_HEADERS = ("server", "clients", "tok/s", "TTFT p50 s", "TTFT p99 s", "TPOT p50 ms", "TPOT p99 ms",
                "max gap p99 s", "errors", "answers exact/differ/mixed")


def level_cells(level: dict) -> list[str]:
    a = level["answers"]
    return [level["server"], str(level["concurrency"]), _fmt(level["throughput_tok_s"], 1),
            _fmt(level["ttft_p50_s"]), _fmt(level["ttft_p99_s"]), _fmt(level["tpot_p50_s"], 0, 1e3),
            _fmt(level["tpot_p99_s"], 0, 1e3), _fmt(level["max_gap_p99_s"]), str(level["errors"]),
            f"{a['exact']}/{a['differs']}/{a['mixed']}" + (f" ({a.get('near_ties', 0)} near-tie)" if a["differs"] else "")]


def load_table(doc: dict) -> Table:
    table = Table(title="load bench")
    for header in LOAD_HEADERS:
        table.add_column(header, justify="right")
    for level in doc["levels"]:
        table.add_row(*level_cells(level))
    return table


def largest_level_ratios(doc: dict) -> dict[str, tuple[float, int]]:
    """Per server, its throughput at the largest level over its best at fewer clients, and that
    level's clients: whether it holds its speed as load rises. Only where every level asked the
    same prompts (``equal_levels``); levels of other work do not compare.

    Example: levels 1, 4, 16 at 30, 50, 48 tok/s -> {"s": (0.96, 4)}."""
    if not doc["config"].get("equal_levels"):
        return {}
    ratios = {}
    for server in dict.fromkeys(level["server"] for level in doc["levels"]):
        levels = sorted((lv["concurrency"], lv["throughput_tok_s"]) for lv in doc["levels"] if lv["server"] == server)
        if len(levels) > 1 and all(tps for _, tps in levels):
            best_n, best = max(levels[:-1], key=lambda level: level[1])
            ratios[server] = (levels[-1][1] / best, best_n)
    return ratios


def write_load_report(doc: dict, out: Path) -> None:
    """``load.md`` with the table, the setup and the plots (``load.png``, ``memory.png``)."""
    from .report import md_table

    config = doc["config"]
    lines = ["# quickdraft load bench", "",
             f"Run of {config['date']} on {config['cpu']['model']} ({config['cpu']['cores']} cores). "
             f"Task {config['task']}: {doc['prompts']} prompts of {config['prompt_tokens'][0]}-"
             f"{config['prompt_tokens'][1]} tokens, {config['max_tokens']} new tokens each, greedy; "
             + (f"every level asks the same {doc['prompts']} prompts, spread over its clients"
                if config.get("equal_levels") else f"{config['requests_per_client']} requests per client")
             + f"; context {config['n_ctx']}; "
             f"method {config['method']}" + (f"; quickdraft serve {' '.join(config['server_args'])}"
                                             if config.get("server_args") else "") + ".", "",
             "TPOT: seconds per output token after the first, per request. Answers: each compared with the "
             "prompt's greedy answer served alone by quickdraft (exact; differs from some token on, with how "
             "many of those are certified numeric near-ties where they part; mixed: another prompt's answer).", "",
             md_table(LOAD_HEADERS, [level_cells(level) for level in doc["levels"]], right=range(1, 10)), ""]
    top = max(doc["config"]["concurrency"])
    lines += [f"- {server}: {top} clients make {ratio:.3f} of its best throughput at fewer clients ({n})."
              for server, (ratio, n) in largest_level_ratios(doc).items()] + [""]
    for name, plot in (("load.png", plot_load), ("memory.png", plot_memory)):
        try:
            fig = plot(doc)
            if fig is not None:
                fig.savefig(out / name, dpi=110)
                lines += [f"![{name}]({name})", ""]
        except Exception as e:  # a plot must not lose the report
            lines.append(f"- `{name}`: failed ({type(e).__name__}: {e})")
    (out / "load.md").write_text("\n".join(lines) + "\n")


def plot_load(doc: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = list(dict.fromkeys(level["server"] for level in doc["levels"]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for server in servers:
        levels = [lv for lv in doc["levels"] if lv["server"] == server]
        xs = [lv["concurrency"] for lv in levels]
        axes[0].plot(xs, [lv["throughput_tok_s"] or 0 for lv in levels], marker="o", label=server)
        axes[1].plot(xs, [lv["ttft_p50_s"] or 0 for lv in levels], marker="o", label=f"{server} p50")
        axes[1].plot(xs, [lv["ttft_p99_s"] or 0 for lv in levels], marker="x", linestyle="--", label=f"{server} p99")
        axes[2].plot(xs, [(lv["tpot_p50_s"] or 0) * 1e3 for lv in levels], marker="o", label=f"{server} p50")
        axes[2].plot(xs, [(lv["tpot_p99_s"] or 0) * 1e3 for lv in levels], marker="x", linestyle="--",
                     label=f"{server} p99")
    for ax, title, ylabel in zip(axes, ("total throughput", "time to first token", "time per output token"),
                                 ("tokens/s", "seconds", "ms")):
        ax.set(title=title, xlabel="concurrent clients", ylabel=ylabel, xscale="log", xticks=doc["config"]["concurrency"])
        ax.set_xticklabels([str(n) for n in doc["config"]["concurrency"]])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_memory(doc: dict):
    if not doc["memory_mb"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for key in dict.fromkeys((m["server"], m["concurrency"]) for m in doc["memory_mb"]):
        points = [m for m in doc["memory_mb"] if (m["server"], m["concurrency"]) == key and m["rss_mb"]]
        ax.plot([m["t_s"] for m in points], [m["rss_mb"] for m in points], label=f"{key[0]}, {key[1]} clients")
    ax.set(title="server memory (RSS)", xlabel="seconds into the level", ylabel="MB")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


__all__ = ["LoadConfig", "Record", "classify_answer", "percentile", "run_load", "summarize"]
