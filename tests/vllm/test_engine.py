"""End to end on vLLM's CPU build: quickdraft's drafter inside a real vLLM engine (tiny model)."""

from __future__ import annotations

import gc

import pytest

vllm = pytest.importorskip("vllm")

DRAFTER = "quickdraft.integrations.vllm.QuickdraftProposer"
# Repetitive prompts (suffix drafts hit), and the random model's own outputs fall into loops.
PROMPTS = ["def add(a, b):\n    return a + b\n" * 3,
           "for i in range(len(data)):\n    print(i, data[i])\n" * 2,
           "the user asked the assistant for some code that prints hello world\n"]
MAX_TOKENS = 80


def run_engine(model, speculative_config=None, additional_config=None):
    """Greedy outputs of two rounds of PROMPTS and one last request, the drafter's counters
    between them, vLLM's spec-decode counters, then shut the engine down."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model), dtype="float32", max_model_len=512, max_num_seqs=4, enforce_eager=True,
              kv_cache_memory_bytes=128 << 20, seed=0, speculative_config=speculative_config,
              additional_config=additional_config or {}, disable_log_stats=False)
    try:
        greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
        proposer = getattr(runner, "drafter", None)
        result = {"rounds": [], "stats": []}
        for _ in range(2):
            outs = llm.generate(PROMPTS, greedy, use_tqdm=False)
            result["rounds"].append([list(o.outputs[0].token_ids) for o in outs])
            if proposer is not None and hasattr(proposer, "drafter"):
                result["stats"].append(proposer.drafter.stats())
        last = llm.generate(["if value is None:\n"], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
                            use_tqdm=False)
        result["last"] = list(last[0].outputs[0].token_ids)
        sampled = llm.generate(PROMPTS[:2], SamplingParams(temperature=0.8, top_p=0.95, max_tokens=24, seed=1,
                                                           ignore_eos=True), use_tqdm=False)
        result["sampled"] = [list(o.outputs[0].token_ids) for o in sampled]
        result["proposer"] = proposer
        if proposer is not None and hasattr(proposer, "drafter"):
            result["requests_after"] = set(proposer.drafter.requests)
            result["final"] = proposer.drafter.stats()
        result["metrics"] = {m.name: getattr(m, "value", None) for m in llm.get_metrics()
                             if m.name.startswith("vllm:spec_decode_num")}
        return result
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


@pytest.fixture(scope="module")
def baseline(tiny_qwen2):
    return run_engine(tiny_qwen2)


@pytest.fixture(scope="module")
def adaptive(tiny_qwen2):
    return run_engine(tiny_qwen2, {"method": "custom_class", "model": DRAFTER, "num_speculative_tokens": 8})


@pytest.fixture(scope="module")
def fixed(tiny_qwen2):
    return run_engine(tiny_qwen2, {"method": "custom_class", "model": DRAFTER, "num_speculative_tokens": 4},
                      {"quickdraft": {"controller": "fixed", "global_tokens": 1000}})


def test_vllm_builds_our_class_as_its_drafter(adaptive):
    from quickdraft.integrations.vllm import QuickdraftProposer

    assert isinstance(adaptive["proposer"], QuickdraftProposer)
    assert vllm.__version__ == "0.32.0"


@pytest.mark.parametrize("name", ["adaptive", "fixed"])
def test_greedy_output_is_identical_with_and_without_the_drafter(name, baseline, request):
    run = request.getfixturevalue(name)
    assert all(len(out) == MAX_TOKENS for out in baseline["rounds"][0])
    assert run["rounds"] == baseline["rounds"]
    assert run["last"] == baseline["last"]


@pytest.mark.parametrize("name", ["adaptive", "fixed"])
def test_drafts_are_accepted_and_counted_as_vllm_counts_them(name, request):
    run = request.getfixturevalue(name)
    stats, metrics = run["final"], run["metrics"]
    assert stats["accepted"] > 0 and stats["accepted"] <= stats["drafted"]
    # the sampled round is counted by vLLM too; the drafter's counters cover every verified draft
    assert metrics["vllm:spec_decode_num_accepted_tokens"] == stats["accepted"]
    assert metrics["vllm:spec_decode_num_draft_tokens"] == stats["drafted"]


def test_second_round_drafts_from_the_first_rounds_outputs(fixed):
    """The same prompts again: the global trie holds the answers, so nearly every token is drafted
    and accepted (the fixed controller: the adaptive one's choices depend on measured step times)."""
    first, second = fixed["stats"]
    accepted_second = second["accepted"] - first["accepted"]
    assert accepted_second > first["accepted"]
    assert accepted_second >= 0.6 * len(PROMPTS) * MAX_TOKENS


def test_finished_requests_are_cleaned_up(adaptive, fixed):
    for run in (adaptive, fixed):
        # 2 rounds of 3, the last request and the 2 sampled ones; the sampled ones may still be
        # held (a request leaves the drafter at the first step it is no longer in the batch)
        assert len(run["requests_after"]) <= 2
        assert run["final"]["finished"] >= 2 * len(PROMPTS) + 1
        assert run["final"]["global_trie_tokens"] > 0
    assert fixed["final"]["global_trie_tokens"] <= 1000 + MAX_TOKENS  # bounded (the newest output is kept whole)


def test_sampling_with_the_drafter_runs_to_length(adaptive, baseline):
    assert [len(out) for out in adaptive["sampled"]] == [24, 24]
    assert [len(out) for out in baseline["sampled"]] == [24, 24]
