"""Parallel drafting (proposers/parallel.py) on the tiny llama.cpp pair: the draft model drafting
the next step on a thread of its own while the target verifies. Greedy exactness is in
test_engine_tiny (every llama.cpp method); here: its drafts really come from the thread, sampled
output follows the target's distribution (and the test catches a draft verified with the wrong
q), a seed gives the same answer on every run whatever the timing, the threads are split while it
runs and restored after, and it runs alone (never in a batch)."""

import numpy as np
import pytest
from distributions import chi_square_pvalue, token_distribution

from quickdraft import Engine
from quickdraft.errors import InvalidParameterError, QuickdraftError, UnknownMethodError, VocabularyMismatchError
from quickdraft.proposers import parallel
from quickdraft.records import Draft
from quickdraft.sampling import SamplingParams
from quickdraft.testing import write_tiny_cross_draft

PROMPT = "hello world hello world hello"


@pytest.fixture()
def engine(tiny_pair, tiny_target_backend, flat_prior):
    """Drafting ahead in every step (by default only where measured faster, which the tiny
    models' timings need not say)."""
    return Engine(tiny_target_backend, method="parallel", num_draft=3, draft=str(tiny_pair[1]), chat=False,
                  prior=flat_prior, ahead="always")


def test_greedy_drafts_come_from_the_thread_and_the_answer_is_plain_decodings(engine):
    plain = engine.generate(PROMPT, max_tokens=48, method="ar")
    out = engine.generate(PROMPT, max_tokens=48)
    assert out.token_ids == plain.token_ids
    assert out.stats["draft_sources"].get("ahead", 0) > 0, out.stats["draft_sources"]


def test_a_seed_gives_the_same_answer_on_every_run(engine):
    """What the thread drafted is used whole or not at all (it is stopped only when nothing of it
    can be used), so timing never changes a sampled answer."""
    answers = {tuple(engine.generate(PROMPT, max_tokens=24, temperature=1.0, seed=3).token_ids) for _ in range(6)}
    assert len(answers) == 1


def test_the_threads_are_split_while_it_runs_and_restored_after(tiny_pair, tiny_target_backend, flat_prior):
    tiny_target_backend.set_threads(2)
    engine = Engine(tiny_target_backend, method="parallel", num_draft=3, draft=str(tiny_pair[1]), chat=False,
                    prior=flat_prior, draft_threads=1, ahead="always")
    draft = engine.draft_model()
    during = []
    for _ in engine.stream(PROMPT, max_tokens=8):
        during.append((tiny_target_backend.n_threads, draft.n_threads))
    assert set(during) == {(1, 1)}
    assert (tiny_target_backend.n_threads, draft.n_threads) == (2, 2)
    engine.generate(PROMPT, max_tokens=8, method="draft")
    assert engine.generate(PROMPT, max_tokens=8).stats["draft_sources"]  # and again, after another method


def test_sampled_output_follows_the_target_distribution_and_a_wrong_q_is_caught(engine, monkeypatch):
    """The first three tokens of seeded generations of four (top-k 3, drafts of 1: the third token
    is verified against what the thread drafted whenever the first draft and the target's guess
    held) against the target's exact distribution; then the same with the thread's q rows reported
    as if drawn at a lower temperature (q^5, renormalised: the bug this would be), which the
    test must reject."""
    prompt = engine.prompt_tokens(PROMPT)
    exact = token_distribution(engine.target, prompt, SamplingParams(temperature=1.0, top_k=3), 3)
    draws = 3000

    def counts():
        seen, ahead = {}, 0
        for seed in range(draws):
            out = engine.generate(prompt, max_tokens=4, temperature=1.0, top_k=3, seed=seed, num_draft=1)
            first = tuple(out.token_ids[:3])
            seen[first] = seen.get(first, 0) + 1
            ahead += out.stats["draft_sources"].get("ahead", 0)
        return seen, ahead

    seen, ahead = counts()
    assert ahead > draws // 4, ahead  # the thread's drafts were verified often enough to matter
    assert chi_square_pvalue(exact, seen, draws) > 1e-3

    following = parallel._Ahead.following

    def another_temperature(self, context):
        draft = following(self, context)
        if draft.q is None:
            return draft
        sharp = draft.q.astype(np.float64) ** 5
        return Draft(draft.tokens, sharp / sharp.sum(axis=1, keepdims=True))

    monkeypatch.setattr(parallel._Ahead, "following", another_temperature)
    seen, _ = counts()
    assert chi_square_pvalue(exact, seen, draws) < 1e-6


def test_never_drafting_ahead_is_the_draft_method(tiny_pair, tiny_target_backend, flat_prior):
    engine = Engine(tiny_target_backend, method="parallel", num_draft=3, draft=str(tiny_pair[1]), chat=False,
                    prior=flat_prior, ahead="never")
    out = engine.generate(PROMPT, max_tokens=32)
    assert "ahead" not in out.stats["draft_sources"]
    assert out.token_ids == engine.generate(PROMPT, max_tokens=32, method="draft").token_ids


def test_measuring_tries_both_then_keeps_the_faster_and_looks_again():
    rates = parallel.Rates()
    modes = []
    for _ in range(16):
        mode = parallel.run_ahead(rates)
        modes.append(mode)
        rates.observe(mode, 3, 0.1 if mode else 0.2)  # ahead: twice the tokens per second
    assert modes == [True] * 8 + [False] * 8
    later = []
    for _ in range(32):
        mode = parallel.run_ahead(rates)
        later.append(mode)
        rates.observe(mode, 3, 0.1 if mode else 0.2)
    assert later.count(False) == 2 and later[0] is False  # every 16th step looks at the other again
    for _ in range(40):  # the machine got busy: ahead is now the slower, and is dropped
        mode = parallel.run_ahead(rates)
        rates.observe(mode, 3, 0.5 if mode else 0.2)
    assert parallel.run_ahead(rates) is False or (rates.steps[True] + rates.steps[False]) % 16 == 0


def test_it_never_runs_in_a_batch(engine):
    request = engine.prepare(PROMPT, max_tokens=4)
    with pytest.raises(QuickdraftError, match="one request at a time") as error:
        engine.start(request, batched=True)
    assert error.value.param == "method"


def test_bad_thread_counts_and_another_vocabulary_are_refused(tiny_pair, tiny_target_backend, flat_prior, tmp_path):
    with pytest.raises(InvalidParameterError, match="draft_threads") as error:
        Engine(tiny_target_backend, method="parallel", draft=str(tiny_pair[1]), chat=False, prior=flat_prior,
               draft_threads=0)
    assert error.value.param == "draft_threads"
    with pytest.raises(InvalidParameterError, match="ahead must be one of"):
        Engine(tiny_target_backend, method="parallel", draft=str(tiny_pair[1]), chat=False, prior=flat_prior,
               ahead="sometimes")
    with pytest.raises(UnknownMethodError, match="needs a draft model"):
        Engine(tiny_target_backend, method="parallel", chat=False, prior=flat_prior)
    cross = write_tiny_cross_draft(tmp_path / "cross-draft.gguf")
    engine = Engine(tiny_target_backend, method="draft", draft=str(cross), chat=False, prior=flat_prior)
    with pytest.raises(VocabularyMismatchError, match="method 'parallel' drafts token ids"):
        engine.generate(PROMPT, max_tokens=4, method="parallel")


def test_the_command_line_runs_it_and_lists_it(tiny_pair):
    from typer.testing import CliRunner

    from quickdraft.cli import app

    target, draft = tiny_pair
    runner = CliRunner()
    args = ["generate", PROMPT, "--target", str(target), "--draft", str(draft), "--raw", "--method", "parallel",
            "-n", "12", "--draft-threads", "1", "--check"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "check against AR: exact" in result.output and "ahead" in result.output, result.output
    bad = runner.invoke(app, [*args[:-3], "--draft-threads", "0"])
    assert bad.exit_code == 2 and "draft_threads" in bad.output
    listed = runner.invoke(app, ["methods"])
    assert "parallel" in listed.output and "draft_threads" in listed.output
