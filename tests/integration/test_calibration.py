"""The cost curve on a fresh machine: measured for any context size, cached per CPU and build."""

import json
from types import SimpleNamespace

import pytest

import quickdraft
from quickdraft.backends.llamacpp import LlamaCppBackend
from quickdraft.calibrate import (CONTEXT_TEXT, MAX_K, MIN_CONTEXT, calibration_context, calibration_path, cost_curve,
                                  draft_prior)
from quickdraft.errors import QuickdraftError
from quickdraft.system import calibration_dir


def test_the_suite_starts_from_an_empty_calibration_cache():
    assert "quickdraft-test-calibration" in str(calibration_dir())  # tests/conftest.py


@pytest.mark.parametrize("n_ctx", [32, 256, 512])  # llama.cpp rounds small contexts up to 256
def test_a_curve_is_measured_for_any_context_that_fits_one(tiny_pair, n_ctx):
    backend = LlamaCppBackend(tiny_pair[0], n_ctx=n_ctx, n_threads=1)
    assert len(backend.tokenize(CONTEXT_TEXT, special=False)) > backend.n_ctx  # the whole text would not fit
    curve = cost_curve(backend)
    assert len(curve) == MAX_K + 1 and curve[0] == 1.0
    context = calibration_context(backend)
    assert len(context) + MAX_K + 1 <= backend.n_ctx
    saved = json.loads(calibration_path(backend, len(context)).read_text())
    assert saved["context_tokens"] == len(context)
    assert cost_curve(backend) == curve  # read back from the cache, not measured again


def test_a_context_too_small_for_any_curve_is_a_clear_error():
    backend = SimpleNamespace(n_ctx=MAX_K + MIN_CONTEXT, tokenize=lambda text, special: list(range(len(text))))
    with pytest.raises(QuickdraftError, match="too small to measure.*raise n_ctx") as error:
        calibration_context(backend)
    assert error.value.param == "n_ctx"


def test_loading_with_a_small_context_on_an_empty_cache_works(tiny_pair, tmp_path, monkeypatch):
    """What failed on a fresh machine: ``load(n_ctx=512)`` measured after 841 tokens."""
    monkeypatch.setenv("QUICKDRAFT_CALIBRATION", str(tmp_path / "empty"))
    engine = quickdraft.load(str(tiny_pair[0]), str(tiny_pair[1]), n_ctx=512, n_threads=1, chat=False)
    assert engine.prior.curve and engine.prior.step_s > 0 and engine.generate("hello world", max_tokens=4).token_ids
    assert engine.prior.draft_token > 0 and 0 <= engine.prior.draft_accept <= 1  # auto loaded the draft, measured it
    assert len(list((tmp_path / "empty").glob("*.json"))) == 2  # the target's curve and the draft's cost


def test_curves_are_keyed_by_model_settings_cpu_and_build(tiny_pair):
    a = LlamaCppBackend(tiny_pair[0], n_ctx=256, n_threads=1)
    b = LlamaCppBackend(tiny_pair[0], n_ctx=256, n_threads=2)
    draft = LlamaCppBackend(tiny_pair[1], n_ctx=256, n_threads=1)
    paths = {calibration_path(a, 100), calibration_path(b, 100), calibration_path(a, 90),
             calibration_path(a, 100, draft)}
    assert len(paths) == 4
    measured = draft_prior(a, draft)
    assert measured["draft_token"] > 0 and 0.3 < measured["draft_accept"] <= 1  # the tiny pair agrees about 75%
    assert 0 < measured["draft_prefill"]  # the draft's time per token of a long forward, relative to one token
    assert measured["draft_ahead"] == ()  # one thread: nothing to split
    assert draft_prior(a, draft) == measured  # cached: the same, not measured again


def test_the_split_costs_of_drafting_ahead_are_measured_on_two_threads_and_the_threads_restored(tiny_pair):
    target = LlamaCppBackend(tiny_pair[0], n_ctx=256, n_threads=2)
    draft = LlamaCppBackend(tiny_pair[1], n_ctx=256, n_threads=2)
    (split,) = draft_prior(target, draft)["draft_ahead"]
    assert (split.target_threads, split.draft_threads) == (1, 1)
    assert split.target_scale > 0 and split.draft_token > 0
    assert (target.n_threads, draft.n_threads) == (2, 2)
