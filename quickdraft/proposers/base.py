"""The Proposer protocol, and the declaration every decoding method registers (``ProposerSpec``).

A method is declared once, with everything the engine needs to know about it: whether it uses a
draft model, which backend capabilities it needs, whether it decides its own draft lengths, its
default budget, its tree variant, its typed options and what it keeps across requests. The
engine reads the declaration; it never probes a proposer for attributes.

A proposer object serves one request (the spec's ``make`` builds it, cheaply, per request); what
a method learns across requests (a suffix store of earlier outputs, learned acceptance and
costs) lives in its *memory*, made once per engine by the spec's ``memory`` and handed to every
proposer of that method. A fresh engine memory is a new user's engine.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Protocol, Sequence

import numpy as np

from ..backends.base import Backend
from ..bridge import Bridge
from ..control import ForwardCost, Offer, Prior
from ..errors import InvalidParameterError, UnknownMethodError
from ..sampling import SamplingParams
from ..records import Acceptance, Draft, StepTimes


class Proposer(Protocol):
    """Where one request's drafts come from."""

    def begin(self, prompt: Sequence[int]) -> None:
        """The request starts from ``prompt`` (token ids); the target holds ``prompt[:-1]``."""

    def propose(self, context: Sequence[int], budget: int, sampling: SamplingParams,
                rng: np.random.Generator) -> Draft:
        """Up to ``budget`` tokens likely to follow ``context`` (the prompt plus everything emitted).
        Contract: ``len(draft) <= budget``; an empty draft is allowed (the step is then a plain one)."""

    def observe(self, acceptance: Acceptance, times: StepTimes) -> None:
        """How the last draft fared, and what its step cost."""

    def end(self, context: Sequence[int]) -> None:
        """The request is over (finished, stopped or cancelled); ``context`` is the prompt and
        every emitted token. The place to learn from it for later requests."""


class SelfBudgeting(Proposer, Protocol):
    """A method that decides its own draft lengths (``ProposerSpec.decides_budget``): instead of
    ``propose`` under a controller's budget, it offers each step what its sources could draft and
    drafts what the engine allocated."""

    def offers(self, context: Sequence[int], cap: int, remaining: int | None = None) -> list[Offer]:
        """Per source, what the next step could draft (at most ``cap`` tokens; ``remaining``: the
        tokens the request may still emit); none: a plain step."""

    def draft(self, context: Sequence[int], offer: Offer | None, k: int, sampling: SamplingParams,
              rng: np.random.Generator) -> Draft:
        """``k`` tokens from ``offer``'s source (None and 0: a plain step)."""

    def why(self) -> dict[str, str]:
        """Per source, one line on what it did in this request or why it did not draft (stats)."""

    def ride(self, context: Sequence[int], draft: Draft, rows: int) -> Draft:
        """``draft`` with at most ``rows`` extra rows riding in its forward (``Draft.extra``), rows
        the engine found free on this machine's cost curve; or ``draft`` unchanged."""


class BaseProposer:
    """No-op ``begin``, ``observe`` and ``end``: subclass and override what a method needs."""

    def begin(self, prompt: Sequence[int]) -> None:
        pass

    def observe(self, acceptance: Acceptance, times: StepTimes) -> None:
        pass

    def end(self, context: Sequence[int]) -> None:
        pass


@dataclass(frozen=True)
class Resources:
    """What the engine gives a method: the target, the draft model (when the method uses one and
    the engine has one: a sequence of the draft model's cache for this request, with the
    single-sequence protocol of a backend), what this machine was measured to cost
    (control.Prior), the engine's learned forward cost of the target by size (shared), the
    request's grammar state (grammar.Constraint, advanced by the engine; None without a grammar),
    and when the draft model's vocabulary is not the target's, how text crosses between them
    (``bridge``, bridge.Bridge; None: the same vocabulary). ``alone``: the request runs by
    itself, so nothing else uses the models between its steps (not in a batch)."""

    target: Backend
    draft: Any = None
    prior: Prior = field(default_factory=Prior)
    cost: ForwardCost = field(default_factory=ForwardCost)
    constraint: Any = None
    bridge: Bridge | None = None
    alone: bool = False


@dataclass(frozen=True)
class NoOptions:
    """A method without options."""


@dataclass(frozen=True)
class ProposerSpec:
    """The declaration of one decoding method.

    make(resources, memory, options) -> Proposer: one request's proposer.
    memory(resources, options) -> object: what the method keeps across requests (None: nothing).
    options: a frozen dataclass of the method's typed options (with defaults); unknown names are
        refused (see :func:`parse_options`).
    draft_model: "required" (no draft model, no method), "optional" (used when the engine has
        one) or "none".
    draft_vocabulary: what a draft model must share with the target: "same" (the vocabulary: it
        drafts token ids) or "any" (a draft model of another vocabulary drafts text, which the
        target's tokenizer turns into its tokens: bridge.py).
    requires: backend capabilities the method needs (see backends/base.py).
    decides_budget: the method chooses its own draft lengths; the engine's budget is its cap.
    default_budget: the draft cap per step when the caller gives none.
    tree_variant: the method that drafts token trees the way this one drafts chains.
    alone: the method's requests run one at a time, never in a batch with others (its draft model
        works on a thread of its own between steps, and it sets the backends' threads).
    """

    name: str
    summary: str
    make: Callable[[Resources, Any, Any], Proposer]
    options: type = NoOptions
    memory: Callable[[Resources, Any], Any] | None = None
    draft_model: Literal["none", "optional", "required"] = "none"
    draft_vocabulary: Literal["same", "any"] = "same"
    requires: frozenset[str] = frozenset()
    decides_budget: bool = False
    default_budget: int = 4
    tree_variant: str | None = None
    alone: bool = False

    @property
    def uses_draft_model(self) -> bool:
        return self.draft_model != "none"

    def describe_draft(self) -> str:
        """What the method needs of a draft model, for ``quickdraft methods``: "-", or e.g.
        "required, any vocabulary"."""
        if not self.uses_draft_model:
            return "-"
        vocabulary = "any vocabulary" if self.draft_vocabulary == "any" else "the target's vocabulary"
        return f"{self.draft_model}, {vocabulary}"

    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.options))


class Registry:
    """The methods by name, in registration order. Built explicitly from a list of specs
    (proposers/__init__.py), so a method is either listed there or absent, never half-registered."""

    def __init__(self, specs: Iterable[ProposerSpec] = ()) -> None:
        self._specs: dict[str, ProposerSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: ProposerSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"method {spec.name!r} is registered twice")
        self._specs[spec.name] = spec

    def remove(self, name: str) -> None:
        del self._specs[name]

    def __getitem__(self, name: str) -> ProposerSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownMethodError(f"unknown method {name!r}; choose one of: {', '.join(self._specs)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self):
        return iter(self._specs.values())

    def names(self) -> list[str]:
        return list(self._specs)

    def check_options(self, options: Iterable[str]) -> None:
        """Every option name is declared by some method (else an error naming it)."""
        declared = {name for spec in self for name in spec.option_names()}
        unknown = sorted(set(options) - declared)
        if unknown:
            raise InvalidParameterError(f"no method has an option {unknown[0]!r}; options: {', '.join(sorted(declared))}",
                                        param=unknown[0])

    def tree_variant(self, method: str) -> str:
        """The method that drafts token trees the way ``method`` drafts chains: ``draft`` ->
        ``draft-tree`` (a tree method maps to itself)."""
        if any(spec.tree_variant == method for spec in self):
            return method
        variant = self[method].tree_variant
        if variant is None:
            trees = sorted({spec.tree_variant for spec in self if spec.tree_variant})
            raise UnknownMethodError(f"method {method!r} has no tree variant; tree methods: {', '.join(trees)}")
        return variant


def parse_options(spec: ProposerSpec, values: dict[str, Any]) -> Any:
    """``spec.options(**values)``, refusing names it does not declare and values of the wrong
    type (ints are taken where floats are declared; lists where tuples are)."""
    hints = typing.get_type_hints(spec.options)
    for name, value in values.items():
        if name not in hints:
            known = ", ".join(spec.option_names()) or "none"
            raise InvalidParameterError(f"method {spec.name!r} has no option {name!r} (its options: {known})",
                                        param=name)
        if not _fits(value, hints[name]):
            raise InvalidParameterError(f"option {name!r} of method {spec.name!r} must be {_type_name(hints[name])}, "
                                        f"got {value!r}", param=name)
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return spec.options(**converted)


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    return isinstance(value, hint if origin is None else origin)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
