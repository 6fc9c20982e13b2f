"""A conversation's second turn: time to first token with and without prompt reuse, through the real server.

    .venv/bin/python scripts/second_turn.py [--conversations 6] [--max-tokens 128] [--task mt-bench]

For each setting (``quickdraft serve``, then ``quickdraft serve --no-prompt-cache``; default pair,
method auto, as ``quickdraft loadtest`` starts it), a freshly started server on loopback and one
client (the real ``openai`` client, streaming, greedy). Per conversation: the first turn, then the
second (the first message, the assistant's answer, the task's second message). Prints per turn
and setting the time to first token (median and max), the prompt tokens, and whether each second
answer is the same with and without reuse.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from quickdraft.bench.load import MODEL_NAME, LoadConfig, free_port, launched, server_command
from quickdraft.bench.tasks import TASKS
from quickdraft.models import resolve_draft, resolve_model
from quickdraft.system import cpu_info


async def turn(client, messages: list[dict], max_tokens: int) -> dict:
    """One streamed chat request: seconds to the first text, the answer, prompt tokens."""
    start, first, text, usage = time.perf_counter(), None, "", None
    stream = await client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=max_tokens,
                                                  temperature=0, stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        content = chunk.choices[0].delta.content if chunk.choices else None
        if content:
            first = time.perf_counter() - start if first is None else first
            text += content
        usage = chunk.usage or usage
    return {"ttft": first, "text": text, "prompt_tokens": usage.prompt_tokens if usage else None}


async def conversations(port: int, pairs: list[tuple[str, str]], max_tokens: int) -> list[tuple[dict, dict]]:
    from openai import AsyncOpenAI

    out = []
    async with AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0,
                           timeout=600) as client:
        for first, second in pairs:
            messages = [{"role": "user", "content": first}]
            one = await turn(client, messages, max_tokens)
            messages += [{"role": "assistant", "content": one["text"]}, {"role": "user", "content": second}]
            out.append((one, await turn(client, messages, max_tokens)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--task", default="mt-bench", help="A bench task whose prompts have two turns.")
    parser.add_argument("--out", type=Path, default=Path("second-turn-out"), help="Where the servers' logs go.")
    args = parser.parse_args()
    pairs = [tuple(p.turns[:2]) for p in TASKS[args.task]() if len(p.turns) >= 2][:args.conversations]
    if not pairs:
        parser.error(f"no {args.task} prompt has two turns")
    args.out.mkdir(parents=True, exist_ok=True)
    config = LoadConfig(servers=("quickdraft",), concurrency=(1,))
    target, runs = resolve_model(config.target), {}
    draft = resolve_draft(config.draft, target)
    for name, extra in (("reuse", ()), ("no reuse", ("--no-prompt-cache",))):
        port = free_port()
        command = server_command("quickdraft", LoadConfig(servers=("quickdraft",), concurrency=(1,), server_args=extra),
                                 1, port, target, draft)
        with launched(command, port, args.out / "server.log"):
            runs[name] = asyncio.run(conversations(port, pairs, args.max_tokens))
        for i, (one, two) in enumerate(runs[name]):
            print(f"{name}: conversation {i}: turn 1 TTFT {one['ttft']:.2f} s ({one['prompt_tokens']} prompt tokens), "
                  f"turn 2 TTFT {two['ttft']:.2f} s ({two['prompt_tokens']} prompt tokens)", flush=True)
    print(f"\n{cpu_info().model}, {config.target} + {config.draft}, quickdraft serve (auto), one client, "
          f"{len(pairs)} {args.task} conversations, {args.max_tokens} tokens a turn\n")
    print("| server | turn 1 TTFT median / max | turn 2 TTFT median / max | turn 2 prompt tokens |\n|---|---|---|---|")
    for name, results in runs.items():
        cells = []
        for k in (0, 1):
            ttft = [r[k]["ttft"] for r in results]
            cells.append(f"{statistics.median(ttft):.2f} / {max(ttft):.2f} s")
        tokens = [r[1]["prompt_tokens"] for r in results]
        print(f"| quickdraft serve{' --no-prompt-cache' if name == 'no reuse' else ''} | {cells[0]} | {cells[1]} | "
              f"{min(tokens)}-{max(tokens)} |")
    same = sum(a[1]["text"] == b[1]["text"] for a, b in zip(runs["reuse"], runs["no reuse"]))
    print(f"\nsecond answers equal with and without reuse: {same} of {len(pairs)}")


if __name__ == "__main__":
    main()
