"""The text bridge between two vocabularies (bridge.py), on toy tokenizers: the boundaries."""

import random
from pathlib import Path

import pytest

from quickdraft.bridge import (PROBE_TEXTS, Bridge, char_start, extend_tokens, round_trip_failure, tokens_after,
                               utf8_complete, vocabulary_bridge)
from quickdraft.errors import VocabularyMismatchError


class ToyVocab:
    """A tokenizer that takes the longest piece at each position (single characters always exist),
    with the vocabulary side of a Backend: ``tokenize``, ``token_bytes``, ``token_text``."""

    def __init__(self, pieces, name="toy.gguf", bos=False, space_prefix=False):
        singles = sorted(set("".join(PROBE_TEXTS)) | set("abcdefghijklmnopqrstuvwxyz ,.!\n"))
        self.pieces = list(dict.fromkeys([*(["<s>"] if bos else []), *pieces, *singles]))
        self.ids = {p: i for i, p in enumerate(self.pieces)}
        self.bos = 0 if bos else None
        self.path, self.vocab_size, self.space_prefix = Path(name), len(self.pieces), space_prefix

    def tokenize(self, text, *, special=False):
        text = (" " + text) if self.space_prefix and not special and text else text
        out = [self.bos] if self.bos is not None and not special else []
        at = 0
        while at < len(text):
            piece = max((p for p in self.pieces[self.bos is not None:] if text.startswith(p, at)), key=len)
            out.append(self.ids[piece])
            at += len(piece)
        return out

    def token_bytes(self, token):
        return b"" if token == self.bos else self.pieces[token].encode()

    def token_text(self, token):
        return b"<s>" if token == self.bos else self.pieces[token].encode()

    def is_end_of_generation(self, token):
        return False


def toy_extend(vocab, tokens, ends, text, window):
    return extend_tokens(tokens, ends, text, lambda s: vocab.tokenize(s, special=True), vocab.token_bytes, window)


def test_utf8_complete_waits_for_the_rest_of_a_character():
    assert utf8_complete(b"ab") == 2
    assert utf8_complete("aé".encode()) == 3
    assert utf8_complete("aé".encode()[:2]) == 1
    assert utf8_complete("a🙂".encode()[:4]) == 1 and utf8_complete("a🙂".encode()) == 5
    assert utf8_complete(b"") == 0 and utf8_complete(b"\x80\x80") == 2  # not UTF-8: nothing to wait for
    assert not char_start("é".encode(), 1) and char_start(b"ab", 1) and char_start(b"ab", 2)


def test_extend_tokens_retokenizes_the_boundary_window():
    """The docstring's example: "a" + "a", then "b" arrives and the last "a" becomes "ab"."""
    vocab = ToyVocab(["ab"])
    a, ab = vocab.ids["a"], vocab.ids["ab"]
    assert toy_extend(vocab, [a, a], [1, 2], b"aab", window=1) == ([a, ab], [1, 3])
    assert toy_extend(vocab, [a, a], [1, 2], b"aab", window=0) == ([a, a, vocab.ids["b"]], [1, 2, 3])  # no window


def test_extend_tokens_holds_back_an_unfinished_character():
    vocab = ToyVocab([])
    text = "ab" + "é"
    tokens, ends = toy_extend(vocab, [], [], text.encode()[:-1], window=2)
    assert ends == [1, 2]  # the é's first byte waits
    tokens, ends = toy_extend(vocab, tokens, ends, text.encode(), window=2)
    assert ends == [1, 2, 4] and vocab.pieces[tokens[-1]] == "é"


def test_extend_tokens_with_unknown_ends_moves_back_to_a_known_one():
    """Pieces that do not add up to their text (a tokenizer that drops a character) leave the ends
    inside that stretch unknown; the next window starts at the last known end before them."""
    vocab = ToyVocab([])
    drop_x = lambda s: vocab.tokenize(s.replace("x", ""), special=True)  # noqa: E731
    tokens, ends = extend_tokens([], [], b"axb", drop_x, vocab.token_bytes, window=1)
    assert ends == [None, 3]
    tokens, ends = extend_tokens(tokens, ends, b"axbc", drop_x, vocab.token_bytes, window=1)
    assert [vocab.pieces[t] for t in tokens] == ["a", "b", "c"] and ends == [None, None, 4]


@pytest.mark.parametrize("seed", range(20))
def test_incremental_tokens_always_cover_the_text_and_match_a_fresh_tokenization(seed):
    """Text arriving in random pieces (split inside characters too): the tokens always spell the
    complete part of the text, and with a window as long as the longest piece they are the
    tokenization of the whole text at once."""
    rng = random.Random(seed)
    vocab = ToyVocab(["ab", "abc", "ca", " the", "th", "é", "e "])
    text = "".join(rng.choice(["a", "b", "c", " the", "é", "e", " ", "ab", "ca"]) for _ in range(40)).encode()
    tokens, ends, at = [], [], 0
    while at < len(text):
        at = min(len(text), at + rng.randint(1, 5))
        tokens, ends = toy_extend(vocab, tokens, ends, text[:at], window=4)
        assert b"".join(vocab.token_bytes(t) for t in tokens) == text[:utf8_complete(text[:at])]
    assert tokens == vocab.tokenize(text.decode(), special=True)


def test_tokens_after_a_tail_or_none_when_the_tail_changed():
    assert tokens_after([7, 8], [7, 8, 9, 4]) == [9, 4]
    assert tokens_after([7, 8], [7, 5, 4]) is None
    assert tokens_after([], [3]) == [3]


def bridge(target_pieces, draft_pieces, **target_options):
    return Bridge(ToyVocab(target_pieces, "target.gguf", **target_options), ToyVocab(draft_pieces, "draft.gguf"),
                  "toy vocabularies")


def test_a_drafts_text_becomes_target_tokens_after_the_contexts_tail():
    b = bridge(["hello", " world", "wor"], ["hel", "lo w"])
    target = b.target
    context = target.tokenize("say hel", special=True)
    # the draft's "lo world!" after the context: the target reads "hel" + "lo" as it tokenized "hel", so the tail
    # ("say hel"'s last tokens) changes: the draft text is tokenized alone
    ids = b.target_tokens(context, b"lo world!")
    assert "".join(target.pieces[t] for t in ids) == "lo world"  # the last token ("!") may still change: left out
    assert b.target_tokens(context, b"lo world!", complete=True)[-1] == target.ids["!"]
    # after a space the tail stays, and the text goes on from it
    context = target.tokenize("say ", special=True)
    ids = b.target_tokens(context, b"hello world.")
    assert [target.pieces[t] for t in ids] == ["hello", " world"]


def test_an_unfinished_character_of_a_draft_is_left_out():
    b = bridge([], [])
    ids = b.target_tokens(b.target.tokenize("a", special=True), "bcé".encode()[:-1], complete=True)
    assert [b.target.pieces[t] for t in ids] == ["b"]  # "c" may still change: more text follows it


def test_a_drafter_reads_the_context_incrementally_as_a_fresh_read_would():
    b = bridge(["the", " cat"], ["th", "e c", "at"], bos=True)
    text = "the cat sat on the mat, the cat ate."
    target_tokens = b.target.tokenize(text, special=False)
    assert target_tokens[0] == 0  # the target's start token: no text for the draft
    drafter = b.drafter(None)
    for n in range(1, len(target_tokens) + 1):
        drafter.read(target_tokens[:n])
    assert drafter.tokens == b.draft_tokens(target_tokens) == b.draft.tokenize(text, special=True)
    drafter.read(target_tokens[:3])  # the context changed behind what was read: read again from its start
    assert drafter.tokens == b.draft_tokens(target_tokens[:3])


def test_a_tokenizer_that_does_not_give_text_back_is_refused_naming_draft():
    assert round_trip_failure(ToyVocab([])) is None
    assert round_trip_failure(ToyVocab([], space_prefix=True))[1].startswith(" ")
    for target, draft in ((ToyVocab([], space_prefix=True), ToyVocab(["ab"])),
                          (ToyVocab([]), ToyVocab(["ab"], space_prefix=True))):
        with pytest.raises(VocabularyMismatchError, match="does not give back the text it tokenized") as error:
            vocabulary_bridge(target, draft)
        assert error.value.param == "draft"


def test_the_same_vocabulary_needs_no_bridge():
    assert vocabulary_bridge(ToyVocab(["ab"]), ToyVocab(["ab"])) is None
    assert vocabulary_bridge(ToyVocab(["ab"]), ToyVocab(["ba"])).difference.startswith("token ")
