"""The Backend protocol: how a model runs, independent of the method that drives it.

A backend owns one KV cache holding a token sequence (``tokens``). ``forward`` appends to it,
``rollback`` truncates it. Shapes: ``n`` new tokens, ``V`` vocabulary size, ``H`` hidden size.

What a backend can do beyond the core protocol it declares in ``capabilities``; a proposer that
needs more than the core declares it (``ProposerSpec.requires``) and reaches it only through
the interface named here:

- ``TREE``: :class:`TreeBackend`, a token tree in one forward.
- ``BATCH``: :class:`BatchBackend`, several token sequences in one KV cache, evaluated together
  (continuous batching).
- ``HIDDEN_STATES``: :class:`HiddenStates`, the final hidden states of the cache (trained heads).
- ``LAYER_SKIP``: :class:`LayerSkipping`, forwards through a subset of the layers (self-speculation).
- ``THREADS``: :class:`Threads`, the compute threads of a model's context set while it runs, and
  forwards that release the GIL, so two models compute at once from two Python threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np


TREE = "tree"
BATCH = "batch"
HIDDEN_STATES = "hidden_states"
LAYER_SKIP = "layer_skip"
THREADS = "threads"


class Backend(Protocol):
    name: str  # its registry name (backends/__init__.py)
    path: Path  # the model file or directory (for messages)
    build: str  # what computes, for reports: e.g. "llama-cpp-python 0.3.36, native build for ..."
    capabilities: frozenset[str]
    vocab_size: int
    n_ctx: int
    n_threads: int | None
    eos_token: int
    tokens: list[int]  # what the KV cache holds, in order

    def prefill(self, tokens: Sequence[int], *, last_logits: bool = False) -> np.ndarray | None:
        """Make the cache hold exactly ``tokens``, reusing the longest cached common prefix;
        with ``last_logits``, return the logits after the last token [V] (no other row is computed)."""

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        """Append ``tokens`` (n >= 1) after the cache; return logits for every new position [n, V]:
        row i is the prediction for the token after ``tokens[i]``."""

    def rollback(self, length: int) -> None:
        """Keep the first ``length`` cached tokens, drop the rest."""

    def sibling(self, path: Path) -> "Backend":
        """Another model (a resolved path) with this one's settings: a draft model."""

    def close(self) -> None:
        """Free the model and its cache now (otherwise when collected)."""

    # The vocabulary side, which the engine needs to turn text into tokens and back.
    def tokenize(self, text: str, *, special: bool) -> list[int]: ...
    def token_bytes(self, token: int) -> bytes: ...
    def token_text(self, token: int) -> bytes:
        """The vocabulary entry itself (for comparing vocabularies)."""
    def is_end_of_generation(self, token: int) -> bool: ...
    def chat_prompt(self, messages: list[dict], tools: Sequence[dict] | None = None) -> str | None:
        """The model's chat template applied to ``messages`` (with the assistant turn opened) and
        ``tools`` (OpenAI tool definitions, when the template renders them), or None if the model
        has no template."""


class TreeBackend(Backend, Protocol):
    """``TREE``: token trees (see tree.py); N nodes, node 0 the pending token, parents in
    topological order."""

    max_tree_nodes: int

    def forward_tree(self, tokens: Sequence[int], parents: Sequence[int], *,
                     rows: Sequence[int] | None = None) -> np.ndarray:
        """Evaluate all N tree nodes after the cache in one forward; return [N, V]: row i is the
        prediction for the token after node i given the cache and node i's ancestors (node i at
        position len(cache) + depth). ``rows``: return only these nodes' rows, in this order
        ([len(rows), V]; the others' output layer is skipped). Afterwards the cache holds the
        nodes until :meth:`keep`."""

    def extend_tree(self, tokens: Sequence[int], parents: Sequence[int], *,
                    rows: Sequence[int] | None = None) -> np.ndarray:
        """After :meth:`forward_tree`, before :meth:`keep`: add M nodes in one forward, ``parents``
        indexing the pending tree (new node j is node N + j); return their rows [M, V] (``rows``
        as in forward_tree, numbered 0..M-1). Lets a proposer grow a draft tree level by level
        without evaluating a node twice."""

    def keep(self, path: Sequence[int]) -> None:
        """After :meth:`forward_tree`: keep the nodes of ``path`` (node indices from the root 0
        down the tree) as the next cache entries, in order, and drop every other node; ``tokens``
        grows by len(path). For a chain, forward_tree + keep equals forward + rollback."""


class KVSequence(Protocol):
    """One token sequence of a :class:`BatchBackend`: the single-sequence protocol of a backend
    (``tokens``, ``prefill``, ``forward``, ``rollback``, and with ``TREE`` the tree methods)."""

    tokens: list[int]

    def prefill(self, tokens: Sequence[int], *, last_logits: bool = False) -> np.ndarray | None: ...
    def forward(self, tokens: Sequence[int]) -> np.ndarray: ...
    def rollback(self, length: int) -> None: ...


@dataclass
class Chunk:
    """One sequence's part of a batched forward (:meth:`BatchBackend.forward_batch`): ``tokens``
    appended to ``sequence`` (a chain), or, with ``parents``, a token tree evaluated after it (the
    contract of ``TreeBackend.forward_tree``; ``keep`` settles it). ``rows``: which new tokens'
    logits to return ("all", "last", "none", or node indices of a tree)."""

    sequence: Any
    tokens: Sequence[int]
    parents: Sequence[int] | None = None
    rows: str | Sequence[int] = "all"


class BatchBackend(Backend, Protocol):
    """``BATCH``: sequences of their own in the backend's KV cache (the backend's own protocol
    works on its ``main`` one), and one forward over several of them (``n_batch`` tokens at most)."""

    main: KVSequence
    n_batch: int

    def new_sequence(self, prefix: Sequence[int] = ()) -> KVSequence:
        """A sequence of its own: empty, or holding the longest start of ``prefix`` that another
        sequence holds (shared, not computed again)."""

    def share_prefix(self, sequence: KVSequence, prefix: Sequence[int]) -> int:
        """Extend ``sequence`` (whose tokens start ``prefix``) with the longest further start of
        ``prefix`` another sequence holds (shared, not computed); returns the tokens it gained."""

    def release(self, sequence: KVSequence) -> None:
        """The sequence is done: its cache is freed, or kept as a prefix donor for later
        :meth:`new_sequence` calls (within a budget of cells, until its cells are needed)."""

    def forget_retired(self) -> None:
        """Free what released sequences still hold."""

    def free_cells(self) -> int:
        """KV cells no sequence holds."""

    def forward_batch(self, chunks: Sequence[Chunk]) -> list[np.ndarray]:
        """One forward over several sequences' new tokens (a chain, or a tree, per :class:`Chunk`);
        each chunk's logits rows."""


class HiddenStates(Backend, Protocol):
    """``HIDDEN_STATES``: the target's final hidden states (the LM head's input), read-only."""

    model: Any  # the framework's model (for its config, embeddings and a weight fingerprint)
    lm_head: Any  # its output layer
    last_hidden: Any  # [n, H] the rows of the latest forward (chain or tree), in input order

    def hidden_states(self, start: int, stop: int) -> Any:
        """Hidden states of cached positions ``start .. stop - 1`` [stop - start, H]."""


class Threads(Backend, Protocol):
    """``THREADS``: the threads a context computes on, set at any time (``n_threads`` says how
    many); its forwards run without the GIL (parallel drafting: proposers/parallel.py)."""

    def set_threads(self, n: int) -> None:
        """Compute on ``n`` threads from the next forward on."""


class LayerSkipping(Backend, Protocol):
    """``LAYER_SKIP``: forwards through a subset of the decoder layers, for self-speculation.
    Rows they add live beside the cache until :meth:`drop_partial`; ``tokens`` never holds them."""

    n_layers: int

    def forward_layers(self, tokens: Sequence[int], layers: Sequence[int]) -> np.ndarray:
        """Append ``tokens`` through ``layers`` only (sorted, layer 0 first) after the cache and the
        partial rows so far; return logits [n, V]."""

    def replay(self, count: int, layers: Sequence[int] | None = None, *, layer_states: bool = False):
        """The last ``count`` cached tokens evaluated again through ``layers`` (all by default);
        the cache is left as it was. Logits [count, V], and with ``layer_states`` also every
        layer's output [n_layers + 1, count, H]."""

    def drop_partial(self) -> None:
        """Remove the rows :meth:`forward_layers` added."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences.

    Example: common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2.
    """
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):  # the usual case (one extends the other), compared at C speed
        return n
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def reusable_prefix(cached: Sequence[int], tokens: Sequence[int], *, last_logits: bool) -> int:
    """How much of the cache ``prefill(tokens)`` keeps: the common prefix, less the last token when
    its logits are wanted (it must be evaluated again to give them).

    Example: reusable_prefix([1, 2, 3], [1, 2, 3], last_logits=True) == 2.
    """
    common = common_prefix(cached, tokens)
    return min(common, len(tokens) - 1) if last_logits else common


def vocabulary_difference(target: Backend, draft: Backend) -> str | None:
    """How a draft model's vocabulary differs from the target's, said for a message, or None when
    the two are the same (the same size and the same text at every token id)."""
    if target.vocab_size != draft.vocab_size:
        return f"{target.vocab_size} tokens in the target {target.path.name}, {draft.vocab_size} in the draft {draft.path.name}"
    for token in range(target.vocab_size):
        if target.token_text(token) != draft.token_text(token):
            return (f"token {token} is {target.token_text(token)!r} in the target {target.path.name} but "
                    f"{draft.token_text(token)!r} in the draft {draft.path.name}")
    return None
