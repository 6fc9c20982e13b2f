"""Grammar-constrained decoding: what an output must match, and the tokens each verified row allows.

The grammar engine is llguidance (chosen by measurement: ``scripts/grammar_cost.py``, README).

- :class:`Grammar`: what a request asks for: a JSON schema, any JSON object, or a grammar in
  llguidance's Lark syntax, as llguidance's grammar text. ``param`` names the request field it
  came from, so a bad grammar is refused naming it.
- :class:`Vocabulary`: the target's tokens as llguidance reads them, built once per backend
  (under a second for Qwen2.5's 151,936 tokens); it checks a grammar and starts constraints.
- :class:`Constraint`: one generation's grammar state, after the tokens it emitted.

Lossless: row r of a verification forward predicts the token after the generated tokens and the
draft tokens before r (``Draft.row_prefixes()``). :meth:`Constraint.allowed` gives every row the
tokens the grammar allows after exactly those tokens, and ``sampling.constrain`` sets the others
to -inf before the verifier runs, as plain constrained decoding masks its one row per step. So
greedy speculative output is greedy constrained decoding's, and sampling follows the constrained
distribution. Where the grammar allows exactly one token, that token is certain:
:meth:`Constraint.forced` gives the run of such tokens, a free draft (auto's ``grammar`` source).

JSON is written with fixed separators (``", "`` and ``": "``) and no other whitespace
(``JSON_FORMAT``): a small model left free to choose whitespace can emit it forever, and fixed
separators force more tokens (``{"`` then ``name`` then ``":`` for a required first key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Protocol, Sequence

import numpy as np
from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper

from .errors import InvalidParameterError, QuickdraftError

JSON_FORMAT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Grammar:
    """A constraint on a request's output, as llguidance's grammar ``text``.

    kind: what it was made from (``json_schema``, ``json_object``, ``lark``). param: the request
    field it came from (errors about it name that field: ``response_format``, ``tools``, ...).
    Make one with :meth:`json_schema`, :meth:`json_object` or :meth:`lark`; the engine checks it
    against its vocabulary (``Engine.prepare(grammar=...)``).
    """

    kind: Literal["json_schema", "json_object", "lark"]
    text: str
    param: str = "grammar"

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | bool | str, *, param: str = "grammar") -> "Grammar":
        """Output that is one JSON value valid against ``schema`` (a dict, a bool or JSON text),
        written in ``JSON_FORMAT``. Example: ``Grammar.json_schema({"type": "object", "properties":
        {"name": {"type": "string"}}, "required": ["name"]})`` allows ``{"name": "Ada"}``."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as e:
                raise InvalidParameterError(f"the JSON schema is not valid JSON: {e}", param=param) from None
        if not isinstance(schema, (dict, bool)):
            raise InvalidParameterError(f"a JSON schema is an object (or true/false), got {type(schema).__name__}",
                                        param=param)
        try:
            text = LLMatcher.grammar_from_json_schema(schema, overrides=JSON_FORMAT)
        except (ValueError, TypeError) as e:
            raise InvalidParameterError(f"invalid JSON schema: {e}", param=param) from None
        return cls("json_schema", text, param)

    @classmethod
    def json_object(cls, *, param: str = "grammar") -> "Grammar":
        """Output that is one JSON object (OpenAI's ``response_format: {"type": "json_object"}``)."""
        return cls("json_object", cls.json_schema({"type": "object"}, param=param).text, param)

    @classmethod
    def lark(cls, source: str, *, param: str = "grammar") -> "Grammar":
        """A grammar in llguidance's Lark syntax (``%json {...}`` embeds a schema; ``<|im_end|>``
        names a control token). Example: ``Grammar.lark('start: "yes" | "no"')``."""
        if not isinstance(source, str) or not source.strip():
            raise InvalidParameterError("a Lark grammar is a non-empty string", param=param)
        return cls("lark", LLMatcher.grammar_from_lark(source), param)


class Tokens(Protocol):
    """The vocabulary side of a backend (backends/base.py), what :class:`Vocabulary` reads."""

    vocab_size: int

    def tokenize(self, text: str, *, special: bool) -> list[int]: ...
    def token_bytes(self, token: int) -> bytes: ...
    def token_text(self, token: int) -> bytes: ...
    def is_end_of_generation(self, token: int) -> bool: ...


class _Wrapped:
    """What llguidance's ``TokenizerWrapper`` reads: every token's bytes, the control tokens
    (which write no text: named ``0xFF <name>``, llguidance's convention, so a grammar can say
    ``<|im_end|>``), and a tokenizer of text (for the canonical tokens of forced text)."""

    def __init__(self, backend: Tokens, special: list[int], eos: list[int]) -> None:
        self.tokens = [backend.token_bytes(t) or b"\xff" + backend.token_text(t) for t in range(backend.vocab_size)]
        self.special_token_ids, self.eos_token_id, self.bos_token_id = special, eos[0], None
        self._backend, self._special = backend, set(special)

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):  # llguidance then hands us str
            raise TypeError("text, not bytes")
        return [t for t in self._backend.tokenize(text, special=False) if t not in self._special]


class Vocabulary:
    """The target's tokens as llguidance reads them (built once per backend: each token's bytes,
    its control tokens, its end-of-generation tokens, which a grammar allows where it may end)."""

    def __init__(self, backend: Tokens) -> None:
        self.size = backend.vocab_size
        special = [t for t in range(self.size) if not backend.token_bytes(t)]
        self.eos = [t for t in special if backend.is_end_of_generation(t)]
        if not self.eos:
            raise QuickdraftError("the model has no end-of-generation token: a grammar could never end")
        self.tokenizer = LLTokenizer(TokenizerWrapper(_Wrapped(backend, special, self.eos)), eos_token=self.eos)

    def check(self, grammar: Grammar) -> None:
        """Refuse a grammar llguidance cannot compile against this vocabulary, naming its field."""
        failed, messages = LLMatcher.validate_grammar_with_warnings(grammar.text, self.tokenizer)
        if failed:
            raise InvalidParameterError(f"invalid {grammar.kind.replace('_', ' ')}: {messages[0].strip()}",
                                        param=grammar.param)

    def constraint(self, grammar: Grammar) -> "Constraint":
        """A new generation's state of ``grammar`` (nothing emitted yet)."""
        matcher = LLMatcher(self.tokenizer, grammar.text, log_level=0)
        if matcher.is_error():
            raise InvalidParameterError(f"invalid {grammar.kind.replace('_', ' ')}: {matcher.get_error()}",
                                        param=grammar.param)
        return Constraint(matcher, self.size)


class Constraint:
    """One generation's grammar state, after the tokens it emitted (:meth:`advance`).

    :meth:`allowed` and :meth:`forced` look ahead through draft tokens and leave the state as it
    was; the masks they compute are kept until the next :meth:`advance` (a forced run's masks are
    the rows its verification needs)."""

    def __init__(self, matcher: LLMatcher, vocab_size: int) -> None:
        self._matcher, self.vocab_size = matcher, vocab_size
        self._masks: dict[tuple[int, ...], np.ndarray] = {}  # tokens after the state -> bool [V]

    @property
    def finished(self) -> bool:
        """Whether the grammar has reached its end (nothing but an end of generation may follow)."""
        return self._matcher.is_stopped()

    def advance(self, tokens: Sequence[int]) -> None:
        """Take emitted tokens; every one was allowed (verification masked it), else it is a bug."""
        if tokens:
            self._masks.clear()
            if not self._matcher.consume_tokens(list(tokens)):
                raise QuickdraftError(f"internal error: an emitted token broke the grammar "
                                      f"({self._matcher.get_error()})")

    def allowed(self, before: Sequence[Sequence[int]]) -> np.ndarray:
        """[R, V] bool: the tokens the grammar allows after the emitted tokens and then
        ``before[r]`` (a verification forward's ``Draft.row_prefixes()``). A row after a draft
        token the grammar refuses is never reached (the verifier rejects that token: its
        probability is 0), so it is left all True.

        Example: grammar ``"ab" | "ac"``, nothing emitted, before ``((), ("a",), ("x",))`` (as
        token ids): row 0 allows ``a``, row 1 ``b`` and ``c``, row 2 everything (unreachable).
        """
        out = np.ones((len(before), self.vocab_size), dtype=bool)
        path: list[int] = []  # tokens consumed beyond the state
        for row, prefix in enumerate(before):
            prefix = tuple(prefix)
            if prefix not in self._masks:
                common = next((i for i, (a, b) in enumerate(zip(path, prefix)) if a != b), min(len(path), len(prefix)))
                self._matcher.rollback(len(path) - common)
                del path[common:]
                rest = list(prefix[common:])
                taken = self._matcher.try_consume_tokens(rest) if rest else 0
                path += rest[:taken]
                if taken < len(rest):
                    continue
                self._masks[prefix] = self._mask()
            out[row] = self._masks[prefix]
        self._matcher.rollback(len(path))
        return out

    def forced(self, limit: int) -> tuple[int, ...]:
        """The tokens the grammar forces from here, at most ``limit``: each the only token it
        allows where it stands (an end of generation excluded). Example: a schema whose first
        required key is ``name``, nothing emitted: ``{"``, ``name``, ``":`` (Qwen2.5's tokens)."""
        run: list[int] = []
        for candidate in self._matcher.compute_ff_tokens()[:limit]:  # llguidance's forced text, tokenized
            mask = self._masks.get(tuple(run))
            if mask is None:
                mask = self._masks[tuple(run)] = self._mask()
            if not mask[candidate] or np.count_nonzero(mask) != 1 or self._matcher.try_consume_tokens([candidate]) != 1:
                break
            run.append(candidate)
        self._matcher.rollback(len(run))
        return tuple(run)

    def _mask(self) -> np.ndarray:
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[:self.vocab_size].view(bool)
