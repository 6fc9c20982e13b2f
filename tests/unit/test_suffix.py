"""Suffix drafting on hand-written token arrays: the trie, its matches and the proposer."""

import numpy as np
import pytest

from quickdraft.proposers.suffix import SuffixMemory, SuffixOptions, SuffixProposer, SuffixTrie
from quickdraft.sampling import SamplingParams

GREEDY, RNG = SamplingParams(), np.random.default_rng(0)


def trie_of(*sequences, depth=8, max_tokens=None):
    trie = SuffixTrie(depth, max_tokens)
    for seq in sequences:
        trie.extend(seq)
        trie.end()
    return trie


def test_counts_every_substring_up_to_the_depth():
    trie = trie_of([1, 2, 1, 2, 3], depth=3)
    assert trie.find([1, 2]).count == 2
    assert trie.find([2, 1, 2]).count == 1
    assert trie.find([1, 2, 1, 2]) is None  # deeper than the trie
    assert trie.find([3]).count == 1 and not trie.find([3]).children


def test_longest_match_wins():
    # [5, 1, 2] is followed by 7 once; [1, 2] alone is followed by 9 twice.
    trie = trie_of([5, 1, 2, 7, 0, 1, 2, 9, 0, 1, 2, 9])
    assert trie.continuation([5, 1, 2], budget=1, length_per_match=1)[:2] == ([7], [1.0])
    assert trie.continuation([6, 1, 2], budget=1, length_per_match=1)[:2] == ([9], [pytest.approx(2 / 3)])


def test_frequency_decides_between_continuations():
    trie = trie_of([1, 2, 3, 1, 2, 4, 1, 2, 3])
    tokens, probs, match = trie.continuation([7, 1, 2], budget=1, length_per_match=1)
    assert (tokens, match) == ([3], 2) and probs == [pytest.approx(2 / 3)]


def test_no_match_drafts_nothing_and_drafts_grow_with_the_match():
    trie = trie_of(list(range(20)))
    assert trie.continuation([99], budget=8)[0] == []
    assert len(trie.continuation([3], budget=8, length_per_match=2)[0]) == 2
    assert len(trie.continuation([1, 2, 3], budget=8, length_per_match=2)[0]) == 6


def test_continues_past_the_trie_depth_by_matching_again():
    text = list(range(30))
    trie = trie_of(text, depth=4)
    tokens, probs, _ = trie.continuation(text[:3], budget=20, length_per_match=10)
    assert tokens == text[3:23] and probs == [1.0] * 20


def test_memory_bound_evicts_the_oldest_sequences_completely():
    trie = trie_of([1, 2, 3], [4, 5, 6], [7, 8, 9], depth=3, max_tokens=6)
    assert trie.tokens == 6
    assert trie.find([1]) is None and trie.find([2, 3]) is None  # evicted, no empty nodes left
    assert trie.find([4, 5, 6]).count == 1
    fresh = trie_of([4, 5, 6], [7, 8, 9], depth=3)
    assert _shape(trie.root) == _shape(fresh.root)


def _shape(node):
    return {t: (c.count, _shape(c)) for t, c in node.children.items()}


def proposer(memory=None, **options):
    options = SuffixOptions(**options)
    return SuffixProposer(memory or SuffixMemory(options), options)


def test_proposer_learns_within_a_request_and_across_requests():
    memory = SuffixMemory(SuffixOptions(depth=8))
    p = proposer(memory, depth=8, length_per_match=4)
    prompt = [1, 2, 3, 4, 5, 6]
    p.begin(prompt)
    assert p.propose([*prompt, 9, 1, 2], 4, GREEDY, RNG).tokens == (3, 4, 5, 6)  # copy from the prompt
    context = [*prompt, 9, 1, 2, 3, 8, 8, 8, 7]  # output: 9 1 2 3 8 8 8 7
    p.propose(context, 4, GREEDY, RNG)
    p.end(context)  # the request is over: its output moves into the memory's global trie
    q = proposer(memory, depth=8, length_per_match=4)  # the next request's proposer
    q.begin([40, 41])
    assert q.propose([40, 41, 8, 8, 7], 4, GREEDY, RNG).tokens == ()  # 7 ended that output
    assert q.propose([40, 41, 9, 1], 3, GREEDY, RNG).tokens == (2, 3, 8)
    fresh = proposer(depth=8, length_per_match=4)  # another engine memory: nothing learned
    fresh.begin([40, 41])
    assert fresh.propose([40, 41, 9, 1], 3, GREEDY, RNG).tokens == ()


def test_proposer_stops_where_the_estimated_survival_is_too_low():
    prompt = [1, 2, 3, 0, 1, 2, 4, 0, 1, 2, 5, 0, 1]
    p = proposer(depth=8, length_per_match=8, min_prob=0.6)
    p.begin(prompt)
    candidate, match = p.candidate(prompt, 8)
    # [0, 1] matched twice before, both times followed by 2; then 4 or 5 at 1/2 each: below 0.6
    assert match == 2 and candidate.tokens == [2] and candidate.probs == [1.0]
    lenient = proposer(depth=8, length_per_match=8, min_prob=0.4)
    lenient.begin(prompt)
    assert lenient.candidate(prompt, 8)[0].tokens[:3] == [2, 4, 0]
