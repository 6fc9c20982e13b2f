"""Run a benchmark: every prompt-turn with every method, AR interleaved in the same run.

For each prompt-turn and repeat the methods run back to back in an order that rotates per
repeat, so slow drift of the machine hits all methods alike. Multi-turn questions carry AR's own
earlier answer in the history (greedy speculative answers are the same text). Every finished
sample is checkpointed to results.json, so ``--resume`` continues an interrupted run and Ctrl-C
leaves a valid partial report.

Every sample starts from the state a new user's engine has: a fresh engine memory (no suffix
store of earlier outputs, nothing learned about acceptance or costs), so no sample sees another's
answer, least of all an earlier answer to its own prompt. What is cached on disk (the cost curve
auto starts from, the KV cache's prompt prefix, which only prefill time sees) is named in the
report. ``warm`` adds rows "<method> (warm)": the same method after the task's earlier prompt-turns
in order (one memory per task, method and repeat, fed by those warm runs), which is what a
server that has answered them would know; a prompt-turn is never preceded by itself.

``acceptance`` runs every method but ``ar`` under each listed rule: a lossy one (``typical``) in
rows "<method> (typical)", each sample carrying how far its output moved from plain sampling
(``tv_per_token``, verifiers/typical.py) beside its speed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..check import check_against_ar
from ..engine import Memory
from ..errors import QuickdraftError
from ..grammar import Grammar
from ..models import DEFAULT_DRAFT, DEFAULT_TARGET, resolve_draft
from ..proposers import METHODS
from ..verifiers import EXACT, AcceptanceRule, acceptance_rule
from .metrics import AR_METHOD, WARM, geometric_mean, run_label, sample_key, summarize, with_speedups
from .tasks import BenchPrompt, load_tasks

T = TypeVar("T")


@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``limit``: prompts per task (evenly spread); ``repeat``: runs per method."""

    target: str = DEFAULT_TARGET
    draft: str = DEFAULT_DRAFT
    tasks: tuple[str, ...] = ("humaneval", "mt-bench", "code-edit")
    data: tuple[str, ...] = ()
    methods: tuple[str, ...] = (AR_METHOD, "auto", "draft", "ngram", "suffix")
    max_tokens: int = 128
    limit: int | None = 4
    repeat: int = 1
    num_draft: int | None = None  # None: each method's default (16 for auto, else 4)
    temperature: float = 0.0
    seed: int = 0
    n_ctx: int = 4096
    peer_limit: int = 2
    controller: str = "fixed"
    backend: str = "llamacpp"  # or "torch" (transformers), with its dtype
    dtype: str | None = None  # torch's (default bfloat16)
    heads: str | None = None  # trained heads for medusa/eagle (a directory, or one holding medusa/ and eagle/)
    warm: bool = False  # also each method after the task's earlier prompt-turns (rows "<method> (warm)")
    threads: int | None = None
    acceptance: tuple[str, ...] = ("exact",)  # the rules every method but ar runs under (verifiers.ACCEPTANCE)
    acceptance_options: dict = field(default_factory=dict)  # e.g. {"posterior_threshold": 0.05}

    def __post_init__(self) -> None:
        if AR_METHOD not in self.methods:  # the baseline every speedup is measured against
            object.__setattr__(self, "methods", (AR_METHOD, *self.methods))
        if self.repeat < 1 or self.max_tokens < 1 or (self.limit is not None and self.limit < 1):
            raise QuickdraftError("--repeat, --max-tokens and --limit must be >= 1")
        if not self.acceptance:
            raise QuickdraftError("--acceptance needs at least one rule", param="acceptance")
        self.rules()  # fail fast: an unknown rule, an option no rule takes, a bad value

    def rules(self) -> list[AcceptanceRule]:
        """The acceptance rules the methods run under, each with the options that rule declares."""
        rules = []
        for name in self.acceptance:
            declared = set(asdict(acceptance_rule(name)))
            rules.append(acceptance_rule(name, **{k: v for k, v in self.acceptance_options.items() if k in declared}))
        unused = sorted(set(self.acceptance_options) - {k for rule in rules for k in asdict(rule)})
        if unused:
            raise QuickdraftError(f"no acceptance rule of {', '.join(self.acceptance)} takes the option "
                                  f"{unused[0]}", param=unused[0])
        return rules

    def runs(self) -> list[tuple[str, str, AcceptanceRule]]:
        """``(row label, method, rule)`` per method and rule, ``ar`` once (plain decoding has no drafts
        to accept): ``("draft (typical)", "draft", TypicalAcceptance())``."""
        rules = self.rules()
        return [(run_label(m, rule.name), m, rule) for m in self.methods
                for rule in ([EXACT] if m == AR_METHOD else rules)]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Results:
    """The results.json document, written atomically after every change."""

    path: Path
    doc: dict = field(default_factory=dict)

    @classmethod
    def start(cls, out: Path, config: BenchConfig, system: dict, *, resume: bool, overwrite: bool) -> "Results":
        path = out / "results.json"
        if path.exists() and resume:
            doc = json.loads(path.read_text())
            wanted = config.to_dict()
            if {k: doc.get("config", {}).get(k) for k in wanted} != wanted:
                raise QuickdraftError(f"{path} was made with other settings; --resume needs the same "
                                      f"options (they are under config in that file)")
            return cls(path, doc)
        if path.exists() and not overwrite:
            raise QuickdraftError(f"{path} exists: pass --resume to continue that run, --overwrite to "
                                  f"replace it, or --out DIR to write elsewhere")
        out.mkdir(parents=True, exist_ok=True)
        return cls(path, {"config": {**config.to_dict(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "system": system},
                          "samples": [], "summary": [], "calibration": None, "peers": [], "peer_status": {}})

    def save(self) -> None:
        samples = self.doc["samples"]
        for sample, paired in zip(samples, with_speedups(samples)):
            sample["speedup"] = paired["speedup"]
        self.doc["summary"] = summarize(self.doc["samples"])
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.doc, indent=1))
        os.replace(tmp, self.path)


def rotate(methods: Sequence[T], by: int) -> list[T]:
    """Run order for repeat ``by``: rotate(["ar", "draft", "ngram"], 1) == ["draft", "ngram", "ar"]."""
    by %= len(methods)
    return [*methods[by:], *methods[:by]]


def run_sample(engine, messages: list[dict], method: str, config: BenchConfig, key: tuple,
               memory: Memory | None = None, rule: AcceptanceRule | str = "exact", schema: dict | None = None) -> dict:
    """Generate once and return the sample record (see the schema in quickdraft.bench). The engine
    runs with ``memory`` (a warm sample's), else with a fresh one (a cold sample), verifying
    drafts by ``rule``. ``schema``: the JSON schema the answer is constrained to; ``valid`` then
    says whether it is valid against it."""
    task, prompt_id, turn, repeat = key
    engine.memory = memory if memory is not None else Memory()
    request = engine.prepare(messages, method=method, max_tokens=config.max_tokens, num_draft=config.num_draft,
                             temperature=config.temperature, seed=config.seed + repeat, acceptance=rule,
                             grammar=None if schema is None else Grammar.json_schema(schema))
    start = time.perf_counter()
    result = engine.generate(request)
    elapsed = time.perf_counter() - start
    s = result.stats
    keep = ("target_forwards", "drafted_tokens", "accepted_tokens", "accepted_lengths", "acceptance_by_position",
            "drafted_by_position", "accepted_by_position", "draft_time_s", "verify_time_s", "prefill_time_s",
            "tokens_per_second", "ended_on_eos", "acceptance", "lossless")
    label = run_label(method, request.acceptance.name) + ("" if memory is None else WARM)
    return {"task": task, "prompt_id": prompt_id, "turn": turn, "repeat": repeat, "method": label,
            "mode": "cold" if memory is None else "warm",
            "config": {"num_draft": request.budget if method != AR_METHOD else 0,
                       "temperature": config.temperature, "controller": request.controller,
                       "draft_lengths": s.get("draft_lengths"), "draft_sources": s.get("draft_sources")},
            "prompt_tokens": result.prompt_tokens, "new_tokens": s["generated_tokens"], "time_s": elapsed,
            "decode_time_s": s["total_time_s"] - s["prefill_time_s"], **{k: s[k] for k in keep},
            "tv_per_token": s.get("tv_per_token"),
            "speedup": None, "check": None, "token_ids": result.token_ids, "text": result.text,
            "valid": None if schema is None else schema_valid(result.text, schema)}


def schema_valid(text: str, schema: dict) -> bool:
    """Whether ``text`` is one JSON value valid against ``schema`` (jsonschema, the bench extra)."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def check_samples(engine, samples: list[dict], prompt_tokens: list[int]) -> None:
    """Set ``check`` on each greedy non-AR sample of one prompt-turn and repeat, against its AR."""
    ar = next(s for s in samples if s["method"] == AR_METHOD)
    for s in samples:
        if s["method"] != AR_METHOD and s["check"] is None and s["config"]["temperature"] == 0:
            s["check"] = check_against_ar(engine, prompt_tokens, s["token_ids"], ar["token_ids"]).to_dict()


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=console)


def running_status(samples: list[dict]) -> str:
    """'draft 1.12x, ngram 0.81x': geometric mean speedup so far per method."""
    per_method: dict[str, list[float]] = {}
    for s in with_speedups(samples):
        if s["method"] != AR_METHOD and s["speedup"]:
            per_method.setdefault(s["method"], []).append(s["speedup"])
    return ", ".join(f"{m} {geometric_mean(v):.2f}x" for m, v in per_method.items())


def run_bench(config: BenchConfig, out: Path, *, resume: bool = False, overwrite: bool = False,
              peers: bool = False, console: Console | None = None) -> dict:
    """Run (or resume) the benchmark, write results.json and the report into ``out``; returns the
    results document. Ctrl-C stops early and still writes a valid partial report."""
    from .. import load
    from .report import summary_table, write_report

    console = console or Console()
    prompts = load_tasks(config.tasks, [Path(p) for p in config.data], config.limit)
    drafting = any(METHODS[m].uses_draft_model for m in config.methods)
    given = {"n_ctx": config.n_ctx, "n_threads": config.threads, "dtype": config.dtype, "heads": config.heads}
    engine = load(config.target, config.draft if drafting else None, method=AR_METHOD, backend=config.backend,
                  controller=config.controller, **{k: v for k, v in given.items() if v is not None})
    for method in config.methods:
        engine.spec(method)  # fail fast: unknown method, missing draft, bad options
    draft = engine.draft_model() if drafting else None  # loaded and checked now, and its cost calibrated
    results = Results.start(out, config, engine.describe(), resume=resume, overwrite=overwrite)
    units: list[tuple[BenchPrompt, int, list[dict]]] = []
    context = engine.prompt_tokens([{"role": "user", "content": prompts[0].turns[0]}])
    try:
        with progress_bar(console) as progress:
            if results.doc["calibration"] is None:
                results.doc["calibration"] = calibrate_engine(engine.target, draft, context, progress,
                                                              draft_context=engine.draft.tokens(context) if draft else None)
                results.save()
            _run_prompts(engine, prompts, config, results, progress, units)
            if peers:
                _run_peers(engine, config, results, progress, units)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: writing a partial report; --resume continues the run[/]")
    results.save()
    write_report(results.doc, out)
    console.print(summary_table(results.doc))
    console.print(f"results: {results.path}  report: {out / 'report.md'}")
    return results.doc


def calibrate_engine(target, draft, context: list[int], progress: Progress, repeats: int = 3,
                     draft_context: list[int] | None = None) -> dict:
    """The verify cost curve after a realistic context (a benchmark prompt; ``draft_context``: the
    draft model's tokens of it when its vocabulary is another)."""
    from ..calibrate import calibrate, forwards

    ks = range(1, 17)
    bar = progress.add_task("calibrating", total=forwards(ks, repeats), status="verify cost curve k=1..16")
    result = calibrate(target, context, draft, ks=ks, repeats=repeats, on_step=lambda: progress.advance(bar),
                       draft_context=draft_context)
    progress.update(bar, visible=False)
    return result


def _run_prompts(engine, prompts, config: BenchConfig, results: Results, progress: Progress, units: list) -> None:
    samples = results.doc["samples"]
    done = {sample_key(s): s for s in samples}
    runs = config.runs()
    warm = [run for run in runs if run[1] != AR_METHOD] if config.warm else []
    total = sum(len(p.turns) for p in prompts) * config.repeat * (len(runs) + len(warm))
    bar = progress.add_task("bench", total=total, completed=len(done), status=running_status(samples))
    memories: dict[tuple, Memory] = {}  # (task, row label, repeat) -> what the warm runs so far taught it

    def sample(key: tuple, messages: list[dict], method: str, rule: AcceptanceRule,
               memory: Memory | None = None, schema: dict | None = None) -> dict:
        if key not in done:
            progress.update(bar, description=f"{key[0]} {key[1]} [{key[4]}]")
            done[key] = run_sample(engine, messages, method, config, key[:4], memory, rule, schema)
            samples.append(done[key])
            progress.update(bar, advance=1, status=running_status(samples))
        elif memory is not None:  # resumed: run it again unrecorded, so the chain learns what it did
            run_sample(engine, messages, method, config, key[:4], memory, rule, schema)
        return done[key]

    for prompt in prompts:
        messages: list[dict] = []
        for turn, question in enumerate(prompt.turns):
            messages = [*messages, {"role": "user", "content": question}]
            units.append((prompt, turn, messages))
            prompt_tokens = engine.prompt_tokens(messages)
            for repeat in range(config.repeat):
                unit = (prompt.task, prompt.prompt_id, turn, repeat)
                group = [sample((*unit, label), messages, m, rule, schema=prompt.schema)
                         for label, m, rule in rotate(runs, repeat)]
                group += [sample((*unit, f"{label}{WARM}"), messages, m, rule,
                                 memories.setdefault((prompt.task, label, repeat), Memory()), prompt.schema)
                          for label, m, rule in warm]
                check_samples(engine, group, prompt_tokens)
                results.save()
            ar_answer = done[(prompt.task, prompt.prompt_id, turn, 0, AR_METHOD)]["text"]
            messages = [*messages, {"role": "assistant", "content": ar_answer}]


def _run_peers(engine, config: BenchConfig, results: Results, progress: Progress, units: list) -> None:
    from .peers import PeerPrompt, run_peers
    from .tasks import spread

    chosen = [u for task in dict.fromkeys(p.task for p, _, _ in units)
              for u in spread([u for u in units if u[0].task == task], config.peer_limit)]
    peer_prompts = []
    for prompt, turn, messages in chosen:
        ar = next(s for s in results.doc["samples"] if s["method"] == AR_METHOD and s["repeat"] == 0
                  and (s["task"], s["prompt_id"], s["turn"]) == (prompt.task, prompt.prompt_id, turn))
        peer_prompts.append(PeerPrompt(prompt.task, prompt.prompt_id, turn, engine.prompt_tokens(messages),
                                       ar["token_ids"]))
    done = {tuple(r[k] for k in ("peer", "method", "task", "prompt_id", "turn", "repeat"))
            for r in results.doc["peers"]}

    def on_row(row: dict) -> None:
        results.doc["peers"].append(row)
        results.save()

    status = run_peers(peer_prompts, target_path=engine.target.path,
                       draft_path=resolve_draft(config.draft, engine.target.path),
                       max_tokens=config.max_tokens, repeat=config.repeat, num_draft=config.num_draft,
                       on_row=on_row, progress=progress, done=done)
    results.doc["peer_status"].update(status)
    results.save()
