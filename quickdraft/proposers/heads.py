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


@register("medusa-tree")
def medusa_tree(target, heads: str | None = None, **options):
    """Medusa drafting a tree: the Cartesian product of the heads' top-k, best nodes kept."""
    from ..heads.proposers import MedusaTreeProposer

    return MedusaTreeProposer(target, heads, **options)


@register("eagle-tree")
def eagle_tree(target, heads: str | None = None, **options):
    """EAGLE drafting a dynamic tree (EAGLE-2)."""
    from ..heads.proposers import EagleTreeProposer

    return EagleTreeProposer(target, heads, **options)


# these need the torch backend's hidden states
medusa.requires = eagle.requires = medusa_tree.requires = eagle_tree.requires = "torch"
