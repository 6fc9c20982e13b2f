"""The Backend protocol: how a model runs, independent of the method that drives it.

A backend owns one KV cache holding a token sequence (``tokens``). ``forward`` appends to it,
``rollback`` truncates it. Shapes: ``n`` new tokens, ``V`` vocabulary size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..errors import VocabularyMismatchError


class Backend(Protocol):
    path: Path  # where the model came from (for messages)
    vocab_size: int
    n_ctx: int
    eos_token: int
    tokens: list[int]  # what the KV cache holds, in order

    def prefill(self, tokens: Sequence[int], *, last_logits: bool = False) -> np.ndarray | None:
        """Make the cache hold exactly ``tokens``, reusing the longest cached common prefix;
        with ``last_logits``, return the logits after the last token [V]."""

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        """Append ``tokens`` (n >= 1) after the cache; return logits for every new position [n, V]:
        row i is the prediction for the token after ``tokens[i]``."""

    def rollback(self, length: int) -> None:
        """Keep the first ``length`` cached tokens, drop the rest."""

    # Token trees (see tree.py): N nodes, node 0 the pending token, parents in topological order.
    def forward_tree(self, tokens: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        """Evaluate all N tree nodes after the cache in one forward; return [N, V]: row i is the
        prediction for the token after node i given the cache and node i's ancestors (node i at
        position len(cache) + depth). Afterwards the cache holds the nodes until :meth:`keep`."""

    def extend_tree(self, tokens: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        """After :meth:`forward_tree`, before :meth:`keep`: add M nodes in one forward, ``parents``
        indexing the pending tree (new node j is node N + j); return their rows [M, V]. Lets a
        proposer grow a draft tree level by level without evaluating a node twice."""

    def keep(self, path: Sequence[int]) -> None:
        """After :meth:`forward_tree`: keep the nodes of ``path`` (node indices from the root 0
        down the tree) as the next cache entries, in order, and drop every other node; ``tokens``
        grows by len(path). For a chain, forward_tree + keep equals forward + rollback."""

    # The vocabulary side, which the engine needs to turn text into tokens and back.
    def tokenize(self, text: str, *, special: bool) -> list[int]: ...
    def token_bytes(self, token: int) -> bytes: ...
    def token_text(self, token: int) -> bytes:
        """The vocabulary entry itself (for comparing vocabularies)."""
    def is_end_of_generation(self, token: int) -> bool: ...
    def chat_prompt(self, messages: list[dict]) -> str | None:
        """The model's chat template applied to ``messages`` (with the assistant turn opened),
        or None if the model has no template."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def check_same_vocabulary(target: Backend, draft: Backend) -> None:
    """Refuse a draft whose vocabulary differs from the target's in size or any token text."""
    if target.vocab_size != draft.vocab_size:
        raise VocabularyMismatchError(
            f"vocabulary mismatch: target {target.path.name} has {target.vocab_size} tokens, "
            f"draft {draft.path.name} has {draft.vocab_size}; a draft model must share the target's tokenizer")
    for token in range(target.vocab_size):
        if target.token_text(token) != draft.token_text(token):
            raise VocabularyMismatchError(
                f"vocabulary mismatch: token {token} is {target.token_text(token)!r} in the target "
                f"{target.path.name} but {draft.token_text(token)!r} in the draft {draft.path.name}")
