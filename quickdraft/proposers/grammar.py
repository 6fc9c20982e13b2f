"""The grammar as a draft source (jump-forward decoding, as SGLang calls it).

Where a request's grammar allows exactly one token, plain constrained decoding can only emit that
token: its masked distribution is a point mass. The run of such tokens from the current state
(``grammar.Constraint.forced``: ``{"``, ``name``, ``":`` at the start of an object whose first
required key is ``name``) is therefore a draft accepted whole, greedy or sampled, for what it
costs to compute a few masks (tens of microseconds each on a 152k vocabulary; their masks are the
very rows the verification needs, kept). ``auto`` offers it beside its other sources as
``grammar``, acceptance 1 per token and no drafting cost; the cost model then weighs it against
the others like any offer.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..control import Offer
from ..records import Draft

GRAMMAR = "grammar"  # the source's name, in offers, drafts and stats["draft_sources"]


@dataclass(frozen=True)
class JumpForwardOptions:
    """``jump_forward``: draft the tokens a request's grammar forces (default); off, the grammar
    still constrains the output, only its forced tokens are not drafted (to measure what they give)."""

    jump_forward: bool = True


class ForcedDrafts:
    """One request's jump-forward drafts: :meth:`offers` computes the forced run (at most ``cap``
    tokens) from the grammar state the engine keeps up to date; :meth:`draft` hands out its first
    k tokens. ``constraint``: the request's ``grammar.Constraint``."""

    def __init__(self, constraint) -> None:
        self.constraint = constraint
        self._run: tuple[int, ...] = ()

    def offers(self, cap: int) -> list[Offer]:
        """The forced run as an offer certain of every token, or none when the grammar leaves a
        choice at the next position."""
        self._run = self.constraint.forced(cap)
        return [Offer(GRAMMAR, (1.0,) * len(self._run))] if self._run else []

    def draft(self, k: int) -> Draft:
        return Draft(self._run[:k], source=GRAMMAR)
