"""The peers harness on the tiny GGUF pair: llama-cpp-python end to end, resume, a peer that
cannot run, and (when torch and transformers are installed) Hugging Face on the same files."""

from __future__ import annotations

import functools
import importlib.util
import io

import pytest

from quickdraft.bench import peers as P
from quickdraft.bench.peers import PeerOutput, PeerPrompt, peer_key, run_peers

MAX_TOKENS = 16
ROW_KEYS = {"peer", "method", "task", "prompt_id", "turn", "repeat", "new_tokens", "time_s", "first_token_s",
            "tokens_per_second", "speedup", "equal_to_reference", "config"}


@pytest.fixture(scope="module")
def prompts(tiny_engine) -> list[PeerPrompt]:
    """Two prompts (token ids) with our own AR output as the reference."""
    texts = ["def print the value of the list", "the data is the data is the data is"]
    out = []
    for i, text in enumerate(texts):
        tokens = tiny_engine.target.tokenize(text)
        reference = tiny_engine.generate(tokens, max_tokens=MAX_TOKENS, method="ar").token_ids
        out.append(PeerPrompt("tiny", f"p{i}", 0, tokens, reference))
    return out


def _run(tiny_pair, prompts, **kwargs) -> tuple[dict, list[dict]]:
    rows: list[dict] = []
    kwargs = {"max_tokens": MAX_TOKENS, "repeat": 1, "num_draft": 4, **kwargs}
    status = run_peers(prompts, target_path=tiny_pair[0], draft_path=tiny_pair[1], on_row=rows.append, **kwargs)
    return status, rows


def test_llama_cpp_python_end_to_end(tiny_pair, prompts):
    from rich.console import Console
    from rich.progress import Progress, TextColumn

    console = Console(file=io.StringIO())
    with Progress(TextColumn("{task.description}"), TextColumn("{task.fields[status]}"), console=console) as progress:
        status, rows = _run(tiny_pair, prompts, repeat=2, peers=["llama-cpp-python"], progress=progress)
    assert status == {"llama-cpp-python": "ok"}
    assert len(rows) == 2 * 2 * 2  # prompts x repeats x methods
    assert len({peer_key(r) for r in rows}) == len(rows)
    # interleaved per prompt, the order rotated per repeat
    assert [r["method"] for r in rows[:4]] == ["plain", "prompt-lookup", "prompt-lookup", "plain"]
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert row["peer"] == "llama-cpp-python"
        assert row["new_tokens"] == len(prompts[0].reference_tokens) == MAX_TOKENS
        assert row["equal_to_reference"] is True, row
        assert row["time_s"] > 0 and row["tokens_per_second"] > 0
        assert row["config"]["num_pred_tokens"] == 4
        if row["method"] == "plain":
            assert row["speedup"] == 1.0
        else:
            assert isinstance(row["speedup"], float) and row["speedup"] > 0


def test_resume_skips_done_rows(tiny_pair, prompts):
    _, first = _run(tiny_pair, prompts, peers=["llama-cpp-python"])
    assert len(first) == 4
    done_rows = [r for r in first if not (r["prompt_id"] == "p1" and r["method"] == "prompt-lookup")]

    # a set of keys: the missing row runs, but its plain row is not at hand for a speedup
    status, rows = _run(tiny_pair, prompts, peers=["llama-cpp-python"], done={peer_key(r) for r in done_rows})
    assert status == {"llama-cpp-python": "ok"}
    assert [(r["prompt_id"], r["method"]) for r in rows] == [("p1", "prompt-lookup")]
    assert rows[0]["speedup"] is None and rows[0]["equal_to_reference"] is True

    # the stored rows themselves: the stored plain row is the baseline
    _, rows = _run(tiny_pair, prompts, peers=["llama-cpp-python"], done={peer_key(r): r for r in done_rows})
    assert [(r["prompt_id"], r["method"]) for r in rows] == [("p1", "prompt-lookup")]
    assert rows[0]["speedup"] > 0


class FakePeer:
    """Counts loads and generations; ``fail_on = (method, prompt_tokens)`` makes that one raise."""

    name = "fake"
    methods = ("plain", "lookup")
    loads = 0
    calls = 0
    fail_on: tuple | None = None

    def __init__(self, setup):
        self.config = {"n_ctx": setup.n_ctx}

    def load(self):
        type(self).loads += 1

    def generate(self, method, prompt_tokens, max_tokens):
        type(self).calls += 1
        if (method, list(prompt_tokens)) == self.fail_on:
            raise RuntimeError("boom\nsecond line")
        return PeerOutput(list(range(max_tokens)), 0.2 if method == "plain" else 0.1, 0.05, 1)

    def close(self):
        pass


def test_nothing_left_to_run_does_not_load(tiny_pair, prompts, monkeypatch):
    monkeypatch.setitem(P.PEERS, "fake", FakePeer)
    monkeypatch.setattr(FakePeer, "loads", 0)
    monkeypatch.setattr(FakePeer, "calls", 0)
    _, rows = _run(tiny_pair, prompts, peers=["fake"])
    assert FakePeer.loads == 1 and len(rows) == 4
    assert FakePeer.calls == 4 + 2  # one untimed warm-up per method
    assert [r["speedup"] for r in rows[:2]] == [1.0, pytest.approx((0.15 / 15) / (0.05 / 15))]
    status, again = _run(tiny_pair, prompts, peers=["fake"], done={peer_key(r) for r in rows})
    assert status == {"fake": "ok"} and again == [] and FakePeer.loads == 1


def test_failure_in_generate_keeps_finished_rows(tiny_pair, prompts, monkeypatch):
    monkeypatch.setitem(P.PEERS, "fake", FakePeer)
    monkeypatch.setattr(FakePeer, "fail_on", ("lookup", prompts[1].prompt_tokens))
    status, rows = _run(tiny_pair, prompts, peers=["fake"])
    assert status == {"fake": "failed: lookup on tiny/p1: RuntimeError: boom"}
    assert [(r["prompt_id"], r["method"], r["speedup"]) for r in rows] == [
        ("p0", "plain", 1.0), ("p0", "lookup", pytest.approx(3.0)), ("p1", "plain", 1.0)]
    monkeypatch.setattr(FakePeer, "fail_on", ("lookup", prompts[0].prompt_tokens))
    status, rows = _run(tiny_pair, prompts, peers=["fake"])
    assert status == {"fake": "failed: warm-up (lookup): RuntimeError: boom"} and rows == []


def test_peers_that_cannot_run_are_skipped_or_failed(tiny_pair, prompts, tmp_path, monkeypatch):
    class NeedsMissingPackage(FakePeer):
        def load(self):
            import quickdraft_no_such_module  # noqa: F401

    monkeypatch.setitem(P.PEERS, "missing", NeedsMissingPackage)
    status, rows = _run(tiny_pair, prompts, peers=["missing", "nope"])
    assert status["missing"] == "skipped: quickdraft_no_such_module not installed"
    assert status["nope"].startswith("skipped: unknown peer 'nope'")
    assert rows == []

    # the real transformers peer, with torch hidden
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    status, _ = _run(tiny_pair, prompts, peers=["transformers"])
    assert status == {"transformers": "skipped: torch not installed; pip install 'quickdraft[torch]'"}
    monkeypatch.undo()

    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00" * 64)
    rows = []
    status = run_peers(prompts, target_path=corrupt, draft_path=corrupt, max_tokens=MAX_TOKENS, repeat=1,
                       num_draft=4, peers=["llama-cpp-python"], on_row=rows.append)
    assert status["llama-cpp-python"].startswith("failed: loading:"), status
    assert rows == []


def test_context_size_fits_prompt_generation_and_a_draft():
    p = PeerPrompt("t", "p", 0, [1] * 300, None)
    assert P.context_size([p], 200, 4) == 512           # 505 needed
    assert P.context_size([p], 256, 4) == 768           # 561 needed
    assert P.context_size([], 16, 4) == 512


def test_transformers_on_the_tiny_pair(tiny_pair, prompts, monkeypatch):
    """Hugging Face loads the tiny GGUF (qwen2 arch; no tokenizer is needed: we pass ids). In
    float32 its greedy output equals llama.cpp's for all three methods (the tiny models' top-1
    margins are far above the rounding differences; see quickdraft.testing)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    monkeypatch.setitem(P.PEERS, "transformers", functools.partial(P.TransformersPeer, dtype="float32"))
    status, rows = _run(tiny_pair, prompts[:1], peers=["transformers"])
    assert status == {"transformers": "ok"}
    assert [r["method"] for r in rows] == ["plain", "assisted", "prompt-lookup"]
    for row in rows:
        assert row["new_tokens"] == MAX_TOKENS and row["equal_to_reference"] is True, row
        assert row["config"]["dtype"] == "float32" and row["speedup"] > 0
