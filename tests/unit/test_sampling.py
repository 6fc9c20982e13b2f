import numpy as np
import pytest

from quickdraft.errors import InvalidParameterError
from quickdraft.sampling import SamplingParams, choose, sample, warp


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(temperature=float("nan")), dict(top_p=0.0),
                                    dict(top_p=1.5), dict(top_k=-1)])
def test_invalid_params_raise_clear_errors(kwargs):
    with pytest.raises(InvalidParameterError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)


def test_greedy_warp_is_a_point_mass_on_argmax():
    probs = warp(np.array([[0.1, 3.0, 2.0], [5.0, 1.0, 0.0]]), SamplingParams())
    assert probs.tolist() == [[0, 1, 0], [1, 0, 0]]


def test_temperature_softmax():
    logits = np.log(np.array([0.2, 0.3, 0.5]))
    assert np.allclose(warp(logits, SamplingParams(temperature=1.0)), [0.2, 0.3, 0.5])
    sharp = warp(logits, SamplingParams(temperature=0.5))
    assert np.allclose(sharp, np.array([0.04, 0.09, 0.25]) / 0.38)


def test_top_k_and_top_p():
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4]))
    assert np.allclose(warp(logits, SamplingParams(temperature=1, top_k=2)), [0, 0, 3 / 7, 4 / 7])
    # top-p 0.6: 0.4 is below 0.6 so 0.3 is kept too, then the mass reaches 0.7.
    assert np.allclose(warp(logits, SamplingParams(temperature=1, top_p=0.6)), [0, 0, 3 / 7, 4 / 7])
    # top-p small: only the most likely token survives.
    assert np.allclose(warp(logits, SamplingParams(temperature=1, top_p=0.01)), [0, 0, 0, 1])


def test_sample_skips_zero_probability_tokens_and_is_seeded():
    probs = np.array([0.5, 0.0, 0.5, 0.0])
    draws = [sample(probs, np.random.default_rng(s)) for s in range(300)]
    assert set(draws) == {0, 2}
    assert [sample(probs, np.random.default_rng(7)) for _ in range(3)] == [sample(probs, np.random.default_rng(7))] * 3


def test_choose_greedy_is_argmax():
    assert choose(np.array([0.0, 2.0, 1.0]), SamplingParams(), np.random.default_rng(0)) == 1


def test_negative_seed_is_refused():
    with pytest.raises(InvalidParameterError, match="seed"):
        SamplingParams(seed=-1)
