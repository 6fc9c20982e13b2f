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


# --- penalties, logit_bias and log-probabilities ----------------------------------------------

def test_penalize_counts_the_generated_tokens_and_each_rows_draft_prefix():
    from quickdraft.records import Draft
    from quickdraft.sampling import penalize

    example = penalize(np.zeros((3, 10)), [7, 7], [(), (7,), (7, 3)], SamplingParams(presence_penalty=1,
                                                                                   frequency_penalty=0.5))
    assert example[:, 7].tolist() == [-2, -2.5, -2.5] and example[:, 3].tolist() == [0, 0, -1.5]
    assert not example[:, [0, 1, 2, 4, 5, 6, 8, 9]].any()
    tree = Draft((4, 4, 2), parents=(0, 1, 0))  # node 1 (4) -> node 2 (4); node 3 (2) beside node 1
    params = SamplingParams(frequency_penalty=1.0, logit_bias=((2, 3.0), (9, -100.0)))
    out = penalize(np.ones((4, 10), dtype=np.float32), [2], tree.row_prefixes(), params)
    assert out.dtype == np.float64
    assert out[:, 4].tolist() == [1, 0, -1, 1]  # counted once after node 1, twice after node 2
    assert out[:, 2].tolist() == [3, 3, 3, 2]  # generated once, drafted once more before row 3; +3 bias
    assert out[:, 9].tolist() == [-99] * 4


def test_penalize_is_free_when_nothing_is_penalized():
    from quickdraft.sampling import penalize

    logits = np.ones((2, 5), dtype=np.float32)
    assert penalize(logits, [1, 2], [(), (3,)], SamplingParams(temperature=0.7)) is logits


def test_row_prefixes_of_a_chain_and_a_tree():
    from quickdraft.records import Draft

    assert Draft((5, 7, 9)).row_prefixes() == ((), (5,), (5, 7), (5, 7, 9))
    assert Draft((5, 7, 9), parents=(0, 0, 1)).row_prefixes() == ((), (5,), (7,), (5, 9))
    assert Draft().row_prefixes() == ((),)


def test_token_logprobs_are_the_softmax_at_temperature_1_with_the_top_tokens_first():
    from quickdraft.sampling import token_logprobs

    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.4, 0.1]])) + 3.0  # shifted: same softmax
    first, second = token_logprobs(logits, [2, 3], 2)
    assert first.token == 2 and np.isclose(first.logprob, np.log(0.3))
    assert [t for t, _ in first.top] == [3, 2] and np.allclose([lp for _, lp in first.top], np.log([0.4, 0.3]))
    assert np.isclose(second.logprob, np.log(0.1)) and second.top[0][0] == 2
    assert token_logprobs(logits, [0, 0], 0)[0].top == ()
    assert len(token_logprobs(logits, [0, 0], 4)[1].top) == 4


@pytest.mark.parametrize("kwargs, param", [
    (dict(presence_penalty=2.5), "presence_penalty"), (dict(frequency_penalty=-2.01), "frequency_penalty"),
    (dict(frequency_penalty=float("inf")), "frequency_penalty"), (dict(logit_bias=((3, 101.0),)), "logit_bias"),
    (dict(logit_bias=((-1, 1.0),)), "logit_bias"), (dict(logit_bias=((3, 1.0), (3, 2.0))), "logit_bias")])
def test_penalty_and_bias_ranges(kwargs, param):
    with pytest.raises(InvalidParameterError) as error:
        SamplingParams(**kwargs)
    assert error.value.param == param
