"""The decoding methods, registered explicitly: a method is in this list or it does not exist.

To add one, write its proposer and its :class:`ProposerSpec` in a module here and list the spec
below (docs/design.md, "Adding a method"); the registry test lists every name.
"""

from . import ar, draft_model, heads, hybrid, layerskip, lookahead, ngram, parallel, suffix
from .base import BaseProposer, NoOptions, Proposer, ProposerSpec, Registry, Resources, parse_options

METHODS = Registry([
    hybrid.AUTO,
    ar.AR,
    draft_model.DRAFT,
    draft_model.DRAFT_TREE,
    parallel.PARALLEL,
    ngram.NGRAM,
    ngram.NGRAM_TREE,
    suffix.SUFFIX,
    lookahead.LOOKAHEAD,
    layerskip.LAYERSKIP,
    *heads.SPECS,
])

__all__ = ["METHODS", "BaseProposer", "NoOptions", "Proposer", "ProposerSpec", "Registry", "Resources",
           "parse_options"]
