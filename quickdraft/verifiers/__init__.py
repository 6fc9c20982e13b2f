"""Acceptance rules: pure functions ``verify(draft, target_logits, sampling, rng) -> Acceptance``,
and the rules that choose one for a request, declared in one registry (``ACCEPTANCE``).

``target_logits`` is [n + 1, V]: row i is the target's prediction after the context plus the
first i draft tokens, so row i judges draft token i and row n gives the bonus token. For a tree
draft, row j is the prediction after tree node j (node 0 the pending token), see tree.py.

A rule is a frozen dataclass whose fields are its options (typed, with defaults), declaring its
``name``, a ``summary`` and whether it is ``lossless``; ``verifier(sampling, tree=...)`` hands
back the verify function for a request's sampling and draft shape, and ``lossless_for(sampling)``
says whether the output is the target's own under that sampling. The engine reads nothing else:
:func:`select` is the whole dispatch.

- ``exact`` (the default): greedy match at temperature 0, rejection sampling otherwise, their
  tree forms for token trees. Lossless: greedy output is the target's token for token, sampled
  output follows its distribution exactly.
- ``typical``: Medusa's typical acceptance (typical.py). LOSSY when sampling (the output is not
  the target's distribution); at temperature 0 it is exactly greedy decoding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, ClassVar, Protocol, Sequence

import numpy as np

from ..errors import InvalidParameterError
from ..records import Acceptance, Draft
from ..sampling import SamplingParams, constrain, penalize, token_logprobs
from .greedy import verify_greedy
from .rejection import verify_rejection
from .tree import verify_tree_greedy, verify_tree_sampling
from .typical import POSTERIOR_ALPHA, POSTERIOR_THRESHOLD, verify_typical

Verifier = Callable[[Draft, np.ndarray, SamplingParams, np.random.Generator], Acceptance]


class AcceptanceRule(Protocol):
    """What the registry declares of a rule (see the module docstring)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    lossless: ClassVar[bool]

    def verifier(self, sampling: SamplingParams, *, tree: bool) -> Verifier:
        """The pure verify function for this sampling and draft shape (a token tree or a chain)."""

    def lossless_for(self, sampling: SamplingParams) -> bool:
        """Whether the output is the target's own under ``sampling``."""


def _exact(sampling: SamplingParams, tree: bool) -> Verifier:
    if tree:
        return verify_tree_greedy if sampling.greedy else verify_tree_sampling
    return verify_greedy if sampling.greedy else verify_rejection


@dataclass(frozen=True)
class ExactAcceptance:
    """The target's own distribution: greedy match, or (multi-draft) rejection sampling."""

    name: ClassVar[str] = "exact"
    summary: ClassVar[str] = ("lossless (default): greedy match at temperature 0, else rejection sampling; "
                              "the output is the target's own")
    lossless: ClassVar[bool] = True

    def verifier(self, sampling: SamplingParams, *, tree: bool) -> Verifier:
        return _exact(sampling, tree)

    def lossless_for(self, sampling: SamplingParams) -> bool:
        return True


@dataclass(frozen=True)
class TypicalAcceptance:
    """Medusa's typical acceptance: accept a drafted token when the target gives it probability
    above min(posterior_threshold, posterior_alpha * exp(-entropy)). LOSSY when sampling."""

    posterior_threshold: float = POSTERIOR_THRESHOLD
    posterior_alpha: float = POSTERIOR_ALPHA
    name: ClassVar[str] = "typical"
    summary: ClassVar[str] = ("LOSSY when sampling (not the target's distribution): accept a drafted token when "
                              "p(token) > min(posterior_threshold, posterior_alpha * exp(-H(p))) (Medusa, vLLM); "
                              "exactly greedy at temperature 0")
    lossless: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for option in ("posterior_threshold", "posterior_alpha"):
            value = getattr(self, option)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1):
                raise InvalidParameterError(f"{option} must be a number in (0, 1], got {value!r}", param=option)

    def verifier(self, sampling: SamplingParams, *, tree: bool) -> Verifier:
        if sampling.greedy:  # p is a point mass: only the argmax passes, the argmax is emitted
            return _exact(sampling, tree)
        return partial(verify_typical, posterior_threshold=self.posterior_threshold,
                       posterior_alpha=self.posterior_alpha)

    def lossless_for(self, sampling: SamplingParams) -> bool:
        return sampling.greedy


ACCEPTANCE: dict[str, type] = {rule.name: rule for rule in (ExactAcceptance, TypicalAcceptance)}
EXACT = ExactAcceptance()


def rule_options(rule: AcceptanceRule) -> dict[str, Any]:
    """A rule's options and their values: ``{"posterior_threshold": 0.09, ...}``."""
    return dataclasses.asdict(rule)


def option_names() -> tuple[str, ...]:
    """Every option any registered rule declares."""
    return tuple(dict.fromkeys(f.name for rule in ACCEPTANCE.values() for f in dataclasses.fields(rule)))


def acceptance_rule(value: "str | AcceptanceRule" = "exact", **options: Any) -> AcceptanceRule:
    """A rule by name with its options (``acceptance_rule("typical", posterior_threshold=0.05)``),
    or a rule object as given. Options that are None are left at their defaults. An unknown name
    is an error naming ``acceptance``; an option the rule does not declare, or a bad value, an
    error naming that option."""
    options = {k: v for k, v in options.items() if v is not None}
    if not isinstance(value, str):
        if options:
            raise InvalidParameterError(f"options {', '.join(options)} go with an acceptance rule's name, not a "
                                        f"rule object", param=next(iter(options)))
        return value
    rule = ACCEPTANCE.get(value)
    if rule is None:
        raise InvalidParameterError(f"unknown acceptance rule {value!r}; choose one of: "
                                    f"{', '.join(ACCEPTANCE)} (exact is lossless, typical is not)",
                                    param="acceptance")
    declared = [f.name for f in dataclasses.fields(rule)]
    for name in options:
        if name not in declared:
            raise InvalidParameterError(f"acceptance {value!r} has no option {name!r} (its options: "
                                        f"{', '.join(declared) or 'none'})", param=name)
    return rule(**options)


def select(sampling: SamplingParams, *, tree: bool = False, rule: AcceptanceRule = EXACT) -> Verifier:
    """The verify function ``rule`` uses for these sampling params and draft shape (default: the
    lossless one: exact match when greedy, else rejection sampling, multi-draft for a tree)."""
    return rule.verifier(sampling, tree=tree)


def judge(draft: Draft, logits: np.ndarray, sampling: SamplingParams, rng: np.random.Generator, *,
          generated: Sequence[int] = (), constraint=None, logprobs: int | None = None,
          rule: AcceptanceRule = EXACT) -> Acceptance:
    """One generation's verification in a step. ``logits``: the target's rows for its forward,
    [len(draft) + 1 + len(draft.extra), V] (the extra rows, lookahead guesses that ride along, are
    never verified: their argmaxes become ``Acceptance.guesses``). The rows that judge get the
    request's penalties over ``generated`` (the tokens generated so far) and its grammar's mask
    (``constraint``: grammar.Constraint, or None), exactly as plain decoding's one row would,
    before ``rule``'s verify function (``select``; the lossless one unless the request opted out); ``logprobs``: also the emitted tokens'
    log-probabilities with this many alternatives (row ``kept_nodes()[i]`` chose token i)."""
    n = len(draft)
    guesses, logits = logits[n + 1:], logits[:n + 1]
    if sampling.penalized:
        logits = penalize(logits, generated, draft.row_prefixes(), sampling)
    if constraint is not None:
        logits = constrain(logits, constraint.allowed(draft.row_prefixes()))
    acceptance = select(sampling, tree=draft.parents is not None, rule=rule)(draft, logits, sampling, rng)
    if draft.extra_rows:
        acceptance = replace(acceptance, guesses=tuple(int(t) for t in guesses.argmax(axis=1)))
    if logprobs is not None:
        acceptance = replace(acceptance, logprobs=token_logprobs(
            logits[list(acceptance.kept_nodes())], acceptance.tokens, logprobs))
    return acceptance


__all__ = ["ACCEPTANCE", "EXACT", "AcceptanceRule", "ExactAcceptance", "TypicalAcceptance", "Verifier",
           "acceptance_rule", "judge", "option_names", "rule_options", "select", "verify_greedy", "verify_rejection",
           "verify_tree_greedy", "verify_tree_sampling", "verify_typical"]
