"""The load bench: its pure parts, and a short run against a real quickdraft server subprocess
on the tiny models."""

import json

import pytest

from quickdraft.bench.load import (LoadConfig, Record, classify_answer, largest_level_ratios, level_requests, percentile,
                                   run_load, schedule, summarize)
from quickdraft.errors import QuickdraftError


def test_percentile_and_answer_classes():
    assert percentile([4, 1, 3, 2], 50) == 2 and percentile([1, 2, 3, 4], 99) == 4 and percentile([], 50) is None
    assert classify_answer("ab", "ab", ["ab", "cd"]) == "exact"
    assert classify_answer("cdx", "ab", ["ab", "cd"]) == "mixed"
    assert classify_answer("ax", "ab", ["ab", "cd"]) == "differs"
    # similar prompts' answers begin alike: an early near-tie toward another's opening is no mix-up
    body = "\ndef iscube(a: int) -> bool:\n    return round(abs(a) ** (1 / 3)) ** 3 == abs(a)\n"
    own, other = "from typing import *\nfrom collections import *\n" + body, "from typing import *\nfrom math import *\ndef f(): pass"
    assert classify_answer("from typing import *\nfrom math import *\n" + body, own, [own, other]) == "differs"


def test_summary_of_records():
    records = [Record("s", 2, 0, 0, start=10.0, first=0.5, end=2.5, tokens=21, max_gap=0.2, answer="exact"),
               Record("s", 2, 1, 1, start=10.5, first=1.0, end=3.0, tokens=11, max_gap=0.4, answer="differs",
                      near_tie=True),
               Record("s", 2, 1, 2, start=11.0, error="boom")]
    summary = summarize(records)
    assert summary["requests"] == 3 and summary["errors"] == 1 and summary["tokens"] == 32
    assert summary["wall_s"] == pytest.approx(3.5) and summary["throughput_tok_s"] == pytest.approx(32 / 3.5)
    assert summary["tpot_p50_s"] == pytest.approx(0.1) and summary["ttft_p99_s"] == 1.0
    assert summary["answers"] == {"exact": 1, "differs": 1, "mixed": 0, "near_ties": 1}


def test_servers_run_level_by_level_in_turn():
    assert schedule(["a", "b", "c"], [1, 2, 4]) == [("a", 1), ("b", 1), ("c", 1), ("c", 2), ("b", 2), ("a", 2),
                                                     ("a", 4), ("b", 4), ("c", 4)]
    assert schedule(["a"], [1, 16]) == [("a", 1), ("a", 16)]


def test_every_level_asks_the_same_prompts_unless_told_per_client():
    """With equal_levels (the default) a level of any size sends the largest level's requests,
    so levels do the same work; per client, each level's clients send requests_per_client each."""
    config = LoadConfig(concurrency=(1, 4, 16), requests_per_client=2)
    assert [level_requests(config, n) for n in (1, 4, 16)] == [32, 32, 32]
    per_client = LoadConfig(concurrency=(1, 4, 16), requests_per_client=2, equal_levels=False)
    assert [level_requests(per_client, n) for n in (1, 4, 16)] == [2, 8, 32]


def test_the_largest_level_is_compared_with_the_best_smaller_one_only_when_levels_compare():
    levels = [{"server": "s", "concurrency": n, "throughput_tok_s": t} for n, t in ((1, 30.0), (4, 50.0), (16, 48.0))]
    doc = {"config": {"equal_levels": True}, "levels": levels}
    (ratio, best), = largest_level_ratios(doc).values()
    assert ratio == pytest.approx(0.96) and best == 4
    assert largest_level_ratios({**doc, "config": {"equal_levels": False}}) == {}


def test_bad_configurations_are_refused():
    with pytest.raises(QuickdraftError, match="unknown server"):
        LoadConfig(servers=("vllm",))
    with pytest.raises(QuickdraftError, match="between 1 and 64"):
        LoadConfig(concurrency=(0,))


def test_a_short_run_against_a_quickdraft_server(tiny_pair, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"request {i}: hello world the code"}) + "\n" for i in range(4)))
    config = LoadConfig(target=str(tiny_pair[0]), draft=str(tiny_pair[1]), task=str(prompts), prompt_tokens=(1, 500),
                        concurrency=(1, 3), requests_per_client=1, max_tokens=12, n_ctx=1024, threads=1,
                        servers=("quickdraft",))
    doc = run_load(config, tmp_path / "out")
    assert [level["concurrency"] for level in doc["levels"]] == [1, 3]
    for n in (1, 3):  # every level asks the same prompts (equal_levels): one after another, or 3 at once
        assert sorted(r["prompt"] for r in doc["records"] if r["concurrency"] == n) == [0, 1, 2]
    for level in doc["levels"]:
        assert level["errors"] == 0 and level["tokens"] > 0 and level["throughput_tok_s"] > 0
        assert level["answers"]["mixed"] == 0
    assert {"load.json", "load.md", "load.png"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert doc["memory_mb"] and all(m["rss_mb"] for m in doc["memory_mb"])


def test_a_level_that_would_ask_a_prompt_twice_is_refused_before_any_work(tiny_pair, tmp_path):
    """Client i's j-th request asks prompt i + j * N; with fewer prompts than requests a level would
    ask one twice, and a server that learns from its answers would meet its own earlier answer."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"request {i}: hello world"}) + "\n" for i in range(5)))
    config = LoadConfig(target=str(tiny_pair[0]), draft=str(tiny_pair[1]), task=str(prompts), prompt_tokens=(1, 500),
                        concurrency=(1, 3), requests_per_client=2, max_tokens=4, n_ctx=1024, threads=1,
                        servers=("quickdraft",))
    with pytest.raises(QuickdraftError, match="ask 6 prompts.* has 5 .*at most 1 requests per client"):
        run_load(config, tmp_path / "out")
    assert not (tmp_path / "out" / "load.json").exists()


def test_an_answer_that_differs_is_certified_only_where_the_target_nearly_ties(tiny_pair):
    """An answer that parts from the answer alone at the target's least likely token is no
    near-tie (check.check_against_ar on the served text); one that parts where the target's two
    best tokens tie exactly (the same token) is not a divergence at all."""
    import numpy as np
    from rich.console import Console

    from quickdraft import load
    from quickdraft.bench.load import certify

    config = LoadConfig(target=str(tiny_pair[0]), draft=str(tiny_pair[1]), max_tokens=12, n_ctx=1024, threads=1,
                        servers=("quickdraft",))
    prompts = [[{"role": "user", "content": "hello world the code"}]]
    engine = load(config.target, None, method="ar", n_ctx=1024, calibrate=False, n_threads=1)
    alone = list(engine.generate(prompts[0], max_tokens=12).token_ids)
    context = [*engine.prompt_tokens(prompts[0]), *alone[:5]]
    engine.target.prefill(context[:-1])
    unlikely = int(np.argmin(engine.target.forward(context[-1:])[0]))
    text = b"".join(engine.target.token_text(t) for t in [*alone[:5], unlikely]).decode("utf-8", errors="replace")
    engine.target.close()
    served = Record("quickdraft", 1, 0, 0, text=text, answer="differs")
    exact = Record("quickdraft", 1, 0, 0, text="", answer="exact")
    certify(config, prompts, [alone], [served, exact], Console(quiet=True))
    assert served.near_tie is False
    assert exact.near_tie is None  # only answers that differ are checked


def test_a_request_whose_connection_fails_before_any_answer_is_sent_once_more():
    """A peer that drops the first connection without answering (as a server closing a keep-alive
    connection does) costs the record nothing but ``resent``; a server that is down is an error."""
    import asyncio

    from openai import AsyncOpenAI

    from quickdraft.bench.load import one_request

    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
    body = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
    connections = []

    async def handle(reader, writer):
        connections.append(1)
        await reader.readuntil(b"\r\n\r\n")
        if len(connections) > 1:  # the first connection closes unanswered
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        records = [Record("s", 1, 0, 0), Record("s", 1, 0, 1)]
        async with server, AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0) as client:
            await one_request(client, records[0], [{"role": "user", "content": "q"}], 4)
        # a port nothing listens on: both attempts fail, and that is the record's error
        async with AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0) as client:
            await one_request(client, records[1], [{"role": "user", "content": "q"}], 4)
        return records

    answered, down = asyncio.run(main())
    assert (answered.error, answered.text, answered.resent, len(connections)) == (None, "hi", True, 2)
    assert not down.resent and down.error.startswith("APIConnectionError")
