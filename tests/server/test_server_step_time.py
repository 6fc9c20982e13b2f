"""The scheduler's prompt admission by time (``--step-time``) on the tiny models: prompt tokens
ride beside the running requests' rows as the step's time leaves room for (control.prompt_room),
of several joining requests, and every answer is what it is alone; the fixed chunk
(``--prefill-chunk``) as before; bad values refused naming the option."""

from __future__ import annotations

import asyncio

import pytest

from quickdraft.backends.base import Chunk
from quickdraft.engine import fit_chunks
from quickdraft.errors import InvalidParameterError
from quickdraft.server.metrics import Metrics
from quickdraft.control import MIN_PROMPT_CHUNK
from quickdraft.server.scheduler import Failed, Finished, Job, Scheduler, check_scheduling
from serverutil import make_engine

PROMPTS = [("the quick brown fox " * k).strip() for k in (3, 6, 2, 8, 5, 4)]
MAX_TOKENS = [12, 20, 9, 16, 24, 7]


def served(engine, **options) -> tuple[list[list[int]], list[tuple[int, list[int]]]]:
    """The scheduler serving PROMPTS, all submitted at once (4 at a time): each answer's tokens,
    and each step's (running generations, tokens of each prompt chunk its forwards carried)."""
    steps: list[tuple[int, list[int]]] = []
    target = engine.target
    inner, step = target.forward_batch, engine.step

    def forward_batch(chunks, **options):  # records the prompt chunks a step carries, then runs them as ever
        if steps and steps[-1][0] is None:
            steps[-1][1].extend(len(c.tokens) for c in chunks if c.rows == "none")
        return inner(chunks, **options)

    def recorded_step(generations, **options):
        steps.append((None, []))
        try:
            return step(generations, **options)
        finally:
            steps[-1] = (len(generations), steps[-1][1])

    loop = asyncio.new_event_loop()
    target.forward_batch, engine.step = forward_batch, recorded_step
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
        del target.forward_batch, engine.step
        loop.close()
    return answers, steps


@pytest.fixture(scope="module")
def alone(tiny_pair) -> list[list[int]]:
    engine = make_engine(tiny_pair)
    return [engine.generate(p, max_tokens=m).token_ids for p, m in zip(PROMPTS, MAX_TOKENS)]


def test_with_a_step_time_prompts_of_several_requests_ride_in_what_the_time_leaves(tiny_pair, alone):
    answers, steps = served(make_engine(tiny_pair), step_time=1e6)  # time for every prompt: whole ones ride
    assert answers == alone
    assert any(running and len(chunks) >= 2 for running, chunks in steps)  # several prompts beside the rows
    assert any(running and sum(chunks) > MIN_PROMPT_CHUNK for running, chunks in steps)


def test_a_step_time_no_step_can_keep_still_lets_prompts_in(tiny_pair, alone):
    answers, steps = served(make_engine(tiny_pair), step_time=1e-9)  # every step is predicted longer
    assert answers == alone
    riding = [sum(chunks) for running, chunks in steps if running and chunks]
    assert riding and max(riding) <= MIN_PROMPT_CHUNK  # the least chunk, and no more, beside the rows


def test_the_fixed_chunk_carries_at_most_that_many_prompt_tokens_a_step(tiny_pair, alone):
    answers, steps = served(make_engine(tiny_pair), prefill_chunk=5)
    assert answers == alone
    assert max(sum(chunks) for _, chunks in steps) == 5


def test_prompt_chunks_are_cut_to_what_the_forward_holds():
    chunks = [Chunk(None, [1] * 5, rows="none"), Chunk(None, [2] * 4, rows="none"), Chunk(None, [3] * 3, rows="none")]
    assert [c.tokens for c in fit_chunks(chunks, 7)] == [[1] * 5, [2] * 2]
    assert fit_chunks(chunks, 12) == chunks and fit_chunks(chunks, 0) == []


@pytest.mark.parametrize("options, param", [
    (dict(step_time=0.0), "step_time"),
    (dict(step_time=-1.0), "step_time"),
    (dict(step_time=float("inf")), "step_time"),
    (dict(step_time=float("nan")), "step_time"),
    (dict(prefill_chunk=0), "prefill_chunk"),
    (dict(max_queue=-1), "max_queue"),
    (dict(prefill_chunk=64, step_time=1.0), "prefill_chunk"),
])
def test_bad_scheduling_options_are_refused_naming_them(options, param):
    settings = dict(max_queue=4, max_batch=8, prefill_chunk=None, step_time=None) | options
    with pytest.raises(InvalidParameterError) as refused:
        check_scheduling(**settings)
    assert refused.value.param == param and f"--{param.replace('_', '-')}" in str(refused.value)


def test_serve_refuses_a_bad_step_time_before_loading_anything():
    from typer.testing import CliRunner

    from quickdraft.cli import app

    result = CliRunner().invoke(app, ["serve", "--target", "/nonexistent.gguf", "--step-time", "0"])
    assert result.exit_code == 2 and "--step-time must be a positive number of seconds" in result.output


def test_the_default_admission_is_the_step_time_the_serve_help_names(tiny_pair):
    from typer.testing import CliRunner

    from quickdraft.cli import app
    from quickdraft.server.scheduler import DEFAULT_STEP_TIME

    scheduler = Scheduler([make_engine(tiny_pair)], max_queue=4, metrics=Metrics())
    assert (scheduler.step_time, scheduler.prefill_chunk) == (DEFAULT_STEP_TIME, None)
    assert Scheduler([make_engine(tiny_pair)], max_queue=4, metrics=Metrics(), prefill_chunk=32).step_time is None
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "400"})
    assert f"(default {DEFAULT_STEP_TIME})" in result.output
    both = CliRunner().invoke(app, ["serve", "--target", "/nonexistent.gguf", "--step-time", "1", "--prefill-chunk", "8"])
    assert both.exit_code == 2 and "give one" in both.output
