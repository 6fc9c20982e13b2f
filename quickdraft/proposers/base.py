"""The Proposer protocol and the registry that maps method names to proposers."""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from ..errors import QuickdraftError
from ..sampling import SamplingParams
from ..types import Acceptance, Draft


class Proposer(Protocol):
    """Where drafts come from. Stateful proposers (caches, tables) reset in ``begin``."""

    name: str

    def begin(self, prompt: Sequence[int]) -> None:
        """A new generation starts from ``prompt`` (token ids)."""

    def propose(self, context: Sequence[int], budget: int, sampling: SamplingParams,
                rng: np.random.Generator) -> Draft:
        """Up to ``budget`` tokens likely to follow ``context`` (the prompt plus everything emitted).
        Contract: ``len(draft) <= budget``; an empty draft is allowed (the step is then a plain one)."""

    def observe(self, acceptance: Acceptance) -> None:
        """How the last draft fared (after verification)."""


# name -> factory(**options) -> Proposer. Options the engine may pass: target (Backend),
# draft (model path), plus any method-specific keyword; each factory takes what it needs.
PROPOSERS: dict[str, Callable[..., Proposer]] = {}


def register(name: str):
    """Class decorator: make a proposer available as ``--method name``."""

    def add(factory):
        PROPOSERS[name] = factory
        factory.name = name
        return factory

    return add


def uses_draft_model(method: str) -> bool:
    """Whether ``method``'s proposer needs a draft model (its class sets ``needs_draft_model``)."""
    return getattr(PROPOSERS.get(method), "needs_draft_model", False)


def tree_variant(method: str) -> str:
    """The method that drafts token trees the way ``method`` drafts chains: ``draft`` ->
    ``draft-tree`` (a tree method maps to itself)."""
    if method.endswith("-tree") and method in PROPOSERS:
        return method
    if f"{method}-tree" not in PROPOSERS:
        trees = sorted(m for m in PROPOSERS if m.endswith("-tree"))
        raise QuickdraftError(f"method {method!r} has no tree variant; tree methods: {', '.join(trees)}")
    return f"{method}-tree"


def create(method: str, **options) -> Proposer:
    """Build the proposer registered under ``method``."""
    try:
        factory = PROPOSERS[method]
    except KeyError:
        raise QuickdraftError(f"unknown method {method!r}; choose one of: {', '.join(sorted(PROPOSERS))}") from None
    return factory(**options)


@register("ar")
class NoProposer:
    """Plain autoregressive decoding: never drafts, so every step is one target token."""

    def __init__(self, **_: object) -> None:
        pass

    def begin(self, prompt: Sequence[int]) -> None:
        pass

    def propose(self, context, budget, sampling, rng) -> Draft:
        return Draft()

    def observe(self, acceptance: Acceptance) -> None:
        pass
