"""A conversation's second turn: time to first token with and without prompt reuse, through the real server.

    .venv/bin/python scripts/second_turn.py [--conversations 6] [--clients 1] [--max-tokens 128]
                                            [--task mt-bench] [--llama-server]

For each setting (``quickdraft serve``, then ``quickdraft serve --no-prompt-cache``, then with
``--llama-server`` llama.cpp's own server, ``make llama-server``, whose slots keep their last
prompt; default pair, method auto, as ``quickdraft loadtest`` starts them), a freshly started
server on loopback and ``--clients`` concurrent clients (the real ``openai`` client, streaming,
greedy), the conversations dealt to them in turn. Per conversation: the first turn, then the
second (the first message, the assistant's answer, the task's second message); with several
clients other users' turns come between a conversation's two. Prints per turn and setting the
time to first token (median and max), the prompt tokens and how many came from the cache, and
how many second answers are the same with and without reuse.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from quickdraft.bench.load import MODEL_NAME, LoadConfig, free_port, launched, send, server_command
from quickdraft.bench.tasks import TASKS
from quickdraft.models import resolve_draft, resolve_model
from quickdraft.system import cpu_info


async def turn(client, messages: list[dict], max_tokens: int) -> dict:
    """One streamed chat request: seconds to the first text, the answer, prompt tokens and how
    many of them the server took from its cache."""
    start, first, text, usage = time.perf_counter(), None, "", None
    stream, _ = await send(client, model=MODEL_NAME, messages=messages, max_tokens=max_tokens, temperature=0,
                           stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        content = chunk.choices[0].delta.content if chunk.choices else None
        if content:
            first = time.perf_counter() - start if first is None else first
            text += content
        usage = chunk.usage or usage
    details = getattr(usage, "prompt_tokens_details", None)
    return {"ttft": first, "text": text, "prompt_tokens": usage.prompt_tokens if usage else None,
            "cached": getattr(details, "cached_tokens", None)}


async def conversations(port: int, pairs: list[tuple[str, str]], max_tokens: int,
                        clients: int) -> list[tuple[dict, dict]]:
    """Each pair's two turns, the pairs dealt to ``clients`` concurrent clients in turn; in pair order."""
    from openai import AsyncOpenAI

    out: dict[int, tuple[dict, dict]] = {}
    async with AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0,
                           timeout=600) as client:
        async def user(index: int) -> None:
            for i in range(index, len(pairs), clients):
                first, second = pairs[i]
                messages = [{"role": "user", "content": first}]
                one = await turn(client, messages, max_tokens)
                messages += [{"role": "assistant", "content": one["text"]}, {"role": "user", "content": second}]
                out[i] = (one, await turn(client, messages, max_tokens))

        await asyncio.gather(*(user(k) for k in range(clients)))
    return [out[i] for i in range(len(pairs))]


SETTINGS = {  # name: (server, extra arguments)
    "quickdraft serve": ("quickdraft", ()),
    "quickdraft serve --no-prompt-cache": ("quickdraft", ("--no-prompt-cache",)),
    "llama-server b11434": ("llama-server", ()),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--clients", type=int, default=1, help="Concurrent clients (each its share of the conversations).")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--task", default="mt-bench", help="A bench task whose prompts have two turns.")
    parser.add_argument("--llama-server", action="store_true", help="Also llama.cpp's llama-server (-np CLIENTS).")
    parser.add_argument("--out", type=Path, default=Path("second-turn-out"), help="Where the servers' logs go.")
    args = parser.parse_args()
    pairs = [tuple(p.turns[:2]) for p in TASKS[args.task]() if len(p.turns) >= 2][:args.conversations]
    if not pairs:
        parser.error(f"no {args.task} prompt has two turns")
    if args.clients < 1:
        parser.error("--clients must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    config = LoadConfig(servers=("quickdraft",), concurrency=(args.clients,))
    target, runs = resolve_model(config.target), {}
    draft = resolve_draft(config.draft, target)
    names = [n for n in SETTINGS if args.llama_server or SETTINGS[n][0] == "quickdraft"]
    for name in names:
        server, extra = SETTINGS[name]
        port = free_port()
        command = server_command(server, LoadConfig(servers=(server,), concurrency=(args.clients,), server_args=extra),
                                 args.clients, port, target, draft)
        with launched(command, port, args.out / "server.log"):
            runs[name] = asyncio.run(conversations(port, pairs, args.max_tokens, args.clients))
        for i, (one, two) in enumerate(runs[name]):
            print(f"{name}: conversation {i}: turn 1 TTFT {one['ttft']:.2f} s ({one['prompt_tokens']} prompt tokens), "
                  f"turn 2 TTFT {two['ttft']:.2f} s ({two['prompt_tokens']} prompt tokens, {two['cached']} cached)",
                  flush=True)
    print(f"\n{cpu_info().model}, {config.target} + {config.draft}, {args.clients} client(s), {len(pairs)} "
          f"{args.task} conversations, {args.max_tokens} tokens a turn\n")
    print("| server | turn 1 TTFT median / max | turn 2 TTFT median / max | turn 2 prompt tokens | "
          "turn 2 cached tokens median |\n|---|---|---|---|---|")
    for name, results in runs.items():
        cells = []
        for k in (0, 1):
            ttft = [r[k]["ttft"] for r in results]
            cells.append(f"{statistics.median(ttft):.2f} / {max(ttft):.2f} s")
        tokens = [r[1]["prompt_tokens"] for r in results]
        cached = [r[1]["cached"] for r in results if r[1]["cached"] is not None]
        print(f"| {name} | {cells[0]} | {cells[1]} | {min(tokens)}-{max(tokens)} | "
              f"{statistics.median(cached) if cached else '-'} |")
    reuse, plain = runs["quickdraft serve"], runs["quickdraft serve --no-prompt-cache"]
    same = sum(a[1]["text"] == b[1]["text"] for a, b in zip(reuse, plain))
    print(f"\nsecond answers equal with and without reuse: {same} of {len(pairs)}")


if __name__ == "__main__":
    main()
