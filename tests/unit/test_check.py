"""The equality classifier on constructed cases."""

import numpy as np
import pytest

from quickdraft.check import CheckResult, classify, first_divergence


def logits(**values) -> np.ndarray:
    row = np.zeros(10)
    for token, value in values.items():
        row[int(token[1:])] = value
    return row


@pytest.mark.parametrize("a, b, index", [([1, 2, 3], [1, 2, 3], None), ([1, 2, 3], [1, 2, 4], 2),
                                         ([1], [1, 5], 1), ([], [], None), ([7], [8], 0)])
def test_first_divergence(a, b, index):
    assert first_divergence(a, b) == index


def test_exact():
    result = classify([1, 2, 3], [1, 2, 3], lambda i: pytest.fail("no logits needed"), tolerance=1.0)
    assert (result.kind, str(result), result.ok) == ("exact", "exact", True)


def test_near_tie_within_tolerance():
    # AR chose 4, speculation chose 3; the target's logits for them differ by 0.25 < 1.0.
    result = classify([1, 2, 3, 9], [1, 2, 4, 9], lambda i: logits(t3=5.0, t4=5.25), tolerance=1.0)
    assert result.kind == "near-tie" and result.index == 2 and result.margin == pytest.approx(0.25)
    assert str(result) == "near-tie at token 2 (margin 0.250, tolerance 1)" and result.ok


def test_real_divergence_beyond_tolerance():
    result = classify([1, 3], [1, 4], lambda i: logits(t3=1.0, t4=6.0), tolerance=1.0)
    assert result.kind == "real divergence" and result.margin == pytest.approx(5.0) and not result.ok
    assert str(result).startswith("real divergence at token 1")


def test_logits_are_asked_at_the_divergence():
    asked = []
    classify([5, 6, 7], [5, 6, 8], lambda i: asked.append(i) or logits(t7=1.0, t8=1.1), tolerance=1.0)
    assert asked == [2]


def test_one_output_ending_early_uses_the_end_token():
    # speculation stopped (EOS = 0) where AR went on with token 4
    assert classify([1, 2], [1, 2, 4], lambda i: logits(t0=3.0, t4=3.1), 1.0, end_token=0).kind == "near-tie"
    assert classify([1, 2], [1, 2, 4], lambda i: logits(t0=0.0, t4=9.0), 1.0, end_token=0).kind == "real divergence"
    unknown = classify([1, 2], [1, 2, 4], lambda i: logits(), 1.0, end_token=None)
    assert unknown.kind == "real divergence" and unknown.margin is None and "unknown" in str(unknown)


def test_a_witness_certifies_a_gap_beyond_the_measured_spread():
    asked = []

    def witness(i, y, x):
        asked.append((i, y, x))
        return "witness: a forward of 5 tokens with it at row 3"

    result = classify([1, 3], [1, 4], lambda i: logits(t3=1.0, t4=1.5), tolerance=0.1, witness=witness)
    assert (result.kind, result.witness, asked) == ("near-tie", witness(1, 4, 3), [(1, 4, 3)] * 2)
    assert "row 3" in str(result)
    none = classify([1, 3], [1, 4], lambda i: logits(t3=1.0, t4=1.5), tolerance=0.1, witness=lambda *a: None)
    assert none.kind == "real divergence" and none.witness is None
    within = classify([1, 3], [1, 4], lambda i: logits(t3=1.0, t4=1.05), tolerance=0.1,
                      witness=lambda *a: pytest.fail("no witness needed within the spread"))
    assert within.kind == "near-tie"


def test_to_dict_is_json_ready():
    assert CheckResult("exact", tolerance=0.5).to_dict() == {"result": "exact", "index": None, "margin": None,
                                                             "tolerance": 0.5, "witness": None, "summary": "exact"}
