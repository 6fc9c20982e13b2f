"""auto's draft model drafts ahead (proposers/parallel.py) where this machine's costs on split
threads predict it pays (control.ahead_gain), only in a request that runs alone, and the answer
is still plain decoding's. The tiny pair's own timings say nothing (its draft model costs what
its target does), so each engine is given the costs of a machine, one where drafting ahead pays
and one where it does not, and the engine that must draft runs on that machine's clock: every
reading a millisecond later (a draft and a verification of any size a millisecond each)."""

import itertools
from dataclasses import replace
from typing import Callable

import pytest

from quickdraft import Engine
from quickdraft.control import Prior, Split

PROMPT = "hello world hello world hello"
CURVE = [1.0 + 0.05 * k for k in range(17)]
PAYS = Prior(curve=CURVE, step_s=0.001, draft_token=0.2, draft_accept=0.9, draft_ahead=(Split(1, 1, 1.0, 0.2),))
LOSES = replace(PAYS, draft_ahead=(Split(1, 1, 3.0, 0.4),))  # the target three times slower on one thread


@pytest.fixture()
def two_threads(tiny_target_backend):
    tiny_target_backend.set_threads(2)
    return tiny_target_backend


def ticking() -> Callable[[], float]:
    ticks = itertools.count()
    return lambda: next(ticks) * 0.001


def test_auto_drafts_ahead_where_it_is_predicted_to_pay_and_answers_as_plain_decoding(two_threads, tiny_pair):
    engine = Engine(two_threads, draft=str(tiny_pair[1]), chat=False, prior=PAYS, clock=ticking())
    plain = engine.generate(PROMPT, max_tokens=48, method="ar")
    out = engine.generate(PROMPT, max_tokens=48)
    assert out.token_ids == plain.token_ids
    assert out.stats["draft_sources"].get("ahead", 0) > 0, out.stats["draft_sources"]
    assert "predicted" in out.stats["why"]["draft ahead"] and "1+1 threads" in out.stats["why"]["draft ahead"]
    assert (two_threads.n_threads, engine.draft_model().n_threads) == (2, 2)  # the engine's again
    sampled = engine.generate(PROMPT, max_tokens=24, temperature=1.0, seed=1)
    assert len(sampled.token_ids) == 24


def test_auto_does_not_draft_ahead_where_it_is_predicted_to_lose(two_threads, tiny_pair):
    engine = Engine(two_threads, draft=str(tiny_pair[1]), chat=False, prior=LOSES)
    out = engine.generate(PROMPT, max_tokens=32)
    assert "ahead" not in out.stats["draft_sources"]
    assert "does not pay here" in out.stats["why"]["draft ahead"]


def test_auto_does_not_draft_ahead_in_a_batch_or_without_measured_splits(two_threads, tiny_pair):
    engine = Engine(two_threads, draft=str(tiny_pair[1]), chat=False, prior=PAYS)
    generation = engine.start(engine.prepare(PROMPT, max_tokens=4), batched=True)
    assert generation.proposer.ahead is None
    assert "runs alone" in generation.proposer.why()["draft ahead"]
    engine.release(generation)
    unmeasured = Engine(two_threads, draft=str(tiny_pair[1]), chat=False, prior=replace(PAYS, draft_ahead=()))
    assert "not measured" in unmeasured.generate(PROMPT, max_tokens=8).stats["why"]["draft ahead"]
