"""Draft budget policies: the cost model (pure) and the adaptive controller's learning."""

import pytest

from quickdraft.control import (AdaptiveBudget, FixedBudget, ForwardCost, Offer, Prior, Split, ahead_gain, ahead_rate,
                                allocate, best_budget, best_rate, create_controller, expected_tokens)
from quickdraft.errors import InvalidParameterError
from quickdraft.records import Acceptance, StepTimes


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
    """Simulate one step: the controller chooses k, drafts of which the first are accepted.
    Returns k and the step's seconds."""
    k = controller.budget()
    accepted = int(k * accepted_fraction)
    times = StepTimes(draft_s * k, forward(k))
    controller.cost.observe(k + 1, times.verify_s)  # what the engine does for every step
    controller.observe(Acceptance((1,) * accepted + (2,), accepted, k), times)
    return k, times.draft_s + times.verify_s, accepted + 1


def steep(k):  # llama.cpp on 2 cores with K-quants, roughly: 1 + 0.6 k steps for k drafts
    return 0.04 * (1 + 0.6 * k)


def run(controller, steps, accepted_fraction, draft_s, forward):
    ks, seconds, tokens = zip(*(step(controller, accepted_fraction, draft_s, forward) for _ in range(steps)))
    return list(ks), sum(seconds), sum(tokens)


def test_no_drafting_and_no_probes_where_even_perfect_drafts_cannot_pay():
    """A draft token costing 0.6 of a step against this verify curve never pays: not one probe."""
    c = AdaptiveBudget(max_k=4, cost=ForwardCost([1 + 0.6 * k for k in range(5)], step_s=0.04),
                       draft_token_s=0.024)
    ks, _, _ = run(c, 300, 1.0, 0.024, steep)
    assert ks == [0] * 300


def test_probes_that_fail_lose_at_most_the_explore_share_of_the_time():
    """Drafts that are never accepted, where good ones would pay: probes, backing off, and all of
    them together lose under ``explore`` of the time plain decoding took (plus one probe)."""
    c = AdaptiveBudget(max_k=4, cost=ForwardCost([1 + 0.6 * k for k in range(5)], step_s=0.04),
                       draft_token_s=0.001)
    ks, seconds, tokens = run(c, 1500, 0.0, 0.001, steep)
    probes = [i for i, k in enumerate(ks) if k]
    assert len(probes) >= 3  # it keeps looking
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps == sorted(gaps) and gaps[-1] >= 3 * gaps[0]  # each failed probe doubles the wait
    plain_time = tokens * steep(0)
    assert seconds <= plain_time * (1 + c.explore) + 0.04 * 0.6 * c.probe


def test_adaptive_keeps_drafting_when_it_pays():
    """A source whose prior alone predicts a clear gain (here 50% acceptance, a nearly flat curve,
    nearly free drafts) drafts from the first step, and at full length once its drafts are accepted."""
    c = AdaptiveBudget(max_k=4, cost=ForwardCost([1 + 0.05 * k for k in range(5)], step_s=0.04),
                       draft_token_s=0.001)
    assert c.trusted
    ks, _, _ = run(c, 40, 1.0, 0.001, lambda k: 0.04 * (1 + 0.05 * k))
    assert ks[0] > 0 and ks[1:] == [4] * 39


def test_an_untrusted_source_enters_only_by_a_bounded_probe():
    """A prior that predicts no clear gain (60% acceptance where every row costs half a step) is
    not trusted: nothing until a probe is due, so a source that is bad here loses at most the
    explore share of the time, and a good one then grows to full length."""
    def fresh():
        return AdaptiveBudget(max_k=8, cost=ForwardCost([1 + 0.5 * k for k in range(9)], step_s=0.04),
                              draft_token_s=0.004, prior_accept=0.6)

    forward = lambda k: 0.04 * (1 + 0.5 * k)  # noqa: E731
    assert not fresh().trusted and fresh().could_pay()
    assert fresh().offer(8).accept == () and fresh().offer(8).probe is None
    bad, seconds, tokens = run(fresh(), 400, 0.0, 0.004, forward)
    assert 0 < sum(map(bool, bad)) and bad.index(fresh().short(8)) >= fresh().probe_every
    probe = fresh().short(8)
    once = probe * 0.004 + forward(probe) - forward(0)
    assert seconds <= tokens * forward(0) * (1 + fresh().explore) + once
    good, _, _ = run(fresh(), 200, 1.0, 0.004, forward)
    assert good[-1] >= 2 and good.index(fresh().short(8)) >= fresh().probe_every


def test_a_trusted_prior_drafts_at_once_and_backs_off_when_the_request_refutes_it():
    """A prior that predicts a clear gain (95% where a row costs 0.2 of a step) drafts from the
    first step: a source that is good here never waits, one that is bad here is dropped after a
    few rejected drafts (the prior weighs ``prior_weight`` observations) and then only probed."""
    def fresh(weight=1.0):
        return AdaptiveBudget(max_k=8, cost=ForwardCost([1 + 0.2 * k for k in range(9)], step_s=0.04),
                              draft_token_s=0.004, prior_accept=0.95, prior_weight=weight)

    forward = lambda k: 0.04 * (1 + 0.2 * k)  # noqa: E731
    assert fresh().trusted and fresh().offer(8).accept
    good, _, _ = run(fresh(), 60, 1.0, 0.004, forward)
    assert all(good) and good[-1] == 8
    for weight, most in ((1.0, 2), (3.0, 8)):  # a draft of 0.1 of a step is worth trying down to 36%
        bad, seconds, tokens = run(fresh(weight), 300, 0.0, 0.004, forward)
        tries = sum(map(bool, bad[:fresh().probe_every]))
        assert bad[0] and tries <= most and not any(bad[tries:fresh().probe_every])  # then only probes
        assert seconds <= tokens * forward(0) * (1 + fresh().explore) + sum(k * 0.004 + forward(k) - forward(0)
                                                                            for k in bad[:tries])


def test_a_setup_cost_delays_a_probe_and_is_not_a_cost_per_token():
    """A draft model that must first catch up with the context (``setup_s``): the probe waits
    until the explore share covers that too, and the catch-up is not learned as per-token cost."""
    def fresh():
        return AdaptiveBudget(max_k=4, cost=ForwardCost([1 + 0.2 * k for k in range(5)], step_s=0.04),
                              draft_token_s=0.004)

    def due_after(setup_s):
        c = fresh()
        for step_ in range(2000):
            if c.offer(4, setup_s).probe:
                return step_
            c.observe(Acceptance((1,), 0, 0), StepTimes(0.0, 0.04))
        return None

    assert due_after(0.0) < due_after(0.5)
    c = fresh()
    c.observe(Acceptance((1, 1, 1), 2, 2), StepTimes(0.5, 0.05), setup=True)
    assert c.draft_token_s == 0.004 and c.acceptance()[0] > 0.5
    c.observe(Acceptance((1, 1, 1), 2, 2), StepTimes(0.01, 0.05))
    assert c.draft_token_s == pytest.approx(0.9 * 0.004 + 0.1 * 0.005)


def test_a_step_shared_by_a_batch_counts_as_one_step():
    """Eight generations learning from one shared step forget what came before as one step does
    (not eight steps' worth: the estimate would follow the last step's noise), and count the
    step's time once toward the exploration budget."""
    def after_history():
        c = AdaptiveBudget(max_k=1, cost=ForwardCost([1, 1.2], step_s=0.04), positional=False)
        for _ in range(20):
            c.learn(0, 1)  # rejected twenty times
        return c

    alone, batch, unshared = after_history(), after_history(), after_history()
    alone.observe(Acceptance((1, 1), 1, 1), StepTimes(0.001, 0.08))
    for _ in range(8):
        batch.observe(Acceptance((1, 1), 1, 1), StepTimes(0.001, 0.08, batch=8))
        unshared.observe(Acceptance((1, 1), 1, 1), StepTimes(0.001, 0.08))
    history = sum(0.9 ** i for i in range(20))  # the twenty rejections' weight before the step
    step = sum(0.9 ** (j / 8) for j in range(8))  # the eight observations, each forgetting 1/8 of a step
    assert batch._accept[0] == pytest.approx([step, 0.9 * history + step])
    assert alone._accept[0] == pytest.approx([1.0, 0.9 * history + 1.0])
    assert batch.acceptance()[0] < unshared.acceptance()[0] - 0.05  # one good step is not eight
    assert batch._elapsed == pytest.approx(8 * 0.001 + 0.08) and alone._elapsed == pytest.approx(0.081)


def test_a_short_draft_is_the_cheapest_per_token_on_a_sawtooth_curve():
    """Repacked kernels take rows four at a time: on the default target 4 rows cost less than 3
    (calibrated: 1, 1.54, 2.71, 1.97, 2.59 steps for 1-5 rows), so 3 drafted tokens is the short
    draft, not 2; on a smooth steep curve (K-quants) with a dear draft, 1."""
    sawtooth = AdaptiveBudget(max_k=16, cost=ForwardCost([1, 1.54, 2.71, 1.97, 2.59], step_s=0.03),
                              draft_token_s=0.35 * 0.03)
    assert sawtooth.short(16) == 3 and sawtooth.short(2) == 1
    assert sawtooth.short(0) == 0 and sawtooth.offer(0).accept == ()  # no room: not even a trial
    steep_dear = AdaptiveBudget(max_k=16, cost=ForwardCost([1 + 0.9 * k for k in range(5)], step_s=0.03),
                                draft_token_s=0.7 * 0.03)
    assert steep_dear.short(16) == 1


def test_a_source_that_turns_good_is_noticed_by_a_probe_and_kept():
    c = AdaptiveBudget(max_k=4, cost=ForwardCost([1 + 0.3 * k for k in range(5)], step_s=0.04),
                       draft_token_s=0.002, prior_accept=0.1)
    bad, _, _ = run(c, 200, 0.0, 0.002, lambda k: 0.04 * (1 + 0.3 * k))
    good, _, _ = run(c, 600, 1.0, 0.002, lambda k: 0.04 * (1 + 0.3 * k))
    assert bad.count(0) > 180 and good[-50:] == [4] * 50


def test_a_calibrated_curve_scales_by_the_step_time_until_measured():
    cost = ForwardCost([1.0, 3.0, 5.0], step_s=0.02)
    assert cost.curve(2) == pytest.approx([0.02, 0.06, 0.1])
    cost.observe(1, 0.05)
    assert cost.curve(2) == pytest.approx([0.05, 0.15, 0.25])
    assert cost.seconds(5) == pytest.approx(0.05 * 9)  # beyond the curve: its last slope (2 per token)


def test_an_unobserved_size_follows_the_nearest_observed_ones():
    """A batch's big forwards cost more per token than the one-sequence curve says: sizes between
    two observed ones are scaled to both (by closeness), beyond them to the nearest, so the
    small sizes' scale does not hide it."""
    cost = ForwardCost([1.0 + 0.5 * (n - 1) for n in range(1, 18)], step_s=0.02)
    cost.observe(1, 0.02)
    cost.observe(64, 0.02 * 32.5 * 1.5)  # 50% dearer than the curve scaled by n = 1
    cost.observe(96, 0.02 * 48.5 * 1.5)
    assert cost.seconds(80) == pytest.approx(0.02 * 40.5 * 1.5)
    assert cost.seconds(128) == pytest.approx(0.02 * 64.5 * 1.5)
    assert cost.seconds(2) == pytest.approx(0.02 * 1.5 * (1 + 0.5 / 63))  # mostly n = 1, a little of n = 64
    assert cost.seconds(1) == 0.02


def test_allocate_is_best_rate_for_one_request_and_backs_off_as_a_batch_grows():
    forward = [1.0 + 0.25 * k for k in range(17)]  # a fairly flat verifier at small sizes
    accept = (0.9,) * 8
    assert allocate([[Offer("s", accept)]], lambda n: forward[n - 1] if n <= 17 else 0.5 * n)[0] == \
        (0, best_rate(accept, 0.0, forward[:9])[0])
    # A batch forward costs 0.45 s per token beyond the first: each draft token costs nearly what
    # it gains, and with 16 requests the step drafts less per request than one request alone.
    def cpu(n):
        return 1.0 + 0.45 * (n - 1)
    alone = allocate([[Offer("s", (0.7,) * 8)]], cpu)[0][1]
    crowd = allocate([[Offer("s", (0.7,) * 8)] for _ in range(16)], cpu)
    assert alone > 0 and sum(k for _, k in crowd) / 16 < alone
    # Useless drafts are never taken, forced ones always, probes only where nothing else is drafted.
    assert allocate([[Offer("s", (0.0,) * 4)]], cpu) == [(None, 0)]
    assert allocate([[Offer("f", (1.0,) * 3, forced=3)]], cpu) == [(0, 3)]
    assert allocate([[Offer("p", (0.1,) * 4, probe=2)]], cpu) == [(0, 2)]
    assert allocate([[Offer("p", (0.1,) * 4, probe=2)]] * 2, cpu) == [(None, 0)] * 2  # not in a batch
    assert allocate([[Offer("good", (0.99,) * 4), Offer("p", (0.1,) * 4, probe=2)]], lambda n: 1.0)[0] == (0, 4)


def test_weighted_learning_is_relative_to_the_expected_worth():
    """A suffix source offered tokens at trie probability 0.5 that were accepted half the time is
    as good as its trie says: the learned factor tends to 1."""
    c = AdaptiveBudget(max_k=4, positional=False, prior_accept=0.2, decay=0.9)  # a default cost
    for i in range(200):
        c.learn(i % 2, 1, weights=[0.5])
    assert c.acceptance()[0] == pytest.approx(1.0, abs=0.15)


def test_sent_drafts_that_deliver_less_than_predicted_scale_the_source_down():
    """What a source's sent drafts gave over what they were predicted to give (the winner's
    curse of a shadow-graded source): 1 before any and while they deliver, below 1 when they do
    not, back to 1 when they deliver again; never above 1."""
    c = AdaptiveBudget(max_k=4)
    assert c.realized() == 1.0
    for _ in range(10):
        c.sent(predicted=1.5, accepted=2)  # delivered more than predicted: not scaled up
    assert c.realized() == 1.0
    failing = AdaptiveBudget(max_k=4)
    failing.sent(predicted=1.5, accepted=0)
    assert 0.7 < failing.realized() < 1.0  # one draft moves it a little (SENT_WEIGHT)
    for _ in range(10):
        failing.sent(predicted=1.5, accepted=0)
    assert failing.realized() < 0.5
    for _ in range(40):
        failing.sent(predicted=1.5, accepted=2)
    assert failing.realized() == 1.0


def test_controller_registry_and_validation():
    assert isinstance(create_controller("fixed", 3), FixedBudget)
    prior = Prior(curve=[1.0, 1.5, 2.0, 2.5, 3.0], step_s=0.03, draft_token=0.5)
    cost = ForwardCost.from_prior(prior)
    adaptive = create_controller("adaptive", 3, cost, prior.draft_token_s())
    assert adaptive.cost is cost and adaptive.draft_token_s == pytest.approx(0.015)
    with pytest.raises(InvalidParameterError, match="unknown controller"):
        create_controller("psychic", 3)
    with pytest.raises(InvalidParameterError, match="num_draft"):
        AdaptiveBudget(max_k=-1)
    assert FixedBudget(3).offer(2) == Offer("fixed", (1.0, 1.0), forced=2)


def test_what_was_learned_carries_over_to_the_next_request():
    c = AdaptiveBudget(max_k=4, cost=ForwardCost([1 + 0.6 * k for k in range(5)], step_s=0.04), draft_token_s=0.025)
    run(c, 30, 0.0, 0.025, steep)
    assert step(c, 0.0, 0.025, steep)[0] == 0


def test_drafting_ahead_with_every_token_accepted_costs_the_longer_of_the_two_models():
    """With every token accepted (r = 1) a step is max(split verify, (k + 1) split draft tokens)."""
    forward = [1.0, 1.2, 1.4, 1.6]
    split = Split(1, 1, target_scale=2.0, draft_token=0.2)
    assert ahead_rate([1.0] * 4, 2, 0.1, forward, split) == pytest.approx(3 / max(2.0 * 1.4, 3 * 0.2))
    # nothing accepted (r = 0): the draft is made in turn and the verify runs on split threads
    assert ahead_rate([0.0] * 4, 2, 0.1, forward, split) == pytest.approx(1 / (2 * 0.1 + 2.0 * 1.4))


def test_drafting_ahead_is_predicted_to_lose_on_two_cores_and_to_pay_where_the_cores_spare_it():
    """On 2 cores (the Zen 4's costs measured by scripts/parallel_split.py: a 5-token verify 195.7 ms
    on one thread against 103.8 on two, a draft token 16.8 against 11.0 ms, a step 35.8 ms) the
    target slows more on one thread than the overlap saves; where taking threads from the target
    costs it little (many cores), drafting ahead pays when drafts are accepted, and not when they
    are mostly rejected. Without a measured split there is nothing to predict."""
    curve = [1.0, 1.36, 1.87, 2.32, 2.9, 3.3, 3.7, 4.1, 4.5]
    two_cores = Split(1, 1, target_scale=195.7 / 103.8, draft_token=16.8 / 35.8)
    assert ahead_gain([0.9] * 9, 11.0 / 35.8, curve, [two_cores])[2] < 0.9
    many_cores = Split(6, 2, target_scale=1.1, draft_token=0.25)
    split, k, gain = ahead_gain([0.9] * 9, 0.25, curve, [two_cores, many_cores])
    assert split == many_cores and k >= 2 and gain > 1.02
    assert ahead_gain([0.3] * 9, 0.25, curve, [many_cores])[2] < 1.0
    assert ahead_gain([0.9] * 9, 0.25, curve, []) == (None, 0, 0.0)


def test_prompt_room_fills_the_time_the_rows_leave():
    from quickdraft.control import MIN_PROMPT_CHUNK, prompt_room

    linear = lambda n: 0.01 * n  # noqa: E731  a prompt forward of n tokens: 10 ms each
    assert prompt_room(linear, 0.92, 512) == 92  # the 0.92 s the rows left
    assert prompt_room(linear, 0.92, 50) == 50  # no more than offered
    assert prompt_room(linear, -0.2, 512) == MIN_PROMPT_CHUNK  # the rows fill the time: prompts still get in
    assert prompt_room(linear, -0.2, 5) == 5
    assert prompt_room(linear, 1.0, 0) == 0
    cost = ForwardCost([1.0 + (n - 1) / 4 for n in range(1, 18)], step_s=0.04)
    room = prompt_room(cost.seconds, 0.5, 512)
    assert cost.seconds(room) <= 0.5 < cost.seconds(room + 1)


def test_a_step_time_limit_keeps_drafts_to_the_time_left():
    """With ``limit_s`` (the time a step keeps for its prompt tokens), no draft makes the step's
    predicted time pass it; plain rows are always taken; without it the same offers draft."""
    offers = [[Offer("s", (0.9,) * 8)] for _ in range(4)]
    forward = lambda n: 0.1 + 0.01 * n  # noqa: E731
    free = allocate(offers, forward)
    assert sum(k for _, k in free) >= 8
    capped = allocate(offers, forward, limit_s=0.2)
    assert 0 < sum(k for _, k in capped) and forward(sum(1 + k for _, k in capped)) <= 0.2
    assert allocate(offers, forward, limit_s=0.01) == [(None, 0)] * 4  # plain, though over the limit


def test_beyond_the_curve_a_noisy_tail_still_prices_more_tokens_higher():
    """A calibration whose last points fell (measured: AMD Zen 5, seconds for 1..17 tokens) once
    priced every prompt chunk past 17 tokens like 17: a step offered 512 prompt tokens for a
    1.25 s budget and took 3.9 s. Beyond the curve the cost rises with the whole curve's slope."""
    measured = [0.0255, 0.0439, 0.0932, 0.0465, 0.0626, 0.0871, 0.1006, 0.1013, 0.1264, 0.1185, 0.1635,
                0.1226, 0.1381, 0.1763, 0.1865, 0.1264, 0.1639]
    cost = ForwardCost([s / measured[0] for s in measured], step_s=measured[0])
    assert cost.seconds(17) == pytest.approx(measured[-1])
    assert cost.seconds(200) > 5 * cost.seconds(17)  # ~1.3 s measured for 200 tokens on that machine
    cost.observe(200, 1.3)
    assert 2.0 < cost.seconds(500) < 4.5  # scaled from the observed 200 (3.3 s measured for ~500)
