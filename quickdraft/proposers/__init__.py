"""Proposers register themselves by method name on import."""

from . import draft_model, heads, hybrid, layerskip, ngram, suffix  # noqa: F401  (registration)
from .base import PROPOSERS, NoProposer, Proposer, create, register, tree_variant, uses_draft_model

__all__ = ["PROPOSERS", "NoProposer", "Proposer", "create", "register", "tree_variant", "uses_draft_model"]
