"""A newcomer's first request: each request in a fresh process, ``auto`` against ``ar``.

    .venv/bin/python scripts/fresh_process.py [--rounds 2] [--max-tokens 96] [-- extra generate options]

Runs ``quickdraft generate --json`` once per (prompt, method, round), ar and auto interleaved, and
reports each prompt's decode speed ratio auto / ar (median over rounds, min-max) from the stats the
command prints (decode time: total less prefill). Prompts: the demo prompt, two translations and two
summaries (the kinds of prompt where an earlier measurement found a cold auto slower than plain).
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


def prompts() -> list[tuple[str, str]]:
    texts = {p.prompt_id: p.turns[0] for task in ("everyday", "grounded") for p in TASKS[task]()}
    chosen = ("translation/fr", "translation/de", "summarize/town", "summarize/heatpump")
    return [("demo", DEMO), *((k, texts[k]) for k in chosen)]


def decode_speed(prompt: str, method: str, max_tokens: int, extra: list[str]) -> dict:
    exe = Path(sys.executable).with_name("quickdraft")
    out = subprocess.run([str(exe), "generate", "--json", "--method", method, "-n", str(max_tokens), *extra, prompt],
                         capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout)["stats"]
    decode = stats["total_time_s"] - stats["prefill_time_s"]
    return {"tokens": stats["generated_tokens"], "decode_s": decode, "tok_s": stats["generated_tokens"] / decode,
            "forwards": stats["target_forwards"], "sources": stats.get("draft_sources")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("extra", nargs="*", help="more `quickdraft generate` options (after --)")
    args = parser.parse_args()
    rows = []
    for name, prompt in prompts():
        ratios, speeds = [], {"ar": [], "auto": []}
        for r in range(args.rounds):
            order = ("ar", "auto") if r % 2 == 0 else ("auto", "ar")
            got = {m: decode_speed(prompt, m, args.max_tokens, args.extra) for m in order}
            for m in got:
                speeds[m].append(got[m]["tok_s"])
            ratios.append(got["auto"]["tok_s"] / got["ar"]["tok_s"])
            print(json.dumps({"prompt": name, "round": r, **{m: {k: (round(v, 3) if isinstance(v, float) else v)
                                                                   for k, v in got[m].items()} for m in got}}), flush=True)
        rows.append((name, statistics.median(speeds["ar"]), statistics.median(speeds["auto"]),
                     statistics.median(ratios), min(ratios), max(ratios)))
    print(f"\n{cpu_info().name}, {args.max_tokens} tokens, {args.rounds} rounds, each request a fresh process\n")
    print("| prompt | ar tok/s | auto tok/s | auto / ar (min-max) |\n|---|---|---|---|")
    for name, ar, auto, med, lo, hi in rows:
        print(f"| {name} | {ar:.1f} | {auto:.1f} | {med:.2f} ({lo:.2f}-{hi:.2f}) |")


if __name__ == "__main__":
    main()
