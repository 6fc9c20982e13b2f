#!/usr/bin/env python
"""Which quantization of the bundled pair pays on this CPU: requantize the bundled Q4_K_M files
with llama.cpp's own quantizer and measure, for each candidate, the file size, plain decoding
speed, the verify cost curve, perplexity on held-out text and top-1 agreement with the bundled
file (the only reference we have: the unquantized weights are not shipped).

    .venv/bin/python scripts/quant_candidates.py [--out quant-out] [--threads N]

Candidates live in <cache>/candidates/ (made once). Held-out text: three files of the Python
standard library (code) and Python's license (prose), none of them bench prompts.
Prints a Markdown table and writes it, with the raw numbers, to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from quickdraft.backends.llamacpp import LlamaCppBackend, requantize
from quickdraft.calibrate import CONTEXT_TEXT, calibrate
from quickdraft.models import resolve_model
from quickdraft.system import cache_dir, cpu_info

TARGETS = {  # name -> (quant_type, output/embedding type or None)
    "Q4_K_M (bundled)": None,
    "Q4_0": ("Q4_0", None),
    "Q4_0, output Q8_0": ("Q4_0", "Q8_0"),
    "IQ4_NL": ("IQ4_NL", None),
    "Q4_K": ("Q4_K_S", None),
}
DRAFTS = {"Q4_K_M (bundled)": None, "Q4_0": ("Q4_0", None)}
WINDOW = 512  # tokens per perplexity window


def held_out_text() -> list[str]:
    """Three standard-library modules (code) and Python's license (prose), 6000 characters each."""
    import difflib
    import os
    import textwrap
    import typing

    prose = (Path(os.__file__).parent / "LICENSE.txt").read_text()
    return [text[:6000] for text in (*(Path(m.__file__).read_text() for m in (difflib, textwrap, typing)), prose)]


def candidate(base: str, name: str, recipe) -> Path:
    source = resolve_model(base)
    if recipe is None:
        return source
    quant, output = recipe
    path = cache_dir() / "candidates" / f"{Path(source).stem.rsplit('-', 1)[0]}-{quant}{'-out-' + output if output else ''}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        requantize(source, path, quant, output_type=output)
        print(f"  made {path.name} in {time.time() - start:.0f} s", file=sys.stderr)
    return path


def logits_of(backend: LlamaCppBackend, tokens: list[int]) -> np.ndarray:
    """Logits of every position of ``tokens`` (a fresh cache), in windows of WINDOW tokens."""
    rows = []
    for start in range(0, len(tokens) - 1, WINDOW):
        backend.rollback(0)
        rows.append(backend.forward(tokens[start:start + WINDOW]))
    backend.rollback(0)
    return np.concatenate(rows)


def measure(path: Path, texts: list[str], reference: list[np.ndarray] | None, threads: int) -> dict:
    backend = LlamaCppBackend(path, n_ctx=2048, n_threads=threads)
    token_lists = [backend.tokenize(t, special=False)[:WINDOW * 2] for t in texts]
    nll, count, agree = 0.0, 0, 0
    argmaxes = []
    for i, tokens in enumerate(token_lists):
        logits = logits_of(backend, tokens)[:len(tokens) - 1]
        log_z = logits.max(1) + np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
        nll += float((log_z - logits[np.arange(len(logits)), tokens[1:]]).sum())
        count += len(logits)
        argmaxes.append(logits.argmax(1))
        if reference is not None:
            agree += int((argmaxes[-1] == reference[i]).sum())
    # plain decoding: 64 greedy steps after a short prompt, twice; the best run
    prompt = backend.tokenize("def merge_sorted(a, b):\n", special=False)
    speeds = []
    for _ in range(2):
        backend.prefill(prompt[:-1])
        token, start = prompt[-1], time.perf_counter()
        for _ in range(64):
            token = int(backend.forward([token])[0].argmax())
        speeds.append(64 / (time.perf_counter() - start))
        backend.rollback(0)
    context = backend.tokenize(CONTEXT_TEXT, special=False)[:400]
    curve = calibrate(backend, context, ks=range(1, 18), repeats=3)["target"]
    backend.close()
    return {"file": path.name, "mb": path.stat().st_size / 1e6, "ar_tok_s": max(speeds),
            "step_ms": curve["median_s"][0] * 1e3, "relative": curve["relative"],
            "perplexity": float(np.exp(nll / count)), "agreement": agree / count if reference is not None else 1.0,
            "argmax": argmaxes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("quant-out"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = args.threads or cpu_info().cores
    texts = held_out_text()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, reference = {}, None
    for role, base, table in (("target", "qwen2.5-coder-1.5b-instruct", TARGETS),
                              ("draft", "qwen2.5-coder-0.5b-instruct", DRAFTS)):
        reference = None
        for name, recipe in table.items():
            print(f"{role} {name} ...", file=sys.stderr)
            result = measure(candidate(base, name, recipe), texts, reference, threads)
            if reference is None:
                reference = result["argmax"]
            result.pop("argmax")
            rows[f"{role}: {name}"] = result
            (args.out / "candidates.json").write_text(json.dumps(rows, indent=1))
    lines = [f"Measured on {cpu_info().name}, {threads} threads.", "",
             "| model | file MB | plain tok/s | step ms | k=2 | k=4 | k=8 | k=16 | perplexity | top-1 agreement with Q4_K_M |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        rel = r["relative"]
        lines.append(f"| {name} | {r['mb']:.0f} | {r['ar_tok_s']:.1f} | {r['step_ms']:.1f} | {rel[1]:.2f} | {rel[3]:.2f} | "
                     f"{rel[7]:.2f} | {rel[15]:.2f} | {r['perplexity']:.3f} | {100 * r['agreement']:.1f}% |")
    table = "\n".join(lines)
    (args.out / "candidates.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
