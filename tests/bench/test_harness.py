"""The bench harness end to end on tiny models: files, schema, interleaving, resume, errors."""

import json

import pytest

from quickdraft.bench.metrics import geometric_mean, summarize, with_speedups
from quickdraft.bench.runner import BenchConfig, rotate, run_bench
from quickdraft.bench.tasks import load_jsonl, spread
from quickdraft.errors import QuickdraftError
from quickdraft.proposers import METHODS, BaseProposer, ProposerSpec
from quickdraft.records import Draft

SUMMARY_KEYS = {"task", "method", "speedup", "mean_accepted_length", "acceptance_rate", "tokens_per_second",
                "speedup_min", "speedup_max", "speedup_median", "acceptance_by_position", "checks"}


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"id": "a", "prompt": "hello world hello world"}\n\n'
                    '{"id": "b", "turns": ["the quick brown fox", "and then"]}\n')
    return path


def config_for(tiny_pair, prompts_file, methods=("draft", "ngram"), **kw):
    return BenchConfig(target=str(tiny_pair[0]), draft=str(tiny_pair[1]), tasks=(), data=(str(prompts_file),),
                       methods=methods, **{"max_tokens": 16, "limit": None, "repeat": 2, **kw})


def test_bench_end_to_end(tiny_pair, prompts_file, tmp_path):
    out = tmp_path / "out"
    # auto first: the calibration must still find the draft model's backend behind it
    results = run_bench(config_for(tiny_pair, prompts_file, methods=("auto", "draft", "ngram")), out)
    assert {p.name for p in out.iterdir()} >= {"results.json", "report.md", "speedup.png",
                                               "accepted_length.png", "acceptance_by_position.png",
                                               "verify_cost.png"}
    on_disk = json.loads((out / "results.json").read_text())
    samples = on_disk["samples"]
    # 3 prompt-turns (one two-turn question) x 2 repeats x 4 methods (ar added automatically)
    assert len(samples) == 3 * 2 * 4
    assert {s["method"] for s in samples} == {"ar", "auto", "draft", "ngram"}
    for s in samples:
        ar = next(a for a in samples if a["method"] == "ar" and
                  (a["prompt_id"], a["turn"], a["repeat"]) == (s["prompt_id"], s["turn"], s["repeat"]))
        expected = (ar["decode_time_s"] / ar["new_tokens"]) / (s["decode_time_s"] / s["new_tokens"])
        assert s["speedup"] == pytest.approx(expected)
        if s["method"] != "ar":
            assert s["check"]["result"] == "exact"  # greedy, tiny models: token for token
            assert s["token_ids"] == ar["token_ids"]
    rows = on_disk["summary"]
    assert {(r["task"], r["method"]) for r in rows} == {("mine", m) for m in ("ar", "auto", "draft", "ngram")}
    assert all(SUMMARY_KEYS <= set(r) for r in rows)
    assert on_disk["calibration"]["target"]["k"] == list(range(1, 17))
    assert results["summary"] == rows
    # the second turn's history holds the first turn's AR answer
    turn2 = [s for s in samples if s["turn"] == 1]
    assert all(s["prompt_tokens"] > 10 for s in turn2)


def test_resume_runs_only_what_is_missing(tiny_pair, prompts_file, tmp_path):
    out = tmp_path / "out"
    config = config_for(tiny_pair, prompts_file)
    full = run_bench(config, out)
    doc = json.loads((out / "results.json").read_text())
    kept = doc["samples"][:5]
    doc["samples"] = kept
    (out / "results.json").write_text(json.dumps(doc))
    with pytest.raises(QuickdraftError, match="--resume"):
        run_bench(config, out)
    resumed = run_bench(config, out, resume=True)
    assert len(resumed["samples"]) == len(full["samples"])
    assert resumed["samples"][:5] == [{**s, "speedup": r["speedup"]} for s, r in zip(kept, resumed["samples"])]
    with pytest.raises(QuickdraftError, match="other settings"):
        run_bench(config_for(tiny_pair, prompts_file, num_draft=2), out, resume=True)


def test_interrupt_leaves_a_valid_partial_report(tiny_pair, prompts_file, tmp_path, monkeypatch):
    from quickdraft.bench import runner

    calls = {"n": 0}
    real = runner.run_sample

    def interrupted_after_four(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_sample", interrupted_after_four)
    out = tmp_path / "out"
    run_bench(config_for(tiny_pair, prompts_file), out)
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["samples"]) == 4 and (out / "report.md").exists()


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "ok"}\n{"prompt": \n', ":2: not valid JSON"),
    ('{"prompt": "ok"}\n["a list"]\n', ":2: expected a JSON object"),
    ('{"turns": []}\n', ":1: needs 'prompt'"),
    ('{"prompt": 5}\n', ":1: needs 'prompt'"),
    ('\n\n', "no prompts"),
])
def test_jsonl_loader_errors_name_the_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(QuickdraftError, match=message):
        load_jsonl(path)


def test_missing_jsonl_file(tmp_path):
    with pytest.raises(QuickdraftError, match="not found"):
        load_jsonl(tmp_path / "none.jsonl")


def test_spread_and_rotate():
    assert spread(list(range(10)), 3) == [0, 4, 9]
    assert spread([1, 2], 5) == [1, 2]
    assert rotate(["ar", "draft", "ngram"], 1) == ["draft", "ngram", "ar"]
    assert rotate(["ar", "draft", "ngram"], 3) == ["ar", "draft", "ngram"]


def sample(prompt_id, method, repeat, decode, tokens=10, **extra):
    return {"task": "t", "prompt_id": prompt_id, "turn": 0, "repeat": repeat, "method": method,
            "decode_time_s": decode, "new_tokens": tokens, "target_forwards": tokens, "drafted_tokens": 0,
            "accepted_tokens": 0, "tokens_per_second": tokens / decode, "draft_time_s": 0, "verify_time_s": decode,
            **extra}


def test_speedup_is_paired_per_repeat_and_geometric_over_prompts():
    samples = [sample("p1", "ar", 0, 2.0), sample("p1", "x", 0, 1.0),  # 2x
               sample("p1", "ar", 1, 4.0), sample("p1", "x", 1, 1.0),  # 4x -> median 3x
               sample("p2", "ar", 0, 1.0), sample("p2", "x", 0, 3.0, tokens=30),  # same per-token time: 1x
               sample("p3", "ar", 0, 1.0)]  # no pair yet
    rows = {r["method"]: r for r in summarize(with_speedups(samples))}
    assert rows["x"]["speedup"] == pytest.approx(geometric_mean([3.0, 1.0]))
    assert (rows["x"]["speedup_min"], rows["x"]["speedup_max"]) == (1.0, 3.0)
    assert rows["ar"]["speedup"] == pytest.approx(1.0)


class SpyProposer(BaseProposer):
    """Never drafts; records how many requests its method's memory had served when it began."""

    seen: list[int] = []

    def __init__(self, memory: dict) -> None:
        memory["requests"] += 1
        SpyProposer.seen.append(memory["requests"])

    def propose(self, context, budget, sampling, rng) -> Draft:
        return Draft()


@pytest.fixture()
def spy():
    """A method ``spy`` in the registry for the length of one test."""
    METHODS.add(ProposerSpec("spy", "records the memory it gets", make=lambda r, memory, o: SpyProposer(memory),
                             memory=lambda r, o: {"requests": 0}))
    SpyProposer.seen = []
    yield SpyProposer.seen
    METHODS.remove("spy")


def test_no_sample_sees_another_samples_state(tiny_pair, prompts_file, tmp_path, spy):
    """Every cold sample starts from a fresh engine memory: its method has served no request before."""
    run_bench(config_for(tiny_pair, prompts_file, methods=("spy",)), tmp_path / "out")
    assert len(spy) == 3 * 2 and set(spy) == {1}  # 3 prompt-turns x 2 repeats, each its memory's first request


def test_warm_rows_follow_the_earlier_prompt_turns_and_never_themselves(tiny_pair, prompts_file, tmp_path, spy):
    results = run_bench(config_for(tiny_pair, prompts_file, methods=("spy",), warm=True), tmp_path / "out")
    warm = [s for s in results["samples"] if s["method"] == "spy (warm)"]
    assert len(warm) == 6 and all(s["mode"] == "warm" for s in warm)
    assert {s["method"] for s in results["summary"]} == {"ar", "spy", "spy (warm)"}
    # Cold samples saw 1 request each; per repeat, the warm chain of task "mine" saw 1, 2, 3 (its
    # three prompt-turns in order), so no prompt-turn ever came after itself.
    assert sorted(spy) == sorted([1] * 6 + [1, 2, 3] * 2)


def test_suffix_repeats_are_identical_because_nothing_carries_over(tiny_pair, prompts_file, tmp_path):
    """Suffix drafting learns from earlier outputs: a second repeat that saw the first one's answer
    would draft it back. Cold samples must not."""
    results = run_bench(config_for(tiny_pair, prompts_file, methods=("suffix",), max_tokens=40), tmp_path / "out")
    by_unit = {}
    for s in results["samples"]:
        if s["method"] == "suffix":
            by_unit.setdefault((s["prompt_id"], s["turn"]), []).append(s)
    for first, second in by_unit.values():
        assert (first["target_forwards"], first["accepted_lengths"]) == (second["target_forwards"],
                                                                          second["accepted_lengths"])
