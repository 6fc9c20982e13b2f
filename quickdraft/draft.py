"""An engine's draft model: named by the user, opened on first use, checked against the target.

``DraftModel(target, given)``: ``given`` is a bundled name, a path, ``self:<type>`` (the target's
own low-bit copy, models.resolve_draft), an open backend, or None (no draft model). Opening it
makes it a sibling of the target (the same backend kind and settings) and compares the two
vocabularies: the same, or another one that drafts through text (``bridge``, bridge.py); a pair
that cannot round-trip text is refused there, naming ``draft``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .backends.base import Backend
from .bridge import Bridge, vocabulary_bridge
from .models import resolve_draft


class DraftModel:
    """The draft model an engine was given, and once :meth:`open`, its backend and bridge."""

    def __init__(self, target: Backend, given: Any) -> None:
        self.target, self.given = target, given
        self.backend: Backend | None = None  # once open
        self.bridge: Bridge | None = None  # once open, when its vocabulary is not the target's

    def open(self) -> Backend | None:
        """The draft model's backend (opened and checked on first use), or None without one."""
        if self.given is not None and self.backend is None:
            model = self.given
            if isinstance(model, (str, Path)):
                model = self.target.sibling(resolve_draft(str(model), self.target.path))
            self.bridge = vocabulary_bridge(self.target, model)
            self.backend = model
        return self.backend

    def tokens(self, tokens: Sequence[int]) -> list[int]:
        """The draft model's tokens for the target's ``tokens``: the same, or across tokenizers."""
        self.open()
        return list(tokens) if self.bridge is None else self.bridge.draft_tokens(tokens)

    def describe(self) -> dict:
        """Its file name (None without one) and its vocabulary ("same", "other"; None until open)."""
        given = self.given
        name = None if given is None else Path(given).name if isinstance(given, (str, Path)) else given.path.name
        vocabulary = None if self.backend is None else "other" if self.bridge else "same"
        return {"draft": name, "draft_vocabulary": vocabulary}
