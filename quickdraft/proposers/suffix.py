"""Suffix drafting (SuffixDecoding, Oliaro et al. 2024, arXiv 2411.04975).

Two count tries over token substrings: a *local* one over the current prompt and output, and a
*global* one over the outputs of earlier requests to the same engine (bounded: the oldest are
evicted). A draft continues the longest suffix of the context that occurred before with a
continuation, taking the most frequent next token each time; every token carries the empirical
probability of that choice, and the product of those is the draft's estimated chance of
surviving to that position. Drafts grow with the match: at most ``length_per_match`` tokens per
matched token, so a one-token coincidence drafts little and a copied paragraph drafts a lot.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

from ..errors import InvalidParameterError
from ..records import Draft
from .base import BaseProposer, ProposerSpec


class _Node:
    __slots__ = ("count", "children")

    def __init__(self) -> None:
        self.count = 0
        self.children: dict[int, _Node] = {}


class SuffixTrie:
    """Counts of every substring (up to ``depth`` tokens) of the sequences added to it.

    ``extend`` appends tokens to the current sequence in O(depth) per token; ``end`` closes it
    (the next ``extend`` starts a new one, so substrings never span two sequences). With
    ``max_tokens``, the oldest closed sequences are removed (their counts subtracted) once more
    tokens than that are held; memory is then at most ``max_tokens * depth`` nodes (about 250
    bytes each in CPython: text that never repeats costs about 4 KB per held token at depth 16).
    """

    def __init__(self, depth: int = 16, max_tokens: int | None = None) -> None:
        self.depth, self.max_tokens = depth, max_tokens
        self.root = _Node()
        self.tokens = 0
        self._sequences: deque[list[int]] = deque()
        self._open: list[int] | None = None
        self._active: list[_Node] = []  # nodes of the current sequence's suffixes, shortest first

    def extend(self, tokens: Sequence[int]) -> None:
        if self._open is None:
            self._open, self._active = [], []
            self._sequences.append(self._open)
        for token in tokens:
            self._open.append(int(token))
            grown = []
            for node in [self.root, *self._active[:self.depth - 1]]:
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = _Node()
                child.count += 1
                grown.append(child)
            self._active = grown
        self.tokens += len(tokens)

    def end(self) -> None:
        self._open = None
        while self.max_tokens is not None and self.tokens > self.max_tokens and len(self._sequences) > 1:
            self._remove(self._sequences.popleft())

    def _remove(self, sequence: list[int]) -> None:
        for start in range(len(sequence)):
            node = self.root
            for token in sequence[start:start + self.depth]:
                child = node.children[token]
                child.count -= 1
                if child.count == 0:
                    del node.children[token]
                    break
                node = child
        self.tokens -= len(sequence)

    def find(self, path: Sequence[int]) -> _Node | None:
        node = self.root
        for token in path:
            node = node.children.get(token)
            if node is None:
                return None
        return node

    def match(self, context: Sequence[int]) -> tuple[int, _Node | None]:
        """The longest suffix of ``context`` that occurred before with a continuation:
        (its length, its node), or (0, None)."""
        for size in range(min(self.depth - 1, len(context)), 0, -1):
            node = self.find(context[len(context) - size:])
            if node is not None and node.children:
                return size, node
        return 0, None

    def continuation(self, context: Sequence[int], budget: int,
                     length_per_match: float = 1.0) -> tuple[list[int], list[float], int]:
        """Most frequent continuation of the longest match: (tokens, the empirical probability
        of each token given the ones before, the length of the match it continues). Up to
        ``budget`` tokens and at most ``length_per_match`` per matched token; when the trie's
        depth runs out it matches again on the context extended by the draft so far.

        Example: after adding [1, 2, 3, 1, 2, 4, 1, 2, 3], context [7, 1, 2] matches [1, 2]
        (length 2); 3 followed it twice and 4 once, so the draft starts with 3 (probability 2/3).
        """
        size, node = self.match(context)
        matched, limit = size, min(budget, int(length_per_match * size))
        tokens: list[int] = []
        probs: list[float] = []
        while node is not None and node.children and len(tokens) < limit:
            token, child = max(node.children.items(), key=lambda kv: kv[1].count)
            tokens.append(token)
            probs.append(child.count / sum(c.count for c in node.children.values()))
            size, node = size + 1, child
            if size >= self.depth:  # the trie's depth ran out: match the extended context again
                size, node = self.match([*context, *tokens])
        return tokens, probs, matched


@dataclass
class Candidate:
    """A proposed continuation with its estimated acceptance: ``probs[i]`` is the chance token i
    is right given the ones before it (the trie's empirical frequency)."""

    tokens: list[int]
    probs: list[float]

    def expected_accepted(self) -> float:
        total, survive = 0.0, 1.0
        for p in self.probs:
            survive *= p
            total += survive
        return total


@dataclass(frozen=True)
class SuffixOptions:
    """``depth``: longest substring counted; ``global_tokens``: earlier outputs kept (tokens);
    ``length_per_match``: draft tokens per matched token at most; ``min_prob``: stop a draft where
    its estimated survival probability falls below this."""

    depth: int = 16
    global_tokens: int = 20_000
    length_per_match: float = 2.0
    min_prob: float = 0.1

    def __post_init__(self) -> None:
        if self.depth < 2 or self.global_tokens < 0 or self.length_per_match <= 0 or not 0 <= self.min_prob <= 1:
            raise InvalidParameterError(
                f"suffix options need depth >= 2, global_tokens >= 0, length_per_match > 0 and min_prob in "
                f"[0, 1]; got {self.depth}, {self.global_tokens}, {self.length_per_match}, {self.min_prob}")


class SuffixMemory:
    """What suffix drafting keeps across requests: a trie over earlier outputs, bounded in tokens
    (the oldest outputs are evicted)."""

    def __init__(self, options: SuffixOptions) -> None:
        self.global_trie = SuffixTrie(options.depth, max_tokens=options.global_tokens)

    def learn(self, output: Sequence[int]) -> None:
        if output:
            self.global_trie.extend(output)
            self.global_trie.end()


def best_continuation(tries: Sequence[SuffixTrie], context: Sequence[int], budget: int,
                      length_per_match: float, min_prob: float) -> tuple[Candidate, int]:
    """The continuation of ``context`` with the most expected accepted tokens among ``tries``
    (at most ``budget`` tokens), cut where its survival probability (the product of its tokens'
    frequencies) falls below ``min_prob``; and the length of the context suffix it continues."""
    best, match = Candidate([], []), 0
    for trie in tries:
        tokens, probs, size = trie.continuation(context, budget, length_per_match)
        found = Candidate(tokens, probs)
        if found.expected_accepted() > best.expected_accepted():
            best, match = found, size
    survive, keep = 1.0, 0
    for p in best.probs:
        survive *= p
        if survive < min_prob:
            break
        keep += 1
    return Candidate(best.tokens[:keep], best.probs[:keep]), match


class SuffixProposer(BaseProposer):
    """Deterministic drafts from a local trie (this request's prompt and output) and the global
    one of :class:`SuffixMemory` (earlier outputs); the candidate with more expected accepted
    tokens wins. Costs tens of microseconds per step, no second model."""

    def __init__(self, memory: SuffixMemory, options: SuffixOptions) -> None:
        self.memory, self.options = memory, options
        self.local = SuffixTrie(options.depth)
        self._prompt_len = 0
        self._seen = 0  # context tokens already in the local trie

    def begin(self, prompt: Sequence[int]) -> None:
        self.local.extend(prompt)
        self._seen = self._prompt_len = len(prompt)

    def end(self, context: Sequence[int]) -> None:
        """Move this request's output into the global trie."""
        self.memory.learn(context[self._prompt_len:])

    def candidate(self, context: Sequence[int], budget: int) -> tuple[Candidate, int]:
        """The best continuation of ``context`` (no tokens when nothing matches) and the length
        of the context suffix it continues."""
        self.local.extend(context[self._seen:])
        self._seen = len(context)
        return best_continuation((self.local, self.memory.global_trie), context, budget,
                                 self.options.length_per_match, self.options.min_prob)

    def propose(self, context, budget, sampling, rng) -> Draft:
        return Draft(tuple(self.candidate(context, budget)[0].tokens))


SUFFIX = ProposerSpec("suffix", "suffix drafting (SuffixDecoding): copies from this request and earlier outputs",
                      make=lambda resources, memory, options: SuffixProposer(memory, options),
                      memory=lambda resources, options: SuffixMemory(options), options=SuffixOptions)
