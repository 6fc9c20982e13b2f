"""A newcomer's first request: each request in a fresh process, ``auto`` against plain decoding and
any fixed (method, k).

    .venv/bin/python scripts/fresh_process.py [--rounds 2] [--max-tokens 96]
        [--methods ar,auto,draft:2,draft:4,draft:8,suffix,ngram] [--prompts demo,translation/fr,...]
        [-- extra generate options]

Runs ``quickdraft generate --json`` once per (prompt, method, round), the methods in an order
rotated per round, and reports per prompt each method's decode speed (median over rounds) and its
ratio to plain decoding in the same round (median, min-max), and auto against the best other
method. Prompts: the demo prompt, two translations and two summaries (the kinds of prompt where an
earlier measurement found a cold auto slower than plain), or those named by --prompts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from quickdraft.bench.tasks import TASKS
from quickdraft.system import cpu_info

DEMO = "Write a Python function that merges two sorted lists."
DEFAULT_PROMPTS = "demo,translation/fr,translation/de,summarize/town,summarize/heatpump"


def prompts(names: list[str]) -> list[tuple[str, str]]:
    texts = {"demo": DEMO, **{p.prompt_id: p.turns[0] for task in ("everyday", "grounded") for p in TASKS[task]()}}
    unknown = [n for n in names if n not in texts]
    if unknown:
        raise SystemExit(f"unknown prompt {unknown[0]!r}; known: {', '.join(texts)}")
    return [(n, texts[n]) for n in names]


def decode_speed(prompt: str, method: str, max_tokens: int, extra: list[str]) -> dict:
    """One request in a fresh process; ``method`` is a method name or ``name:k``."""
    name, _, k = method.partition(":")
    exe = Path(sys.executable).with_name("quickdraft")
    command = [str(exe), "generate", "--json", "--method", name, "-n", str(max_tokens), *(["-k", k] if k else []),
               *extra, prompt]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout)["stats"]
    decode = stats["total_time_s"] - stats["prefill_time_s"]
    return {"tokens": stats["generated_tokens"], "decode_s": decode, "tok_s": stats["generated_tokens"] / decode,
            "forwards": stats["target_forwards"], "sources": stats.get("draft_sources")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--methods", default="ar,auto", help="comma-separated; name or name:k (ar is always run)")
    parser.add_argument("--prompts", default=DEFAULT_PROMPTS)
    parser.add_argument("extra", nargs="*", help="more `quickdraft generate` options (after --)")
    args = parser.parse_args()
    methods = ["ar", *(m for m in args.methods.split(",") if m and m != "ar")]
    table = []
    for name, prompt in prompts(args.prompts.split(",")):
        ratios: dict[str, list[float]] = {m: [] for m in methods}
        speeds: dict[str, list[float]] = {m: [] for m in methods}
        for r in range(args.rounds):
            order = methods[r % len(methods):] + methods[:r % len(methods)]
            got = {m: decode_speed(prompt, m, args.max_tokens, args.extra) for m in order}
            for m in methods:
                speeds[m].append(got[m]["tok_s"])
                ratios[m].append(got[m]["tok_s"] / got["ar"]["tok_s"])
            print(json.dumps({"prompt": name, "round": r, **{m: {k: (round(v, 3) if isinstance(v, float) else v)
                                                                   for k, v in got[m].items()} for m in order}}),
                  flush=True)
        table.append((name, speeds, ratios))
    print(f"\n{cpu_info().name}, {args.max_tokens} tokens, {args.rounds} rounds, each request a fresh process; "
          "tok/s median, ratio to ar in the same round median (min-max)\n")
    print("| prompt | " + " | ".join(methods) + " | auto / best other |")
    print("|---|" + "---|" * (len(methods) + 1))
    for name, speeds, ratios in table:
        cells = [f"{statistics.median(speeds['ar']):.1f} tok/s"]
        cells += [f"{statistics.median(ratios[m]):.2f} ({min(ratios[m]):.2f}-{max(ratios[m]):.2f})" for m in methods[1:]]
        others = [statistics.median(ratios[m]) for m in methods if m != "auto"]
        best = f"{statistics.median(ratios['auto']) / max(others):.2f}" if "auto" in methods else "-"
        print(f"| {name} | " + " | ".join(cells) + f" | {best} |")


if __name__ == "__main__":
    main()
