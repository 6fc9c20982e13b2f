"""Trained draft heads on the target's hidden states (torch backend): ``medusa``, ``eagle`` and
their ``-tree`` variants.

The implementations live in quickdraft.heads (torch), imported only when one of these methods is
used, so ``import quickdraft`` stays free of torch. The heads are loaded once per engine (the
method's memory, :class:`~quickdraft.heads.proposers.HeadsMemory`) and every request's proposer
drafts with them; they read the target through its declared ``HIDDEN_STATES`` interface.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backends.base import HIDDEN_STATES, TREE
from ..errors import InvalidParameterError
from .base import ProposerSpec


@dataclass(frozen=True)
class HeadsOptions:
    """``heads``: the directory ``quickdraft train`` made (default: the cache's heads/<kind>)."""

    heads: str | None = None


@dataclass(frozen=True)
class HeadsTreeOptions(HeadsOptions):
    """``tree_width``: candidates per node (top-k of each head)."""

    tree_width: int = 3

    def __post_init__(self) -> None:
        if self.tree_width < 1:
            raise InvalidParameterError(f"tree_width must be >= 1, got {self.tree_width}", param="tree_width")


def _spec(kind: str, tree: bool, summary: str) -> ProposerSpec:
    def memory(resources, options):
        from ..heads.proposers import HeadsMemory

        return HeadsMemory.load(resources.target, kind, options.heads)

    def make(resources, memory, options):
        from ..heads.proposers import PROPOSER_CLASSES

        return PROPOSER_CLASSES[kind, tree](resources.target, memory, options)

    return ProposerSpec(f"{kind}-tree" if tree else kind, summary, make=make, memory=memory,
                        options=HeadsTreeOptions if tree else HeadsOptions,
                        requires=frozenset({HIDDEN_STATES, TREE} if tree else {HIDDEN_STATES}),
                        tree_variant=None if tree else f"{kind}-tree")


SPECS = (
    _spec("medusa", False, "Medusa heads (arXiv 2401.10774) draft a chain from the target's last hidden state"),
    _spec("eagle", False, "an EAGLE head (arXiv 2401.15077) extrapolates the target's features token by token"),
    _spec("medusa", True, "Medusa drafting a tree: the heads' top-k, best nodes kept"),
    _spec("eagle", True, "EAGLE drafting a dynamic tree (EAGLE-2)"),
)
