"""The cost curve's measuring loop (calibrate.calibrate), with the forward times given: the unit
(a one-token forward) is measured several times, so one slow sample of it cannot skew the curve."""

import pytest

from quickdraft import calibrate as calibration

TRUE_STEP = 0.030  # seconds of a one-token forward
TRUE_CURVE = {k: 1.0 + 0.45 * (k - 1) for k in range(1, 18)}  # a forward of k tokens, in steps


@pytest.fixture
def timings(monkeypatch):
    """time_forward answers from TRUE_CURVE, but the first one-token forward after the warm-up
    takes 1.7x as long (what a fresh machine's one-pass curve met). Returns the calls' ks."""
    calls = []

    def fake(backend, context, k):
        calls.append(k)
        slow = k == 1 and calls.count(1) == 2  # the warm-up is the first
        return TRUE_STEP * TRUE_CURVE[k] * (1.7 if slow else 1.0)

    monkeypatch.setattr(calibration, "time_forward", fake)
    target = type("Backend", (), {"rollback": lambda self, n: None})()
    return calls, target


def test_a_one_pass_curve_measures_its_unit_five_times_and_one_slow_sample_does_not_skew_it(timings):
    calls, target = timings
    ks = range(1, 18)
    result = calibration.calibrate(target, [1, 2, 3], ks=ks, repeats=1)
    assert calls.count(1) == 1 + calibration.UNIT_SAMPLES  # the warm-up, then the unit's samples
    assert len(calls) - 1 == calibration.forwards(ks, 1)
    assert result["target"]["median_s"][0] == pytest.approx(TRUE_STEP)
    assert result["target"]["relative"][3] == pytest.approx(TRUE_CURVE[4])  # a 4-token forward: 2.35 steps
    assert calibration.forwards(ks, 5) == 5 * 17  # repeats enough: nothing added


def test_with_a_single_sample_of_the_unit_the_slow_one_would_skew_every_point(timings, monkeypatch):
    """The negative control: what the curve was before (one sample of each k)."""
    calls, target = timings
    monkeypatch.setattr(calibration, "UNIT_SAMPLES", 1)
    result = calibration.calibrate(target, [1, 2, 3], ks=range(1, 18), repeats=1)
    assert result["target"]["relative"][3] == pytest.approx(TRUE_CURVE[4] / 1.7)  # 1.38 steps: verifying looks cheap
