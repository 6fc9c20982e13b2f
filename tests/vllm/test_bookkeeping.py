"""The vLLM drafter's bookkeeping without vLLM: request state by id, learning, cleanup, bounds."""

from __future__ import annotations

import types

import pytest

from quickdraft.proposers.hybrid import SUFFIX_CLASSES
from quickdraft.integrations.vllm import OPTIONS, BatchCost, BatchDrafter, QuickdraftProposer, Row, parse_options

LOOP = [5, 6, 7, 8, 9]


def row(req_id, tokens, prompt_len, new=1, verified=None, room=100):
    return Row(req_id, list(tokens), prompt_len, new, verified, room)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 0.001
        return self.t


def drafter(**options) -> BatchDrafter:
    d = BatchDrafter(8, **options)
    d.clock = Clock()
    return d


def test_drafts_continue_the_request_and_prefill_chunks_get_none():
    d = drafter(controller="fixed")
    prompt = LOOP * 4
    drafts = d.step([row("a", prompt + [5, 6], len(prompt)), row("b", [1, 2, 3], 3, new=0)])
    assert drafts[0] == [7, 8, 9, 5, 6, 7, 8, 9][:len(drafts[0])] and len(drafts[0]) >= 4
    assert drafts[1] == []  # a prefill chunk: nothing sampled yet
    assert set(d.requests) == {"a", "b"}


def test_acceptance_is_learned_per_match_class_from_the_tokens_sampled():
    d = drafter(controller="fixed")
    prompt = LOOP * 4
    tokens = prompt + [5, 6]
    first = d.step([row("a", tokens, len(prompt))])[0]
    source = d.requests["a"].source
    # the step verified all of them and sampled one more: len(first) + 1 new tokens
    tokens = tokens + first + [first[-1] % 9 + 1]
    d.step([row("a", tokens, len(prompt), new=len(first) + 1, verified=len(first))])
    assert d.totals["drafted"] == len(first) and d.totals["accepted"] == len(first)
    prior = {name: p for name, _, p in SUFFIX_CLASSES}[source]
    assert d.control[source].acceptance()[0] > prior


def test_rejected_draft_counts_accepted_prefix():
    d = drafter(controller="fixed")
    prompt = LOOP * 4
    tokens = prompt + [5, 6]
    first = d.step([row("a", tokens, len(prompt))])[0]
    assert len(first) >= 3
    tokens = tokens + first[:1] + [42]  # first draft token accepted, then the target said 42
    d.step([row("a", tokens, len(prompt), new=2, verified=len(first))])
    assert (d.totals["drafted"], d.totals["accepted"]) == (len(first), 1)


def test_finished_request_is_dropped_and_its_output_alone_feeds_the_global_trie():
    d = drafter()
    prompt = [1, 2, 3, 4]
    output = [11, 12, 13, 14, 15, 16]
    d.step([row("a", prompt + output[:1], len(prompt))])
    d.step([row("a", prompt + output, len(prompt), new=5)])
    assert d.global_trie.tokens == 0
    d.step([row("b", [7, 8], 2)])  # "a" left the batch: finished
    assert set(d.requests) == {"b"}
    assert d.totals["finished"] == 1
    assert d.global_trie.tokens == len(output)
    assert d.global_trie.find([1, 2]) is None and d.global_trie.find([11, 12, 13]) is not None


def test_an_earlier_output_is_drafted_for_a_new_request():
    d = drafter(controller="fixed")
    output = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
    d.step([row("a", [1] + output[:1], 1)])
    d.step([row("a", [1] + output, 1, new=9)])
    d.step([])  # "a" finishes
    drafts = d.step([row("b", [2, 11, 12, 13], 1)])
    assert drafts[0][:4] == [14, 15, 16, 17]


def test_resumed_request_does_not_relearn_its_output():
    d = drafter()
    tokens = [1, 2, 3] + [11, 12, 13, 14]
    d.step([row("a", tokens, 3)])
    d.step([])  # preempted: leaves the batch, its output so far is learned
    assert d.global_trie.tokens == 4
    d.step([row("a", tokens + [15, 16], 3)])  # resumed
    d.step([])
    assert d.global_trie.tokens == 4 + 2


def test_room_caps_drafts():
    d = drafter(controller="fixed")
    prompt = LOOP * 4
    assert len(d.step([row("a", prompt + [5, 6], len(prompt), room=2)])[0]) <= 2
    assert d.step([row("b", prompt + [5, 6], len(prompt), room=0)])[0] == []


def test_memory_is_bounded_per_request_and_globally():
    d = drafter(local_tokens=2048, global_tokens=3000)
    d.chunk = 256
    tokens = list(range(100, 100 + 5000))  # never repeats: the worst case for a trie
    d.step([row("a", tokens[:10], 5)])
    for end in range(500, 5001, 500):
        d.step([row("a", tokens[:end], 5, new=1)])
    held = d.requests["a"].local.tokens
    assert held <= 2048 + 256
    d.step([])
    assert d.global_trie.tokens <= 3000 or len(d.global_trie._sequences) == 1
    for i in range(3):
        d.step([row(f"r{i}", tokens[:1000], 500)])
        d.step([])
    assert d.global_trie.tokens <= 3000 + 500
    assert not d.requests


def test_adaptive_drafts_nothing_when_steps_cost_by_the_token_and_drafts_fail():
    d = drafter(relative_cost=[1 + k for k in range(9)])  # verifying k tokens costs k + 1 steps
    for control in d.control.values():
        control._accept = [[0.05, 1.0]]  # learned: 5% of drafts survive
    prompt = LOOP * 4
    assert d.step([row("a", prompt + [5, 6], len(prompt))])[0] == []
    assert d.decisions == {"plain": 1}


def test_adaptive_drafts_long_when_steps_are_flat_and_drafts_hold():
    d = drafter(relative_cost=[1.0] * 9)
    prompt = LOOP * 6
    assert len(d.step([row("a", prompt + [5, 6], len(prompt))])[0]) == 8


def test_step_cost_is_recorded_per_batch_size_class_for_decode_steps_only():
    d = drafter(controller="fixed")
    prompt = LOOP * 4
    a = prompt + [5, 6]
    first = d.step([row("a", a, len(prompt)), row("b", a, len(prompt))])
    assert not d.cost.by_size  # new requests: no step of theirs to measure yet
    d.step([row("a", a + first[0][:1] + [1], len(prompt), new=2, verified=len(first[0])),
            row("b", a + first[1][:1] + [1], len(prompt), new=2, verified=len(first[1]))])
    assert set(d.cost.by_size) == {2}
    assert list(d.cost.by_size[2]._seen) == [round((len(first[0]) + len(first[1])) / 2) + 1]  # n = k + 1
    d.step([row("c", [1, 2], 2, new=0), row("a", a, len(prompt))])  # a prefill joined: not recorded
    d.step([row("d", [1, 2], 2), row("a", a, len(prompt))])  # "d" is new: its prefill ran in this step
    assert set(d.cost.by_size) == {2} and len(d.cost.by_size[2]._seen) == 1


def test_batch_cost_borrows_the_nearest_measured_class_and_ignores_per_request_observations():
    cost = BatchCost(4, [1, 2, 3, 4, 5])
    cost.record(8, 2.0, 0.3)
    cost.size = 1
    assert cost.measured and cost.curve(4)[2] == pytest.approx(0.3)
    cost.observe(0, 99.0)
    assert cost.curve(4)[2] == pytest.approx(0.3)
    cost.record(1, 0.0, 0.01)
    assert cost.curve(4)[0] == pytest.approx(0.01) and cost.curve(4)[2] == pytest.approx(0.03)
    cost.size = 9
    assert cost.curve(4)[2] == pytest.approx(0.3)


def test_options_are_checked():
    assert parse_options({"quickdraft": {"global_tokens": 5}}) == {"global_tokens": 5}
    assert parse_options({}) == {} and parse_options(None) == {}
    with pytest.raises(ValueError, match="unknown quickdraft option"):
        parse_options({"quickdraft": {"global_token": 5}})
    with pytest.raises(ValueError):
        BatchDrafter(8, controller="greedy")
    assert set(OPTIONS) >= {"controller", "depth", "global_tokens", "local_tokens", "relative_cost"}


def fake_config(k=8, max_model_len=256, additional=None):
    return types.SimpleNamespace(speculative_config=types.SimpleNamespace(num_speculative_tokens=k),
                                 model_config=types.SimpleNamespace(max_model_len=max_model_len),
                                 additional_config=additional or {})


class FakeInputBatch:
    """The fields of vLLM's InputBatch the adapter reads."""


class FakeRunner:
    """What vLLM 0.32.0's GPUModelRunner.propose_draft_token_ids hands a custom_class drafter."""

    def __init__(self, drafter, rows):
        import numpy as np

        self.drafter = drafter
        width = max(len(tokens) for _, tokens, _, _ in rows) + 16
        batch = FakeInputBatch()
        batch.token_ids_cpu = np.zeros((len(rows), width), dtype=np.int32)
        batch.num_tokens_no_spec = np.zeros(len(rows), dtype=np.int32)
        batch.num_prompt_tokens = np.zeros(len(rows), dtype=np.int32)
        batch.req_ids, batch.spec_token_ids = [], []
        for i, (req_id, tokens, prompt_len, spec) in enumerate(rows):
            batch.token_ids_cpu[i, :len(tokens)] = tokens
            batch.num_tokens_no_spec[i], batch.num_prompt_tokens[i] = len(tokens), prompt_len
            batch.req_ids.append(req_id)
            batch.spec_token_ids.append(spec)
        self.input_batch = batch

    def propose_draft_token_ids(self, sampled_token_ids):
        return self.drafter.propose(sampled_token_ids, self.input_batch.num_tokens_no_spec,
                                    self.input_batch.token_ids_cpu, slot_mappings=None)


def test_adapter_reads_request_ids_from_the_runner_batch():
    proposer = QuickdraftProposer(fake_config(additional={"quickdraft": {"controller": "fixed"}}))
    proposer.load_model(object())
    prompt = LOOP * 4
    runner = FakeRunner(proposer, [("req-a", prompt + [5, 6], len(prompt), []), ("req-b", [1, 2, 3], 3, [])])
    drafts = runner.propose_draft_token_ids([[6], []])
    assert drafts[0][:3] == [7, 8, 9] and drafts[1] == []
    assert set(proposer.drafter.requests) == {"req-a", "req-b"}
    assert proposer.drafter.requests["req-a"].prompt_len == len(prompt)


def test_adapter_without_a_runner_drafts_nothing():
    import numpy as np

    proposer = QuickdraftProposer(fake_config())
    assert proposer.propose([[1], [2]], np.array([3, 3]), np.zeros((2, 8), dtype=np.int32)) == [[], []]
