"""What auto's grammar source (jump-forward drafts of the tokens a JSON schema forces) adds.

    .venv/bin/python scripts/jump_forward.py [--rounds 2] [--max-tokens 192] [--limit 6]

On the bench's extraction task (quickdraft/bench/data/extraction.jsonl, each answer constrained
to its prompt's schema): plain decoding (ar), auto, and auto with ``jump_forward=False`` (the
grammar still constrains, its forced tokens are not drafted), run back to back per prompt in an
order rotated per round, every sample from a fresh engine memory (the bench's cold samples). It
prints per configuration the decode tokens per second (sum of tokens over sum of decode time),
the speedup over ar, tokens per target forward, the steps each source drafted and how many
answers are valid against their schema; and whether both auto answers equal ar's.
"""

from __future__ import annotations

import argparse
import json

import quickdraft
from quickdraft.bench.runner import BenchConfig, rotate, run_sample
from quickdraft.bench.tasks import load_extraction, spread
from quickdraft.system import cpu_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--limit", type=int, default=6)
    args = parser.parse_args()
    jumping = quickdraft.load(method="ar")
    plain_auto = quickdraft.load(method="ar", jump_forward=False)
    engines = {"ar": (jumping, "ar"), "auto": (jumping, "auto"), "auto, no grammar source": (plain_auto, "auto")}
    config = BenchConfig(max_tokens=args.max_tokens)
    samples: dict[str, list[dict]] = {name: [] for name in engines}
    equal = {name: 0 for name in engines}
    for round_ in range(args.rounds):
        for prompt in spread(load_extraction(), args.limit):
            messages = [{"role": "user", "content": prompt.turns[0]}]
            got = {}
            for name in rotate(list(engines), round_):
                engine, method = engines[name]
                got[name] = run_sample(engine, messages, method, config, (prompt.task, prompt.prompt_id, 0, round_),
                                       schema=prompt.schema)
                samples[name].append(got[name])
            for name in engines:
                equal[name] += got[name]["token_ids"] == got["ar"]["token_ids"]
    ar_rate = rate(samples["ar"])
    print(f"CPU: {cpu_info().model}; {len(samples['ar'])} samples per configuration "
          f"({args.rounds} rounds), max_tokens {args.max_tokens}")
    print("| configuration | decode tok/s | speedup | tokens per forward | steps drafted by source | valid | equal to ar |")
    print("|---|---|---|---|---|---|---|")
    for name, group in samples.items():
        sources: dict[str, int] = {}
        for s in group:
            for source, n in (s["config"]["draft_sources"] or {}).items():
                sources[source] = sources.get(source, 0) + n
        tau = sum(s["new_tokens"] for s in group) / sum(s["target_forwards"] for s in group)
        print(f"| {name} | {rate(group):.1f} | {rate(group) / ar_rate:.2f}x | {tau:.2f} | {json.dumps(sources)} "
              f"| {sum(bool(s['valid']) for s in group)}/{len(group)} | {equal[name]}/{len(group)} |")


def rate(group: list[dict]) -> float:
    return sum(s["new_tokens"] for s in group) / sum(s["decode_time_s"] for s in group)


if __name__ == "__main__":
    main()
