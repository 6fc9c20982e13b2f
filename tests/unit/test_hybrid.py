"""The auto proposer's choices, on synthetic token streams with a synthetic forward cost."""

import numpy as np

from quickdraft.proposers.hybrid import AutoProposer
from quickdraft.sampling import SamplingParams
from quickdraft.types import Acceptance


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def run(auto, text, start, forward_s, budget=16):
    """Decode ``text`` from ``start`` as a greedy target whose output is ``text`` would: each
    draft is accepted up to its first wrong token. Returns the drafts' lengths per step."""
    auto.clock = clock = Clock()
    auto.begin(text[:start])
    pos, lengths = start, []
    while pos < len(text) - 1:
        draft = auto.propose(text[:pos], min(budget, len(text) - pos - 1), SamplingParams(), None).tokens
        accepted = next((i for i, t in enumerate(draft) if t != text[pos + i]), len(draft))
        clock.t += forward_s(len(draft))
        auto.observe(Acceptance(tuple(text[pos:pos + accepted + 1]), accepted, len(draft)))
        pos += accepted + 1
        lengths.append(len(draft))
    return lengths


def steep(k):  # this machine's llama.cpp curve, roughly: 1 + 0.6 k
    return 0.04 * (1 + 0.6 * k)


def test_copying_drafts_long_suffix_runs():
    rng = np.random.default_rng(0)
    base = [int(t) for t in rng.integers(100, 5000, 60)]
    auto = AutoProposer(target=None)
    lengths = run(auto, base * 3, 60, steep)
    assert len(lengths) < 60  # 119 tokens in far fewer steps than plain decoding's 119
    assert auto.decisions.get("suffix-long", 0) > auto.decisions.get("plain", 0)
    assert max(lengths) >= 8


def test_coincidental_matches_are_not_worth_drafting():
    rng = np.random.default_rng(1)
    text = [int(t) for t in rng.integers(0, 6, 400)]  # many short matches, none predictive
    auto = AutoProposer(target=None)
    lengths = run(auto, text, 20, steep)
    late = lengths[len(lengths) // 2:]
    assert late.count(0) > 0.8 * len(late)  # mostly plain steps once it has learned
    assert any(lengths[len(lengths) // 4:])  # but it still probes


def test_a_cheap_flat_verifier_makes_even_weak_drafts_pay():
    rng = np.random.default_rng(1)
    text = [int(t) for t in rng.integers(0, 6, 400)]
    auto = AutoProposer(target=None)
    lengths = run(auto, text, 20, lambda k: 0.04)  # verifying k tokens costs one step (a GPU)
    assert sum(1 for k in lengths[100:] if k) > 0.8 * len(lengths[100:])


def test_switches_to_suffix_drafts_when_copying_starts():
    rng = np.random.default_rng(2)
    noise = [int(t) for t in rng.integers(0, 6, 300)]
    base = [int(t) for t in rng.integers(100, 5000, 80)]
    auto = AutoProposer(target=None)
    lengths = run(auto, noise + base + base, 20, steep)
    copy_steps = lengths[-15:]  # the second copy of base comes in long drafts
    assert sum(copy_steps) > 40
