"""The scheduler's per-step token budget (``--step-tokens``) on the tiny models: running requests'
rows first, prompt chunks of several joining requests in the rest, and every answer what it is
alone; the fixed chunk (``--prefill-chunk``) as before; bad values refused naming the option."""

from __future__ import annotations

import asyncio

import pytest

from quickdraft.backends.base import Chunk
from quickdraft.engine import fit_chunks
from quickdraft.errors import InvalidParameterError
from quickdraft.server.metrics import Metrics
from quickdraft.server.scheduler import Failed, Finished, Job, Scheduler, check_scheduling, prompt_room
from serverutil import make_engine

PROMPTS = [("the quick brown fox " * k).strip() for k in (3, 6, 2, 8, 5, 4)]
MAX_TOKENS = [12, 20, 9, 16, 24, 7]


def served(engine, **options) -> tuple[list[list[int]], list[tuple[int, list[int]]]]:
    """The scheduler serving PROMPTS, all submitted at once (4 at a time): each answer's tokens,
    and each step's (running generations, tokens of each prompt chunk riding along)."""
    steps: list[tuple[int, list[int]]] = []
    inner = engine.step

    def step(generations, prefill=()):  # records what each forward carried, then steps as ever
        steps.append((len(generations), [len(c.tokens) for c in prefill]))
        return inner(generations, prefill)

    loop = asyncio.new_event_loop()
    engine.step = step
    scheduler = Scheduler([engine], max_queue=16, metrics=Metrics(), max_batch=4, **options)
    scheduler.start()
    try:
        jobs = [Job(engine.prepare(p, max_tokens=m), timeout_s=60, loop=loop) for p, m in zip(PROMPTS, MAX_TOKENS)]
        scheduler.submit(*jobs)

        async def answer(job) -> list[int]:
            while True:
                event = (await asyncio.wait_for(job.events.get(), 60))[1]
                if isinstance(event, Failed):
                    raise AssertionError(event.error.message)
                if isinstance(event, Finished):
                    return event.result.token_ids

        async def answers_of_all() -> list[list[int]]:
            return list(await asyncio.gather(*(answer(j) for j in jobs)))

        answers = loop.run_until_complete(answers_of_all())
    finally:
        scheduler.stop()
        del engine.step
        loop.close()
    return answers, steps


@pytest.fixture(scope="module")
def alone(tiny_pair) -> list[list[int]]:
    engine = make_engine(tiny_pair)
    return [engine.generate(p, max_tokens=m).token_ids for p, m in zip(PROMPTS, MAX_TOKENS)]


def test_a_step_carries_running_rows_first_and_prompt_chunks_of_several_requests_in_the_rest(tiny_pair, alone):
    budget = 24
    answers, steps = served(make_engine(tiny_pair), step_tokens=budget)
    assert answers == alone
    for running, chunks in steps:
        assert sum(chunks) <= budget - running  # one row per running request first
    assert any(len(chunks) >= 2 for _, chunks in steps)  # a budget spans prompts: several chunks in one forward
    assert any(running and sum(chunks) == budget - running for running, chunks in steps)  # the rest filled


def test_the_fixed_chunk_carries_at_most_that_many_prompt_tokens_a_step(tiny_pair, alone):
    answers, steps = served(make_engine(tiny_pair), prefill_chunk=5)
    assert answers == alone
    assert max(sum(chunks) for _, chunks in steps) == 5


def test_prompt_chunks_are_cut_to_what_the_forward_holds():
    chunks = [Chunk(None, [1] * 5, rows="none"), Chunk(None, [2] * 4, rows="none"), Chunk(None, [3] * 3, rows="none")]
    assert [c.tokens for c in fit_chunks(chunks, 7)] == [[1] * 5, [2] * 2]
    assert fit_chunks(chunks, 12) == chunks and fit_chunks(chunks, 0) == []


def test_prompt_room():
    assert prompt_room(3, 64, None) == 64  # the fixed chunk, whatever runs
    assert prompt_room(3, 64, 256) == 253  # the budget's rest beside 3 rows
    assert prompt_room(0, 64, 256) == 256  # nothing runs: all for prompts
    assert prompt_room(300, 64, 256) == 0


@pytest.mark.parametrize("options, param", [
    (dict(step_tokens=8), "step_tokens"),  # not more than --parallel (8)
    (dict(prefill_chunk=0), "prefill_chunk"),
    (dict(max_queue=-1), "max_queue"),
])
def test_bad_scheduling_options_are_refused_naming_them(options, param):
    settings = dict(max_queue=4, max_batch=8, prefill_chunk=64, step_tokens=None) | options
    with pytest.raises(InvalidParameterError) as refused:
        check_scheduling(**settings)
    assert refused.value.param == param and f"--{param.replace('_', '-')}" in str(refused.value)


def test_serve_refuses_a_bad_step_budget_before_loading_anything():
    from typer.testing import CliRunner

    from quickdraft.cli import app

    result = CliRunner().invoke(app, ["serve", "--target", "/nonexistent.gguf", "--parallel", "16",
                                      "--step-tokens", "16"])
    assert result.exit_code == 2 and "--step-tokens must exceed --parallel (16)" in result.output
