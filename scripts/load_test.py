#!/usr/bin/env python
"""Load test for a running ``quickdraft serve``: N concurrent streams for a fixed time.

    .venv/bin/quickdraft serve &                      # in another terminal
    .venv/bin/python scripts/load_test.py --concurrency 4 --duration 60 --max-tokens 64

Each of the N workers sends streaming chat completions (through the real ``openai`` client)
one after another until the time is up; requests still running then are allowed to finish
(each has its own timeout). Reports throughput, latency percentiles (time to first token, total)
and errors. Only a server on this machine (127.0.0.1 / localhost / ::1) can be targeted, and the
run is bounded in time (at most one hour) and in concurrency (at most 64 streams).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlparse

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
MAX_DURATION_S = 3600
MAX_CONCURRENCY = 64

PROMPTS = [
    "Write a Python function that merges two sorted lists.",
    "Explain what a Python generator is, with a short example.",
    "Write a function that checks whether a string is a palindrome.",
    "Write a SQL query that returns the ten most recent orders per customer.",
    "Implement binary search in Python and explain its complexity.",
    "Write a bash one-liner that counts lines in all .py files.",
    "Write a Python class for a stack with push, pop and peek.",
    "How do I read a CSV file with the csv module? Show code.",
]


@dataclass
class Results:
    ttft: list[float] = field(default_factory=list)  # seconds to the first text
    latency: list[float] = field(default_factory=list)  # seconds to the end of the stream
    tokens: list[int] = field(default_factory=list)  # completion tokens per request
    tau: list[float] = field(default_factory=list)  # mean accepted length per request
    acceptance: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def check_local(base_url: str) -> None:
    host = urlparse(base_url).hostname
    if host not in LOCAL_HOSTS:
        sys.exit(f"load_test.py only targets a local server ({', '.join(sorted(LOCAL_HOSTS))}), not {host!r}")


async def one_request(client, model: str, prompt: str, args, results: Results) -> None:
    start = time.perf_counter()
    first = None
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=args.max_tokens,
            temperature=args.temperature, stream=True, stream_options={"include_usage": True},
            extra_body={"speculative": {"method": args.method}} if args.method else None)
        usage, spec = None, None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter() - start
            if chunk.choices and chunk.choices[0].finish_reason:
                spec = (chunk.model_extra or {}).get("speculative")
            if chunk.usage:
                usage = chunk.usage
    except Exception as e:  # counted, never fatal: the point is to see them
        results.errors[type(e).__name__] += 1
        return
    results.latency.append(time.perf_counter() - start)
    if first is not None:
        results.ttft.append(first)
    results.tokens.append(usage.completion_tokens if usage else 0)
    if spec:
        results.tau.append(spec.get("mean_accepted_length", 0.0))
        results.acceptance.append(spec.get("acceptance_rate", 0.0))


async def worker(index: int, client, model: str, args, deadline: float, results: Results) -> None:
    sent = 0
    while time.monotonic() < deadline:
        prompt = PROMPTS[(index + sent * args.concurrency) % len(PROMPTS)]
        await one_request(client, model, prompt, args, results)
        sent += 1


async def run(args) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=args.base_url, api_key=args.api_key or "none", max_retries=0,
                         timeout=args.request_timeout)
    model = args.model or (await client.models.list()).data[0].id
    results = Results()
    start = time.monotonic()
    deadline = start + args.duration
    tasks = [worker(i, client, model, args, deadline, results) for i in range(args.concurrency)]
    try:  # the workers stop by the deadline; in-flight requests get their own timeout, then we give up
        await asyncio.wait_for(asyncio.gather(*tasks), args.duration + args.request_timeout + 5)
    except asyncio.TimeoutError:
        results.errors["load test cut off"] += 1
    wall = time.monotonic() - start
    await client.close()
    n = len(results.latency)
    mean = (lambda xs: round(sum(xs) / len(xs), 3) if xs else None)
    return {
        "model": model, "method": args.method or "server default", "concurrency": args.concurrency,
        "duration_s": args.duration,
        "max_tokens": args.max_tokens, "temperature": args.temperature, "wall_s": round(wall, 2),
        "requests_ok": n, "errors": dict(results.errors), "completion_tokens": sum(results.tokens),
        "throughput_tok_s": round(sum(results.tokens) / wall, 2), "requests_per_s": round(n / wall, 3),
        "ttft_s": {f"p{p}": round(percentile(results.ttft, p), 3) for p in (50, 90, 99)},
        "latency_s": {f"p{p}": round(percentile(results.latency, p), 3) for p in (50, 90, 99)},
        "mean_accepted_length": mean(results.tau), "acceptance_rate": mean(results.acceptance),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--model", default=None, help="default: the first model the server lists")
    parser.add_argument("--concurrency", "-c", type=int, default=4)
    parser.add_argument("--duration", "-d", type=float, default=60.0, help="seconds of sending requests")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--method", default=None, help="speculative.method of every request (default: the server's)")
    parser.add_argument("--request-timeout", type=float, default=120.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()
    check_local(args.base_url)
    if not 1 <= args.concurrency <= MAX_CONCURRENCY or not 0 < args.duration <= MAX_DURATION_S:
        sys.exit(f"need 1 <= --concurrency <= {MAX_CONCURRENCY} and 0 < --duration <= {MAX_DURATION_S}")
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report))
        return
    print(f"{report['requests_ok']} requests ({report['requests_per_s']}/s), {report['completion_tokens']} tokens "
          f"in {report['wall_s']} s with {args.concurrency} concurrent streams: "
          f"{report['throughput_tok_s']} tok/s")
    print(f"time to first token  p50 {report['ttft_s']['p50']} s  p90 {report['ttft_s']['p90']} s  "
          f"p99 {report['ttft_s']['p99']} s")
    print(f"total latency        p50 {report['latency_s']['p50']} s  p90 {report['latency_s']['p90']} s  "
          f"p99 {report['latency_s']['p99']} s")
    print(f"mean accepted length {report['mean_accepted_length']}, acceptance rate {report['acceptance_rate']}")
    print(f"errors: {report['errors'] or 'none'}")


if __name__ == "__main__":
    main()
