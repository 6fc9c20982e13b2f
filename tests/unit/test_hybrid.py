"""The auto proposer's choices, on synthetic token streams with a synthetic forward cost."""

from collections import Counter

import numpy as np

from quickdraft.control import allocate
from quickdraft.proposers.base import Resources
from quickdraft.proposers.hybrid import AutoMemory, AutoOptions, AutoProposer
from quickdraft.sampling import SamplingParams
from quickdraft.records import Acceptance, StepTimes


class Chains:
    """What auto asks of a target here: its capabilities (chains only: no lookahead branch)."""

    capabilities = frozenset()


def make_auto():
    options, resources = AutoOptions(), Resources(target=Chains())
    return AutoProposer(resources, AutoMemory(resources, options), options)


def run(auto, text, start, forward_s, budget=16, sources=None):
    """Decode ``text`` from ``start`` as a greedy target whose output is ``text`` would, the way
    the engine steps a request: auto offers, the step allocates, auto drafts; each draft is
    accepted up to its first wrong token, and a forward over k drafts takes ``forward_s(k)``.
    Returns the drafts' lengths per step (and counts their sources)."""
    cost = next(iter(auto.memory.control.values())).cost  # the engine's forward cost
    auto.begin(text[:start])
    pos, lengths = start, []
    while pos < len(text) - 1:
        offers = auto.offers(text[:pos], min(budget, len(text) - pos - 1))
        index, k = allocate([offers], cost.seconds)[0]
        draft = auto.draft(text[:pos], offers[index] if index is not None else None, k, SamplingParams(), None)
        accepted = next((i for i, t in enumerate(draft.tokens) if t != text[pos + i]), len(draft))
        cost.observe(len(draft) + 1, forward_s(len(draft)))
        auto.observe(Acceptance(tuple(text[pos:pos + accepted + 1]), accepted, len(draft)),
                     StepTimes(0.0, forward_s(len(draft))))
        pos += accepted + 1
        lengths.append(len(draft))
        if sources is not None:
            sources[draft.source] += 1
    return lengths


def steep(k):  # this machine's llama.cpp curve, roughly: 1 + 0.6 k
    return 0.04 * (1 + 0.6 * k)


def test_copying_drafts_long_suffix_runs():
    rng = np.random.default_rng(0)
    base = [int(t) for t in rng.integers(100, 5000, 60)]
    sources = Counter()
    lengths = run(make_auto(), base * 3, 60, steep, sources=sources)
    assert len(lengths) < 60  # 119 tokens in far fewer steps than plain decoding's 119
    assert sources["suffix-long"] > sources["plain"]
    assert max(lengths) >= 8


def test_coincidental_matches_are_not_worth_drafting():
    rng = np.random.default_rng(1)
    text = [int(t) for t in rng.integers(0, 6, 400)]  # many short matches, none predictive
    auto = make_auto()
    lengths = run(auto, text, 20, steep)
    late = lengths[len(lengths) // 2:]
    assert late.count(0) > 0.8 * len(late)  # mostly plain steps once it has learned
    # It kept grading the candidates it did not send (shadow learning): every class seen has
    # evidence well beyond its prior, and trie probability times learned rate is far from paying.
    learned = {name: c.acceptance()[0] for name, c in auto.memory.control.items()}
    assert learned["suffix-short"] < 1.0 and auto.memory.control["suffix-short"]._accept[0][1] > 2


def test_shadow_outcome():
    from quickdraft.proposers.hybrid import shadow_outcome

    assert shadow_outcome([5, 6, 7], [5, 9]) == (1, 2)  # accepted 5, rejected 6
    assert shadow_outcome([5, 6], [5, 6, 8]) == (2, 2)  # both right; nothing known beyond
    assert shadow_outcome([5, 6, 7], [5]) == (1, 1)  # only the first position is known
    assert shadow_outcome([4], [5]) == (0, 1)


def test_a_cheap_flat_verifier_makes_even_weak_drafts_pay():
    rng = np.random.default_rng(1)
    text = [int(t) for t in rng.integers(0, 6, 400)]
    lengths = run(make_auto(), text, 20, lambda k: 0.04)  # verifying k tokens costs one step (a GPU)
    assert sum(1 for k in lengths[100:] if k) > 0.8 * len(lengths[100:])


def test_switches_to_suffix_drafts_when_copying_starts():
    rng = np.random.default_rng(2)
    noise = [int(t) for t in rng.integers(0, 6, 300)]
    base = [int(t) for t in rng.integers(100, 5000, 80)]
    lengths = run(make_auto(), noise + base + base, 20, steep)
    copy_steps = lengths[-15:]  # the second copy of base comes in long drafts
    assert sum(copy_steps) > 40


def test_an_offer_is_scaled_by_what_its_sources_sent_drafts_realized():
    rng = np.random.default_rng(3)
    base = [int(t) for t in rng.integers(100, 5000, 60)]
    auto = make_auto()
    auto.begin(base)
    before = auto.offers(base + base[:12], 8)  # a long match: suffix-long, trusted from its prior
    assert [o.source for o in before] == ["suffix-long"]
    for _ in range(10):  # its sent drafts were predicted 5 accepted tokens and had none
        auto.memory.control["suffix-long"].sent(5.0, 0)
    after = auto.offers(base + base[:12], 8)[0]
    assert after.accept[0] < 0.3 * before[0].accept[0]  # the first token's, so the whole draft's worth
    assert after.accept[1:] == before[0].accept[1:]


def test_sent_drafts_are_weighed_against_their_prediction_and_true_copies_keep_it():
    rng = np.random.default_rng(0)
    base = [int(t) for t in rng.integers(100, 5000, 60)]
    auto = make_auto()
    run(auto, base * 3, 60, steep)
    predicted, accepted = auto.memory.control["suffix-long"]._sent
    assert predicted > 5 and accepted >= 0.9 * predicted  # copying delivers what it promised
    assert auto.memory.control["suffix-long"].realized() > 0.95
