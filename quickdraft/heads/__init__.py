"""Trained draft heads on the target's own hidden states: Medusa and EAGLE (torch only).

``import quickdraft`` never imports this package; the ``medusa`` and ``eagle`` proposers and
``quickdraft train`` do. Heads are trained with :mod:`quickdraft.heads.train`, saved to a
directory (see :mod:`quickdraft.heads.common`) and loaded by the proposers with ``heads=DIR``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import QuickdraftError
from .common import DraftVocab, HeadConfig, describe_target, heads_dir, load_heads, read_config, save_heads
from .eagle import EagleHead
from .medusa import MedusaHeads

KINDS: dict[str, type[nn.Module]] = {"medusa": MedusaHeads, "eagle": EagleHead}


def check_kind(kind: str) -> None:
    """Refuse a head kind that is not in :data:`KINDS`."""
    if kind not in KINDS:
        raise QuickdraftError(f"unknown head kind {kind!r}; choose one of: {', '.join(KINDS)}")


def build_head(kind: str, shape: dict) -> nn.Module:
    """A fresh head of ``kind`` with the constructor arguments ``shape``."""
    check_kind(kind)
    return KINDS[kind](**shape)


def load_for_target(directory: str | Path | None, kind: str, model: nn.Module, lm_head: nn.Linear
                    ) -> tuple[nn.Module, DraftVocab, HeadConfig]:
    """Load trained heads of ``kind`` (from ``directory``, see :func:`heads_dir`) for the
    transformers ``model`` (checked to be the model they were trained on), in its dtype and on
    its device, ready to draft."""
    config, state, vocab_ids = load_heads(heads_dir(directory, kind), kind, model)
    head = build_head(kind, config.shape)
    head.load_state_dict(state)
    head.to(device=lm_head.weight.device, dtype=lm_head.weight.dtype).eval().requires_grad_(False)
    return head, DraftVocab(lm_head, vocab_ids), config


__all__ = ["DraftVocab", "EagleHead", "HeadConfig", "KINDS", "MedusaHeads", "build_head", "check_kind",
           "describe_target", "heads_dir", "load_for_target", "load_heads", "read_config", "save_heads"]
