"""A draft model of another vocabulary: the target and the draft model meet in text.

The draft model reads the target's context as text and drafts text; the target's tokenizer turns
that text into the draft it verifies (string-level drafting, as transformers' Universal Assisted
Generation and the SLEM algorithm of Timor et al. 2025, arXiv 2502.05202, do). Verification is
the usual one, so the output stays the target's: greedy output token for token, and sampled
output exactly p, because a bridged draft is deterministic (the draft model's greedy text): the
rejection verifier takes it as a point mass q, accepts token x with probability p(x) and
otherwise draws from p without x, which is exact for any draft chosen without the verifier's
random numbers (docs/design.md, "A draft of another vocabulary").

Two boundaries need care, because a tokenizer reads the end of a text differently once more text
follows it ("hel" then "hello"):

- target -> draft (:meth:`BridgedDrafter.read`): the draft model's tokens follow the context
  incrementally. New target tokens add their text; the draft's last ``WINDOW`` tokens and the new
  text are tokenized again (:func:`extend_tokens`), and ``prefill`` rolls the draft model's cache
  back to what it shares with the result. The bytes of a character not yet complete wait.
- draft -> target (:meth:`Bridge.target_tokens`): the draft's text is tokenized after the text of
  the context's last ``TAIL`` tokens and the tokens after those are the draft
  (:func:`tokens_after`; when the tail itself tokenizes differently, the draft's text alone), less
  the last one, which more text could still change (unless the draft model ended its text).

What the draft model reads: the target's context as text, control tokens written as their text
(a chat template's ``<|im_start|>``), after the target's own start tokens (its BOS), tokenized by
the draft's tokenizer with the draft's control tokens parsed, after its own start tokens. A draft
model of the same chat format reads the turns as its own; another one (a base model, another
template) reads the markup as plain text.

Both tokenizers must give back the text they tokenize (:data:`PROBE_TEXTS`), or text could not
cross between them: :class:`Bridge` refuses such a pair with an error naming ``draft``.
"""

from __future__ import annotations

import math
from itertools import accumulate
from typing import Callable, Sequence

import numpy as np

from .backends.base import Backend, common_prefix, vocabulary_difference
from .errors import VocabularyMismatchError
from .sampling import SamplingParams, draft_chain

WINDOW = 4  # the draft's last tokens tokenized again with the context's new text
TAIL = 4  # the context's last target tokens a draft's text is tokenized after
MAX_RATIO = 4.0  # draft tokens per target token assumed at most when choosing how many to draft
GREEDY = SamplingParams()

# Texts both tokenizers of a bridged pair must give back unchanged: code, punctuation, runs of
# spaces and newlines, accents, CJK and an emoji (multi-byte characters split across tokens).
PROBE_TEXTS = (
    "def merge(a, b):\n    return sorted(a + b)  # O(n log n)\n\n",
    "Hello, world! It's 3.14, isn't it? \"Quoted\" (brackets) [1, 2] {'key': value}\n",
    "  two leading spaces,\ta tab,   three spaces\n\n\nthree newlines ",
    "café naïve Zürich — 東京の天気 🙂",
)


def utf8_complete(data: bytes) -> int:
    """The length of the longest start of ``data`` that does not end inside a UTF-8 character
    (the bytes after it wait for the rest of their character).

    Example: utf8_complete(b"ab") == 2; utf8_complete("aé".encode()) == 3;
    utf8_complete("aé".encode()[:2]) == 1 (b"a\\xc3": the "é" is not complete).
    """
    n = len(data)
    for back in range(1, min(4, n) + 1):
        byte = data[n - back]
        if byte < 0x80:
            return n
        if byte >= 0xC0:  # the lead byte of the last character
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return n if back >= need else n - back
    return n  # continuation bytes only: not UTF-8, nothing to wait for


def char_start(data: bytes, at: int) -> bool:
    """Whether byte ``at`` of ``data`` starts a character (or is its end).

    Example: char_start("é".encode(), 1) is False; char_start(b"ab", 1) is True.
    """
    return at >= len(data) or data[at] & 0xC0 != 0x80


def extend_tokens(tokens: Sequence[int], ends: Sequence[int | None], text: bytes,
                  tokenize: Callable[[str], list[int]], piece: Callable[[int], bytes],
                  window: int = WINDOW) -> tuple[list[int], list[int | None]]:
    """A tokenization of ``text`` that has grown since ``tokens`` covered its start: the last
    ``window`` tokens and the new text are tokenized again, from the end of the token before
    them (moved back to an end that is known and starts a character), up to the last complete
    character. ``ends[i]``: the byte of ``text`` where token i ends (None: unknown, when the
    pieces of a tokenized stretch do not add up to its text). ``tokenize(str) -> ids``,
    ``piece(id) -> bytes``. Returns the tokens and their ends.

    Example, with a tokenizer that takes the longest of "a" (1), "b" (2), "ab" (3):
    extend_tokens([1, 1], [1, 2], b"aab", ...) == ([1, 3], [1, 3]): with window 1, the last "a"
    and the new "b" are tokenized again, as "ab".
    """
    keep = max(0, len(tokens) - window)
    while keep and (ends[keep - 1] is None or not char_start(text, ends[keep - 1])):
        keep -= 1
    start = ends[keep - 1] if keep else 0
    stop = utf8_complete(text)
    new = tokenize(text[start:stop].decode("utf-8", errors="replace")) if stop > start else []
    lengths = [len(piece(t)) for t in new]
    if sum(lengths) == stop - start:
        new_ends: list[int | None] = [start + n for n in accumulate(lengths)]
    else:
        new_ends = [None] * (len(new) - 1) + [stop]
    return [*tokens[:keep], *new], [*ends[:keep], *new_ends]


def tokens_after(tail: Sequence[int], ids: Sequence[int]) -> list[int] | None:
    """The tokens of ``ids`` after ``tail``, when ``ids`` starts with it; None when the tail's own
    tokens changed (the text after it merged into it).

    Example: tokens_after([7, 8], [7, 8, 9, 4]) == [9, 4]; tokens_after([7, 8], [7, 5, 4]) is None.
    """
    return list(ids[len(tail):]) if list(ids[:len(tail)]) == list(tail) else None


def round_trip_failure(model: Backend, texts: Sequence[str] = PROBE_TEXTS) -> tuple[str, str] | None:
    """The first of ``texts`` that ``model``'s tokenizer does not give back unchanged (as plain
    text, its start tokens included), with what came back; None when every one comes back."""
    for text in texts:
        back = b"".join(model.token_bytes(t) for t in model.tokenize(text, special=False))
        if back != text.encode():
            return text, back.decode("utf-8", errors="replace")
    return None


def vocabulary_bridge(target: Backend, draft: Backend) -> "Bridge | None":
    """None when ``draft`` has the target's vocabulary (it drafts token ids directly), else the
    :class:`Bridge` between the two (refused, naming ``draft``, when text cannot cross)."""
    difference = vocabulary_difference(target, draft)
    return None if difference is None else Bridge(target, draft, difference)


def written(model: Backend, tokens: Sequence[int]) -> bytes:
    """The text of ``tokens``, control tokens written as their text (``<|im_start|>``)."""
    return b"".join(model.token_bytes(t) or model.token_text(t) for t in tokens)


class Bridge:
    """How text crosses between a target and a draft model of another vocabulary (one per
    engine; :meth:`drafter` makes a request's). ``difference``: how the vocabularies differ."""

    def __init__(self, target: Backend, draft: Backend, difference: str) -> None:
        for role, model in (("target", target), ("draft", draft)):
            failure = round_trip_failure(model)
            if failure is not None:
                raise VocabularyMismatchError(
                    f"the draft {draft.path.name} has another vocabulary than the target {target.path.name} "
                    f"({difference}), and the {role} {model.path.name}'s tokenizer does not give back the text it "
                    f"tokenized ({failure[0]!r} comes back as {failure[1]!r}), so drafts cannot cross between "
                    f"the two as text: choose a draft model whose tokenizer gives text back, or one of the "
                    f"target's vocabulary", param="draft")
        self.target, self.draft, self.difference = target, draft, difference
        self.target_start = target.tokenize("", special=False)  # what its tokenizer puts before text (a BOS)
        self.draft_start = draft.tokenize("", special=False)

    def drafter(self, model, min_confidence: float = 0.0) -> "BridgedDrafter":
        """A request's drafter on ``model``, the draft model's sequence for it."""
        return BridgedDrafter(self, model, min_confidence)

    def draft_tokens(self, tokens: Sequence[int]) -> list[int]:
        """The draft model's tokens for the target's ``tokens`` (what :meth:`BridgedDrafter.read`
        makes of them at once)."""
        return BridgedDrafter(self, None).read(tokens)

    def target_tokens(self, context: Sequence[int], text: bytes, complete: bool = False) -> list[int]:
        """The target's tokens of draft ``text`` following ``context`` (target tokens): tokenized
        after the context's tail (:meth:`tail`) and taken after it, or tokenized alone when the tail
        tokenizes otherwise; less the last token unless ``complete`` (the draft model ended its
        text: nothing follows that could change it). An unfinished last character is left out."""
        cut = utf8_complete(text)
        complete, text = complete and cut == len(text), text[:cut]
        if not text:
            return []
        tail = self.tail(context)
        ids = tokens_after(tail, self._target_ids(b"".join(self.target.token_bytes(t) for t in tail) + text))
        if ids is None:
            ids = self._target_ids(text)
        return ids if complete else ids[:-1]

    def tail(self, context: Sequence[int]) -> list[int]:
        """The context's last ``TAIL`` tokens after its last control token (whose written text is
        not what the tokenizer makes of that text as plain text), from a character's start."""
        tail = list(context[-TAIL:])
        plain = [self.target.token_bytes(t) for t in tail]
        after = max((i + 1 for i, b in enumerate(plain) if not b), default=0)
        tail, plain = tail[after:], plain[after:]
        while plain and not char_start(plain[0], 0):
            tail, plain = tail[1:], plain[1:]
        return tail

    def _target_ids(self, text: bytes) -> list[int]:
        """The target's tokens of plain ``text``, without its start tokens."""
        ids = self.target.tokenize(text.decode("utf-8", errors="replace"), special=False)
        start = self.target_start
        return ids[len(start):] if start and ids[:len(start)] == start else ids


class BridgedDrafter:
    """One request's drafts across tokenizers: the draft model's tokens of the target's context,
    kept in step with it (:meth:`read`), and drafts of target tokens (:meth:`propose`). ``model``:
    the draft model's sequence for the request (None: reading only). ``min_confidence``: stop
    drafting where the draft model's top probability is below it."""

    def __init__(self, bridge: Bridge, model, min_confidence: float = 0.0) -> None:
        self.bridge, self.model, self.min_confidence = bridge, model, min_confidence
        self._reset()

    def _reset(self) -> None:
        self.context: list[int] = []  # the target tokens read
        self.skip = 0  # how many of them are the target's start tokens (no text)
        self.text = bytearray()  # their written text
        self.body: list[int] = []  # the draft's tokens of text[:ends[-1]], after its start tokens
        self.ends: list[int | None] = []

    @property
    def tokens(self) -> list[int]:
        """The draft model's tokens of the context read so far."""
        return [*self.bridge.draft_start, *self.body]

    def read(self, context: Sequence[int]) -> list[int]:
        """Follow the target's ``context`` (it grew, or changed: then read again from the start)
        and return the draft model's tokens of it."""
        if common_prefix(self.context, context) < len(self.context):
            self._reset()
        if not self.context:
            start = self.bridge.target_start
            self.skip = len(start) if start and list(context[:len(start)]) == start else 0
        new = context[max(len(self.context), self.skip):]
        if new or not self.context:
            self.text += written(self.bridge.target, new)
            draft = self.bridge.draft
            self.body, self.ends = extend_tokens(self.body, self.ends, bytes(self.text),
                                                 lambda text: draft.tokenize(text, special=True),
                                                 lambda token: written(draft, (token,)))
        self.context = list(context)
        return self.tokens

    def ratio(self) -> float:
        """The draft's tokens per target token on the context so far (1 before any)."""
        read = len(self.context) - self.skip
        return min(MAX_RATIO, len(self.body) / read) if read and self.body else 1.0

    def behind(self, context: Sequence[int]) -> int:
        """How far the draft model is behind ``context``, in target tokens: those not read yet and
        the draft tokens read but not in its cache."""
        unread = len(context) - common_prefix(self.context, context)
        stale = len(self.tokens) - common_prefix(self.model.tokens, self.tokens)
        return unread + math.ceil(stale / self.ratio())

    def begin(self, prompt: Sequence[int]) -> None:
        """Read the prompt and evaluate it but its last token (a draft then evaluates that one)."""
        self.model.prefill(self.read(prompt)[:-1])

    def propose(self, context: Sequence[int], budget: int, rng: np.random.Generator) -> tuple[int, ...]:
        """Up to ``budget`` target tokens drafted after ``context``: the draft model's greedy
        text (as many of its tokens as the budget takes at its ratio, and one more for the token
        left out at the end), to the first end of generation, in the target's tokens."""
        tokens = self.read(context)
        covered = self.ends[-1] if self.ends else 0
        steps = math.ceil(budget * self.ratio()) + 1
        if budget <= 0 or not tokens or covered < len(self.text) or len(tokens) + steps > self.model.n_ctx:
            return ()  # nothing to draft from, a character not complete yet, or no room in the draft's context
        logits = self.model.prefill(tokens, last_logits=True)  # catch up and predict in one forward
        chain = draft_chain(logits, lambda token: self.model.forward([token])[0], steps, GREEDY, rng,
                            self.min_confidence).tokens
        draft = self.bridge.draft
        end = next((i for i, t in enumerate(chain) if draft.is_end_of_generation(t)), None)
        text = b"".join(draft.token_bytes(t) for t in chain[:end])
        return tuple(self.bridge.target_tokens(context, text, complete=end is not None)[:budget])
