"""``ar``: plain autoregressive decoding, the baseline every speedup is measured against."""

from __future__ import annotations

from ..records import Draft
from .base import BaseProposer, ProposerSpec


class NoProposer(BaseProposer):
    """Never drafts, so every step is one target token."""

    def propose(self, context, budget, sampling, rng) -> Draft:
        return Draft()


AR = ProposerSpec("ar", "plain autoregressive decoding: the baseline", make=lambda resources, memory, options: NoProposer(),
                  default_budget=0)
