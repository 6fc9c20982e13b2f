"""Draft budget policies: the cost model (pure) and the adaptive controller's learning."""

import pytest

from quickdraft.control import AdaptiveBudget, FixedBudget, best_budget, create_controller, expected_tokens
from quickdraft.errors import InvalidParameterError
from quickdraft.types import Acceptance, StepTimes


def test_expected_tokens():
    assert expected_tokens([0.5, 0.5], 0) == 1.0
    assert expected_tokens([0.5, 0.5], 2) == pytest.approx(1.75)
    assert expected_tokens([1.0] * 4, 4) == 5.0


@pytest.mark.parametrize("accept, draft_s, forward_s, best", [
    ([0.5], 0.0, [1.0, 2.0], 0),  # 1 token/s plain vs 1.5 / 2
    ([0.9] * 4, 0.0, [1.0, 1.1, 1.2, 1.3, 1.4], 4),  # flat verify, free drafts: longest
    ([0.9] * 4, 0.6, [1.0, 1.6, 2.3, 2.6, 3.2], 0),  # this machine's curve and 0.5B draft: never pays
    ([0.9] * 4, 0.0, [1.0, 1.6, 2.3, 2.6, 3.2], 3),  # free drafts at 90%: 3.44 tokens for 2.6 beats 4.1 for 3.2
    ([0.0] * 4, 0.0, [1.0, 1.0, 1.0, 1.0, 1.0], 0),  # useless drafts: a plain step
])
def test_best_budget(accept, draft_s, forward_s, best):
    assert best_budget(accept, draft_s, forward_s) == best


def step(controller, accepted_fraction, draft_s, forward):
    """Simulate one step: the controller chooses k, drafts of which the first are accepted."""
    k = controller.budget()
    accepted = int(k * accepted_fraction)
    controller.observe(Acceptance((1,) * accepted + (2,), accepted, k), StepTimes(draft_s * k, forward(k)))
    return k


def test_adaptive_turns_speculation_off_when_it_does_not_pay_and_probes():
    c = AdaptiveBudget(max_k=4)
    ks = [step(c, 0.25, 0.025, lambda k: 0.04 * (1 + 0.6 * k)) for _ in range(60)]
    assert ks[0] == 4  # optimistic start: it has to draft to learn
    assert ks[10:].count(0) > 40  # then mostly plain steps
    assert any(k > 0 for k in ks[30:])  # but it keeps probing


def test_adaptive_keeps_drafting_when_it_pays():
    c = AdaptiveBudget(max_k=4)
    ks = [step(c, 1.0, 0.001, lambda k: 0.04 * (1 + 0.05 * k)) for _ in range(40)]
    assert ks[5:] == [4] * 35


def test_adaptive_uses_a_calibrated_curve_for_unseen_sizes():
    c = AdaptiveBudget(max_k=2, relative_cost=[1.0, 3.0, 5.0])
    c.observe(Acceptance((2,), 0, 0), StepTimes(0.0, 0.05))
    assert c.forward_s() == pytest.approx([0.05, 0.15, 0.25])


def test_controller_registry_and_validation():
    assert isinstance(create_controller("fixed", 3), FixedBudget)
    assert create_controller("adaptive", 3, [1.0, 1.5, 2.0, 2.5, 3.0]).relative_cost == [1.0, 1.5, 2.0, 2.5]
    with pytest.raises(InvalidParameterError, match="unknown controller"):
        create_controller("psychic", 3)
    with pytest.raises(InvalidParameterError, match="num_draft"):
        AdaptiveBudget(max_k=-1)


def test_failed_probes_back_off():
    c = AdaptiveBudget(max_k=4, probe_every=4)
    ks = [step(c, 0.0, 0.025, lambda k: 0.04 * (1 + 0.6 * k)) for _ in range(120)]
    probes = [i for i, k in enumerate(ks) if k > 0][1:]  # after the optimistic first step
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps == sorted(gaps) and gaps[-1] >= 3 * gaps[0]  # e.g. 9, 17, 33: the wait doubles


def test_what_was_learned_carries_over_to_the_next_request():
    c = AdaptiveBudget(max_k=4)
    for _ in range(30):
        step(c, 0.0, 0.025, lambda k: 0.04 * (1 + 0.6 * k))
    assert step(c, 0.0, 0.025, lambda k: 0.04 * (1 + 0.6 * k)) == 0  # no optimistic restart
