"""Trained draft heads on the target's hidden states (torch backend): ``medusa`` and ``eagle``.

The implementations live in quickdraft.heads (torch); these factories import them only when a
method is used, so ``import quickdraft`` stays free of torch.
"""

from __future__ import annotations

from .base import register


@register("medusa")
def medusa(target, heads: str | None = None, **options):
    """Medusa heads (arXiv 2401.10774) from ``heads`` (a directory made by ``quickdraft train``)."""
    from ..heads.proposers import MedusaProposer

    return MedusaProposer(target, heads, **options)


@register("eagle")
def eagle(target, heads: str | None = None, **options):
    """An EAGLE head (arXiv 2401.15077) from ``heads`` (a directory made by ``quickdraft train``)."""
    from ..heads.proposers import EagleProposer

    return EagleProposer(target, heads, **options)


medusa.requires = eagle.requires = "torch"  # these need the torch backend's hidden states
