"""GGUF models through llama-cpp-python's low-level API: one KV sequence, batched forward with
logits for every new position, rollback by removing cache cells.

We drive ``llama_decode`` directly instead of the high-level ``Llama`` class because speculation
needs logits for exactly the draft positions (``logits_all=True`` would allocate n_ctx x V floats)
and cheap truncation of the cache.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..chat import render_chat
from ..errors import InvalidParameterError, ModelNotFoundError, QuickdraftError
from ..system import check_llama_build, default_threads, describe_llama_build
from ..tree import check_path, layout
from .base import BATCH, THREADS, TREE, Chunk, common_prefix, reusable_prefix

check_llama_build()  # before any of llama.cpp's code runs
import llama_cpp as ll  # noqa: E402

LLAMA_MAX_SEQ = 256  # llama.cpp's limit on sequence ids per context (src/llama-cparams.h)


class LlamaSequence:
    """One token sequence in a llama.cpp context's KV cache: a request's (or a draft model's for one
    request). ``tokens`` mirrors what the cache holds for it.

    A sequence owns llama.cpp sequence ids: ``ids[0]`` is its own, and a token tree of N nodes
    uses ``ids[0..N-1]``, node i being sequence ``ids[i]``, taken from the context's pool when
    first needed and kept (their cells stay tagged with the whole cache: ``_mirrored`` of them hold
    it, so a later tree needs no copy; tagging a long cache into N sequences costs ~0.2 us per cell
    and sequence, 6 ms for 2000 x 15) until the pool runs dry: then the context takes them back
    (:meth:`LlamaCppBackend._spare`), so what sequences keep never exhausts the context's ids, only
    one forward's trees can. Sequences of one context share its KV buffer (unified).
    """

    def __init__(self, backend: "LlamaCppBackend", seq_id: int) -> None:
        self.backend, self.ids = backend, [seq_id]
        self.capabilities = backend.capabilities
        self.n_ctx, self.max_tree_nodes = backend.n_ctx, backend.max_tree_nodes
        self.tokens: list[int] = []
        self._mirrored = 1
        self._tree: tuple[list[int], tuple[int, ...], int] | None = None  # (tokens, parents, cache length) awaiting keep()

    @property
    def n_threads(self) -> int:
        return self.backend.n_threads

    def set_threads(self, n: int) -> None:
        """The context's threads (every sequence of it computes on them)."""
        self.backend.set_threads(n)

    # --- a chain -------------------------------------------------------------------------------
    def forward(self, tokens: Sequence[int], *, outputs: str = "all") -> np.ndarray:
        """Append ``tokens`` (n >= 1); return logits for the new positions: [n, V] for
        ``outputs="all"``, [1, V] for the last position only (``"last"``), [0, V] for ``"none"``.
        Longer than the context's batch: several decodes."""
        b = self.backend
        rows = []
        for start in range(0, len(tokens), b.n_batch):
            chunk = tokens[start:start + b.n_batch]
            last = start + len(chunk) == len(tokens)
            rows += b.forward_batch([Chunk(self, chunk, rows="none" if outputs == "none" or (outputs == "last" and not last)
                                           else outputs)])
        if len(rows) == 1:  # the usual case: no second copy of the logits
            return rows[0]
        return np.concatenate(rows) if rows else np.empty((0, b.vocab_size), np.float32)

    def prefill(self, tokens: Sequence[int], *, last_logits: bool = False) -> np.ndarray | None:
        """Make the cache hold exactly ``tokens``, reusing the longest cached common prefix.
        With ``last_logits`` return the logits after the last token [V] (re-evaluating that token
        if it was cached), so a caller can sync and predict in one forward."""
        common = reusable_prefix(self.tokens, tokens, last_logits=last_logits)
        self.rollback(common)
        if common < len(tokens):
            rows = self.forward(list(tokens[common:]), outputs="last" if last_logits else "none")
            return rows[-1] if last_logits else None
        return None

    def rollback(self, length: int) -> None:
        """Keep the first ``length`` cached tokens."""
        self._check_settled()
        if length < len(self.tokens):
            mem = self.backend._mem
            for seq_id in self.ids:
                if not ll.llama_memory_seq_rm(mem, seq_id, length, -1):
                    raise QuickdraftError(f"{self.backend.path.name}: llama.cpp cannot roll back this model's cache "
                                          "(recurrent models are not supported for speculation)")
            del self.tokens[length:]

    def clear(self) -> None:
        """Empty the sequence (its cells are freed)."""
        self._tree = None
        self.rollback(0)

    def drop_tree_ids(self) -> list[int]:
        """Untag the cache from the tree nodes' sequence ids and hand them back (for the pool):
        the sequence keeps its own id and its cells. Settled sequences only."""
        self._check_settled()
        spare = self.ids[1:]
        for seq_id in spare:
            ll.llama_memory_seq_rm(self.backend._mem, seq_id, -1, -1)
        del self.ids[1:]
        self._mirrored = 1
        return spare

    # --- a tree --------------------------------------------------------------------------------
    def forward_tree(self, tokens: Sequence[int], parents: Sequence[int], *,
                     rows: Sequence[int] | None = None) -> np.ndarray:
        """Evaluate a token tree (see tree.py) after the cache in one ``llama_decode``; return
        [N, V], row i the prediction after node i given the cache and node i's ancestors (only
        the nodes ``rows``, in that order, when given: [len(rows), V], the others cost nothing).

        Node i is llama.cpp sequence ``ids[i]``, holding the cache plus node i's ancestors and
        itself: the cache cells belong to every sequence a tree has used (``_mirrored``; a new one
        gets them by ``seq_cp``, which only tags cells in a unified cache), and node j's cell
        joins the sequences of j and of every node below it. llama.cpp's mask lets a token see the
        cells of its own sequence up to its position (len(cache) + depth): exactly the cache and
        its ancestors. Call :meth:`keep` next.
        """
        return self.backend.forward_batch([Chunk(self, tokens, parents, "all" if rows is None else rows)])[0]

    def extend_tree(self, tokens: Sequence[int], parents: Sequence[int], *,
                    rows: Sequence[int] | None = None) -> np.ndarray:
        """Add M nodes to the tree :meth:`forward_tree` evaluated (still awaiting :meth:`keep`) in
        one ``llama_decode``; ``parents`` index the pending tree's nodes, the new node j gets
        index N + j (topological order still holds). Returns [M, V], the new nodes' rows (or
        the rows of the new nodes ``rows``, numbered from 0 like ``tokens``).
        Used to grow a draft tree level by level without evaluating a node twice."""
        if self._tree is None:
            raise QuickdraftError("extend_tree() needs a forward_tree() first")
        return self.backend.forward_batch([Chunk(self, tokens, parents, "all" if rows is None else rows)],
                                          extend=True)[0]

    def keep(self, path: Sequence[int]) -> None:
        """After :meth:`forward_tree`: the cache becomes the old cache plus ``path``'s nodes.

        Removing the tree part of every sequence not on the path frees the other nodes' cells
        (each belongs only to sequences of its own subtree); the path's cells, still in sequence
        ``ids[path[-1]]``, are then tagged with every mirrored sequence (a few cells each).
        """
        if self._tree is None:
            raise QuickdraftError("keep() needs a forward_tree() first")
        tokens, parents, first = self._tree
        check_path(parents, path)
        mem, on_path = self.backend._mem, set(path)
        for m in range(len(parents)):
            if m not in on_path:
                ll.llama_memory_seq_rm(mem, self.ids[m], first, -1)
        for m in range(self._mirrored):
            if m != path[-1]:
                ll.llama_memory_seq_cp(mem, self.ids[path[-1]], self.ids[m], first, first + len(path))
        self.tokens.extend(int(tokens[i]) for i in path)
        self._tree = None

    def _check_settled(self) -> None:
        if self._tree is not None:
            raise QuickdraftError("forward_tree() must be followed by keep() before the cache is used again")

    def _layout(self, chunk: Chunk, extend: bool) -> tuple[list[int], list[list[int]], list[bool]]:
        """The llama.cpp batch entries of ``chunk`` (positions, sequence ids, logits wanted per
        token); records the pending tree. Takes sequence ids from the pool as a tree needs them."""
        b, n = self.backend, len(chunk.tokens)
        if n == 0:
            raise QuickdraftError("a forward needs at least one token")
        if chunk.parents is None:  # a chain after the cache, in every mirrored sequence
            self._check_settled()
            if len(self.tokens) + n > b.n_ctx:
                raise QuickdraftError(f"context full: {len(self.tokens)} + {n} tokens > n_ctx {b.n_ctx}")
            first, mirrored = len(self.tokens), self.ids[:self._mirrored]
            wanted = [chunk.rows == "all" or (chunk.rows == "last" and i == n - 1) for i in range(n)]
            return list(range(first, first + n)), [mirrored] * n, wanted
        if not extend:
            self._check_settled()
            self._tree = ([], (), len(self.tokens))
        old_tokens, old_parents, first = self._tree
        n_old, all_parents = len(old_parents), (*old_parents, *chunk.parents)
        if n != len(chunk.parents):
            raise InvalidParameterError(f"{len(chunk.parents)} tree nodes need {len(chunk.parents)} tokens, got {n}")
        tree = layout(all_parents)
        if len(tree) > b.max_tree_nodes:
            raise InvalidParameterError(f"a tree of {len(tree)} nodes exceeds max_tree_nodes {b.max_tree_nodes}")
        if first + len(tree) > b.n_ctx:
            raise QuickdraftError(f"context full: {first} + {len(tree)} tree nodes > n_ctx {b.n_ctx}")
        while len(self.ids) < len(tree):
            self.ids.append(b._take_id(spare=False))
        for m in range(max(n_old, 1), len(tree)):  # sequence m starts as its nearest evaluated ancestor's
            if m >= self._mirrored:
                ll.llama_memory_seq_cp(b._mem, self.ids[0], self.ids[m], -1, first)
                self._mirrored = m + 1
            a = all_parents[m]
            while a >= n_old:
                a = all_parents[a]
            if a >= 0:
                ll.llama_memory_seq_cp(b._mem, self.ids[a], self.ids[m], first, -1)
        new = range(n_old, len(tree))
        seqs = [[self.ids[j], *(self.ids[i] for i in range(j + 1, len(tree)) if tree.mask[i, j])] for j in new]
        wanted = [True] * n if chunk.rows == "all" else [j in chunk.rows for j in range(n)]
        self._tree = ([*old_tokens, *chunk.tokens], all_parents, first)
        return [first + tree.depth[j] for j in new], seqs, wanted


class LlamaCppBackend:
    """One llama.cpp model and context; its KV cache holds token sequences (:class:`LlamaSequence`).

    The backend's own sequence (``main``) serves the single-sequence protocol (``tokens``,
    ``prefill``, ``forward``, ``rollback``, the tree methods); :meth:`new_sequence` opens more,
    and :meth:`forward_batch` evaluates several sequences' tokens in one ``llama_decode`` (the
    ``batch`` capability: continuous batching). All sequences share one unified KV buffer of
    ``n_ctx`` cells (``free_cells``). ``n_batch`` bounds how many tokens one decode takes (longer
    single-sequence inputs are split; a token tree must fit in one). ``max_tree_nodes`` (at most
    ``n_batch``) bounds a token tree's size; the context has ``n_seq_max`` sequence ids in all
    (one per sequence, one per tree node beyond the first). ``n_gpu_layers`` offloads layers when
    llama.cpp was built with a GPU backend (ignored on CPU builds). ``retain_cells``: how many KV
    cells finished sequences may keep as prefix donors (default a quarter of ``n_ctx``; see
    :meth:`release`). ``precise`` uses an F32 KV cache
    and no flash attention, so a batched forward matches one-token forwards to ~1e-5 (the tiny test
    models rely on it; on quantized models the matmul kernels still differ between batch sizes).

    ``batch_invariant``: every row of a forward computed the same way whatever the forward's
    shape, so an answer never depends on the batch it was in, on its drafts, or on prefix reuse:
    the batch-invariant build of llama.cpp (``make batch-invariant``, chosen with
    ``system.use_batch_invariant_llama`` before llama_cpp is loaded: no llamafile GEMM), weights
    not repacked (their 4-row kernels), and ``precise``. Rows are then bit-identical for F32 and
    Q4_0 weights (the K-quants still take another path from 8 rows on); it costs about half the
    speed of plain decoding and most of what batching and speculation gain (README, "Same
    request, same answer").
    """

    name = "llamacpp"
    capabilities = frozenset({TREE, BATCH, THREADS})

    def __init__(self, path: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_batch: int = 512, n_gpu_layers: int = 0, precise: bool = False,
                 max_tree_nodes: int = 64, batch_invariant: bool = False, retain_cells: int | None = None,
                 verbose: bool = False) -> None:
        self.path = Path(path)
        if retain_cells is not None and retain_cells < 0:
            raise InvalidParameterError(f"retain_cells must be >= 0, got {retain_cells}", param="retain_cells")
        if not self.path.is_file():
            raise ModelNotFoundError(f"no model file at {self.path}")
        if batch_invariant and "LLAMAFILE = 1" in system_info():
            raise QuickdraftError("batch-invariant mode needs the batch-invariant build of llama.cpp: choose it before "
                                  "loading any model (load(batch_invariant=True), --batch-invariant)",
                                  param="batch_invariant")
        self.build = describe_llama_build()
        # llama-cpp-python maps ggml's WARN level to logging.ERROR, so only CRITICAL keeps load-time
        # warnings quiet; failures still reach the user as our own error messages.
        logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
        ll.llama_backend_init()
        self.n_threads = n_threads or default_threads()
        self.n_gpu_layers = n_gpu_layers
        mparams = ll.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        self.batch_invariant = batch_invariant
        mparams.use_extra_bufts = not batch_invariant  # repacked weights: other kernels for 4+ rows
        precise = precise or batch_invariant
        self._model = ll.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise ModelNotFoundError(f"llama.cpp could not load {self.path}: is it a valid GGUF model file?")
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx
        # llama.cpp caps a batch at the context (and asserts n_seq_max <= n_batch below), so a tiny
        # context must shrink them here rather than abort the process there.
        cparams.n_batch = cparams.n_ubatch = self.n_batch = max(1, min(n_batch, n_ctx))
        cparams.n_threads = cparams.n_threads_batch = self.n_threads
        # Sequences and tree nodes are llama.cpp sequence ids, all sharing one KV buffer (unified),
        # so a node on several paths is stored once and n_ctx is not split between sequences.
        # llama.cpp asserts n_seq_max <= n_batch (it reserves an output row per sequence).
        cparams.n_seq_max = self.n_seq_max = min(LLAMA_MAX_SEQ, self.n_batch)
        self.max_tree_nodes = min(max_tree_nodes, self.n_seq_max)
        cparams.kv_unified = True
        self.precise = precise
        if precise:
            cparams.type_k = cparams.type_v = ll.GGML_TYPE_F32
            cparams.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            ll.llama_model_free(self._model)
            raise QuickdraftError(f"llama.cpp could not create a context of {n_ctx} tokens for {self.path}")
        self.n_ctx = ll.llama_n_ctx(self._ctx)
        self.retain_cells = self.n_ctx // 4 if retain_cells is None else retain_cells
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.vocab_size = ll.llama_vocab_n_tokens(self._vocab)
        self.eos_token = ll.llama_vocab_eos(self._vocab)
        self._mem = ll.llama_get_memory(self._ctx)
        self._batch = ll.llama_batch_init(self.n_batch, 0, self.max_tree_nodes)
        self._free_ids = list(range(self.n_seq_max - 1, -1, -1))
        self._sequences: list[LlamaSequence] = []
        self._retired: list[LlamaSequence] = []  # released, holding cells as prefix donors; least recently used first
        self._pieces: dict[int, bytes] = {}  # token_bytes' answers
        template = ll.llama_model_chat_template(self._model, None)
        self.chat_template = template.decode("utf-8") if template else None
        self.main = self.new_sequence()

    def sibling(self, path: Path) -> "LlamaCppBackend":
        """Another model (a resolved path) with this one's settings (used for a draft model)."""
        return LlamaCppBackend(path, n_ctx=self.n_ctx, n_threads=self.n_threads, n_batch=self.n_batch,
                               n_gpu_layers=self.n_gpu_layers, precise=self.precise,
                               max_tree_nodes=self.max_tree_nodes, batch_invariant=self.batch_invariant,
                               retain_cells=self.retain_cells)

    def set_threads(self, n: int) -> None:
        """Compute on ``n`` threads from the next decode on (prompt batches too)."""
        if n < 1:
            raise QuickdraftError(f"need at least one thread, got {n}", param="threads")
        ll.llama_set_n_threads(self._ctx, n, n)
        self.n_threads = n

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            ll.llama_batch_free(self._batch)
            ll.llama_free(self._ctx)
            ll.llama_model_free(self._model)
            self._ctx = None

    def __del__(self) -> None:
        self.close()

    # --- sequences -----------------------------------------------------------------------------
    def new_sequence(self, prefix: Sequence[int] = ()) -> LlamaSequence:
        """A sequence of its own in this context's KV cache: empty, or holding the longest start
        of ``prefix`` that a live or retired sequence holds (a conversation's earlier turns, a chat
        template's opening, a shared system prompt): its cells are tagged with the new sequence too
        (the cache is unified, so nothing is copied or computed again; each sequence's later tokens
        stay its own). A retired sequence (:meth:`release`) that the new one continues (it shares at
        least half of the retired one's tokens: the next turn of its conversation, the same prompt
        again) is adopted instead, rolled back to the shared start; one that shares less (another
        conversation's opening) stays retired for its own next turn, now the most recently used."""
        shared, donor = self._donor(prefix)
        if shared and donor in self._retired:
            self._retired.remove(donor)
            if 2 * shared >= len(donor.tokens):  # adopt it: its cells are already this sequence's
                donor.rollback(shared)
                self._sequences.append(donor)
                return donor
            self._retired.append(donor)
        sequence = LlamaSequence(self, self._take_id())
        if shared:
            ll.llama_memory_seq_cp(self._mem, donor.ids[0], sequence.ids[0], 0, shared)
            sequence.tokens = [int(t) for t in prefix[:shared]]
        self._sequences.append(sequence)
        return sequence

    def share_prefix(self, sequence: LlamaSequence, prefix: Sequence[int]) -> int:
        """Extend ``sequence``, whose tokens start ``prefix``, with the longest further start of
        ``prefix`` another sequence holds (live or retired): those cells are tagged with it too,
        nothing is computed. Returns how many tokens it gained (0 when no other holds more).

        For prompts that arrive together: none holds another's opening when they start
        (:meth:`new_sequence`), but once the first one's chunk is in, the others take the opening
        they share with it (a chat template, a common instruction) instead of computing it."""
        held = len(sequence.tokens)
        if sequence._tree is not None or list(prefix[:held]) != sequence.tokens:
            return 0
        shared, donor = self._donor(prefix, exclude=sequence)
        if shared <= held:
            return 0
        for seq_id in sequence.ids[:sequence._mirrored]:
            ll.llama_memory_seq_cp(self._mem, donor.ids[0], seq_id, held, shared)
        sequence.tokens += [int(t) for t in prefix[held:shared]]
        return shared - held

    def _donor(self, prefix: Sequence[int], exclude: LlamaSequence | None = None) -> tuple[int, LlamaSequence | None]:
        """The settled sequence (retired or live, not ``exclude``) holding the longest start of
        ``prefix``, and that length ((0, None) when none holds any)."""
        donors = [(common_prefix(s.tokens, prefix), s) for s in [*self._retired, *self._sequences]
                  if s._tree is None and s is not exclude]
        return max(donors, key=lambda d: d[0], default=(0, None))

    def release(self, sequence: LlamaSequence) -> None:
        """The sequence is done (it must not be used afterwards). A settled one is retired: it
        keeps its cells as a prefix donor for later :meth:`new_sequence` calls (a conversation's
        next turn, which adopts it; the next request's shared opening), so conversations keep
        their turns while other requests come and go. Retired sequences beyond the newest are freed,
        least recently used first, while they hold more than ``retain_cells`` cells; a forward that
        needs their cells, or a tree that needs their ids, frees them first. Its tree nodes'
        sequence ids go back to the pool at once.

        A retired cell costs the live rows little: their attention skips masked cells sixteen at a
        time (measured on AMD Zen 4, 2 threads, the default target: 16 live sequences of 330 tokens,
        a one-token step each, 238-239 ms median without retired cells, 242 ms with 8,000)."""
        self._sequences.remove(sequence)
        if sequence._tree is not None or not sequence.tokens:
            self._free(sequence)
            return
        self._free_ids += sequence.drop_tree_ids()
        self._retired.append(sequence)
        while len(self._retired) > 1 and sum(len(s.tokens) for s in self._retired) > self.retain_cells:
            self._free(self._retired.pop(0))

    def forget_retired(self, keep_cells: int | None = None) -> None:
        """Free retired sequences, least recently used first (all, or until ``keep_cells`` cells are free)."""
        while self._retired and (keep_cells is None or self.free_cells() < keep_cells):
            self._free(self._retired.pop(0))

    def _spare(self, count: int, keep: Sequence[LlamaSequence] = ()) -> None:
        """Make ``count`` sequence ids free: first the tree nodes' ids that settled live sequences
        keep (a cache: their next tree tags its cells again), the largest holders first, never
        those of ``keep`` (sequences about to evaluate a tree, which need theirs); then retired
        sequences, least recently used first. As many as it can: taking one then finds none when
        live sequences and the trees of ``keep`` hold them all."""
        holders = sorted((s for s in self._sequences if s._tree is None and len(s.ids) > 1
                          and not any(s is k for k in keep)), key=lambda s: -len(s.ids))
        for sequence in holders:
            if len(self._free_ids) >= count:
                return
            self._free_ids += sequence.drop_tree_ids()
        while len(self._free_ids) < count and self._retired:
            self._free(self._retired.pop(0))

    def _free(self, sequence: LlamaSequence) -> None:
        sequence.clear()
        self._free_ids += sequence.ids
        sequence.ids = []

    def free_cells(self) -> int:
        """KV cells no live sequence holds (the unified buffer is shared; tree nodes awaiting
        keep() count as held; retired sequences' cells count as held until freed)."""
        held = sum(len(s.tokens) + (len(s._tree[1]) if s._tree else 0) for s in [*self._sequences, *self._retired])
        return self.n_ctx - held

    def _take_id(self, spare: bool = True) -> int:
        """A free sequence id; ``spare``: make one free if none is (not while a forward is laid
        out: :meth:`forward_batch` spared its ids before, and a sequence laid out must keep its own)."""
        if spare:
            self._spare(1)
        if not self._free_ids:
            raise QuickdraftError(f"all {self.n_seq_max} llama.cpp sequence ids are in use ({len(self._sequences)} "
                                  "sequences, and one per tree node beyond the first of a forward's trees): fewer "
                                  "concurrent requests or smaller trees")
        return self._free_ids.pop()

    def forward_batch(self, chunks: Sequence[Chunk], *, extend: bool = False) -> list[np.ndarray]:
        """The chunks' new tokens (see :class:`Chunk`) evaluated together; returns each chunk's
        logits rows ([rows, V] each, in its order). Chains join their sequence's ``tokens`` at
        once; a tree awaits its sequence's :meth:`LlamaSequence.keep`. ``extend``: the trees add
        nodes to their pending trees (:meth:`LlamaSequence.extend_tree`).

        It makes the ``llama_decode`` calls of :func:`decode_groups`: the chunks that want logits
        together (packed into calls under llama.cpp's attention tile when they come from many
        sequences), then each prompt chunk (no logits) alone."""
        trees = [chunk for chunk in chunks if chunk.parents is not None]
        self._spare(sum(max(0, _tree_nodes(c, extend) - len(c.sequence.ids)) for c in trees),
                    keep=[c.sequence for c in trees])  # before any layout: a chain here may give its tree ids
        results: dict[int, np.ndarray] = {}
        for group in decode_groups(chunks):
            results.update(zip(group, self._decode([chunks[i] for i in group], extend)))
        return [results[i] for i in range(len(chunks))]

    def _decode(self, chunks: Sequence[Chunk], extend: bool) -> list[np.ndarray]:
        """One ``llama_decode`` over the chunks; each chunk's logits rows."""
        pending = [chunk.sequence._tree for chunk in chunks]  # restored if the forward fails
        try:
            tokens, positions, seqs, wanted = [], [], [], []
            for chunk in chunks:
                pos, ids, want = chunk.sequence._layout(chunk, extend)
                tokens += [int(t) for t in chunk.tokens]
                positions += pos
                seqs += ids
                wanted += want
            if len(tokens) > self.n_batch:
                raise QuickdraftError(f"a batch of {len(tokens)} tokens exceeds n_batch {self.n_batch}")
            self.forget_retired(keep_cells=len(tokens))
            b = self._batch
            b.n_tokens = len(tokens)
            for i, token in enumerate(tokens):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, positions[i], len(seqs[i]), wanted[i]
                for k, seq_id in enumerate(seqs[i]):
                    b.seq_id[i][k] = seq_id
            status = ll.llama_decode(self._ctx, b)
            if status != 0:
                raise QuickdraftError(f"llama_decode failed with status {status} (1: no room in the KV cache for "
                                      f"{len(tokens)} more tokens, {self.free_cells()} cells free)")
        except BaseException:
            for chunk, tree in zip(chunks, pending):
                chunk.sequence._tree = tree
            raise
        out = np.ctypeslib.as_array(ll.llama_get_logits(self._ctx), shape=(sum(wanted), self.vocab_size))
        results, row, offset = [], 0, 0
        for chunk in chunks:
            n = len(chunk.tokens)
            flags = wanted[offset:offset + n]
            count = sum(flags)
            rows = out[row:row + count]
            if chunk.parents is not None and chunk.rows not in ("all", "none", "last"):
                order = list(np.cumsum(flags) - 1)  # output row of each wanted node
                rows = rows[[order[j] for j in chunk.rows]]
            else:
                rows = rows.copy()
            if chunk.parents is None:
                chunk.sequence.tokens.extend(int(t) for t in chunk.tokens)
            results.append(rows)
            row, offset = row + count, offset + n
        return results

    # --- the single-sequence protocol, on ``main`` ----------------------------------------------
    @property
    def tokens(self) -> list[int]:
        return self.main.tokens

    def forward(self, tokens: Sequence[int], *, outputs: str = "all") -> np.ndarray:
        return self.main.forward(tokens, outputs=outputs)

    def prefill(self, tokens: Sequence[int], *, last_logits: bool = False) -> np.ndarray | None:
        return self.main.prefill(tokens, last_logits=last_logits)

    def rollback(self, length: int) -> None:
        self.main.rollback(length)

    def forward_tree(self, tokens, parents, *, rows=None) -> np.ndarray:
        return self.main.forward_tree(tokens, parents, rows=rows)

    def extend_tree(self, tokens, parents, *, rows=None) -> np.ndarray:
        return self.main.extend_tree(tokens, parents, rows=rows)

    def keep(self, path) -> None:
        self.main.keep(path)

    # --- the vocabulary -----------------------------------------------------------------------
    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of ``text``. ``special``: parse control tokens written in the text (for chat
        templates, which also render any BOS themselves); otherwise the model's BOS is added."""
        data = text.encode("utf-8")
        buf = (ll.llama_token * (len(data) + 8))()
        n = ll.llama_tokenize(self._vocab, data, len(data), buf, len(buf), not special, special)
        if n < 0:
            raise QuickdraftError(f"tokenization failed ({n})")
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        """What ``token`` writes, from any thread (the server's HTTP side and its worker both ask:
        a buffer of each call's own, the answers kept, the vocabulary being fixed)."""
        piece = self._pieces.get(token)
        if piece is None:
            buffer = ctypes.create_string_buffer(256)
            n = ll.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
            piece = self._pieces[token] = buffer.raw[:max(n, 0)]
        return piece

    def token_text(self, token: int) -> bytes:
        """The vocabulary entry itself (for comparing vocabularies)."""
        return ll.llama_vocab_get_text(self._vocab, token) or b""

    def is_end_of_generation(self, token: int) -> bool:
        return bool(ll.llama_vocab_is_eog(self._vocab, token))

    def chat_prompt(self, messages: list[dict], tools: Sequence[dict] | None = None) -> str | None:
        if not self.chat_template:
            return None
        return render_chat(self.chat_template, messages, tools=tools,
                           bos=self._special_text(ll.llama_vocab_bos(self._vocab)),
                           eos=self._special_text(self.eos_token))

    def _special_text(self, token: int) -> str:
        """How a control token is written in a template ("" for none)."""
        return self.token_text(token).decode("utf-8", errors="replace") if token >= 0 else ""


# llama.cpp's CPU flash attention takes a forward of this many tokens or more in tiles of this
# many consecutive tokens (GGML_FA_TILE_Q), each computed densely over every cell any of its
# tokens sees (decode_groups).
ATTENTION_TILE = 64
# Rows of at most this many sequences stay in one forward however many tokens they are: a tile's
# dense pass over a few contexts costs less than another pass over the weights (decode_groups).
FEW_SEQUENCES = 4


def decode_groups(chunks: Sequence[Chunk], tile: int = ATTENTION_TILE, few: int = FEW_SEQUENCES) -> list[list[int]]:
    """The ``llama_decode`` calls a batched forward makes, as lists of chunk indices: the chunks
    that want logits (the running requests' rows and drafts) in one call, or, when they are more
    than ``few``, packed in order into calls of fewer than ``tile`` tokens (a chunk of ``tile``
    tokens or more alone); then each prompt chunk (``rows="none"``) alone.

    Why: llama.cpp's CPU flash attention takes a forward of ``tile`` tokens or more in tiles of
    ``tile`` consecutive tokens, each computed densely over every cell that any of its tokens
    sees, where a smaller forward skips each row's masked cells one by one. A tile holding the
    rows of many sequences, or those rows beside a prompt's tokens, so computes over all their
    contexts. One sequence's tokens see only its own cells, so a prompt chunk or a long draft
    alone keeps the tiled kernel's speed. Measured with 16 sequences of 300 tokens in the cache
    (AMD EPYC Zen 5, 2 threads, default target), one call against these groups: 16 rows and a
    64-token prompt chunk 878 against 548 ms; 16 sequences' 5 rows each 1514 against 898 ms, 8
    sequences' 8 rows 798 against 721 ms; split, 2 sequences' 40 rows would have cost 1.21x and 4
    sequences' 16 rows 1.11x (hence ``few``).

    Example: with tile 8 and few 2, chunks of 3, 3, 3 (rows "all"), 5 (rows "none") and 9 ("all")
    tokens -> [[0, 1], [2], [4], [3]]; with few 4, [[0, 1, 2, 4], [3]].
    """
    rows = [i for i, c in enumerate(chunks) if c.rows != "none"]
    prompts = [[i] for i, c in enumerate(chunks) if c.rows == "none"]
    if len(rows) <= few:
        return ([rows] if rows else []) + prompts
    groups: list[list[int]] = [[]]
    size = 0
    for i in rows:
        n = len(chunks[i].tokens)
        if groups[-1] and size + n >= tile:  # this chunk would bring the call to a whole tile
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += n
    return groups + prompts


def _tree_nodes(chunk: Chunk, extend: bool) -> int:
    """Nodes of the tree a tree chunk leaves pending: its own, after the pending tree's when it
    ``extend`` s one (each node a sequence id of its sequence)."""
    pending = chunk.sequence._tree
    return len(chunk.parents) + (len(pending[1]) if extend and pending is not None else 0)


def system_info() -> str:
    """What llama.cpp was compiled with, as it says itself ("CPU : SSE3 = 1 | AVX = 1 | ...")."""
    return ll.llama_print_system_info().decode(errors="replace").strip()


def requantize(source: Path, dest: Path, quant_type: str, n_threads: int | None = None,
               output_type: str | None = None, *, pure: bool = True) -> None:
    """Write ``source`` re-encoded as ``quant_type`` (a llama.cpp file type, e.g. ``"Q4_0"``,
    ``"Q3_K_M"``) to ``dest`` with llama.cpp's own quantizer, requantizing allowed (a source whose
    tensors are quantized already is dequantized and quantized again, as ``llama-quantize
    --allow-requantize`` does): ``pure`` every tensor of the type's base kind, no per-tensor
    exceptions; otherwise llama.cpp's own recipe for the type (what ``llama-quantize`` makes: the
    output matrix and some layers in more bits). The output matrix and the token embeddings as
    ``output_type`` (a ggml type, e.g. ``"Q8_0"``) when given."""
    ftype = getattr(ll, f"LLAMA_FTYPE_MOSTLY_{quant_type}", None)
    if ftype is None:
        raise InvalidParameterError(f"llama.cpp has no quantization type {quant_type!r}")
    params = ll.llama_model_quantize_default_params()
    params.ftype, params.pure, params.allow_requantize = ftype, pure, True
    if output_type is not None:
        ggml_type = getattr(ll, f"GGML_TYPE_{output_type}", None)
        if ggml_type is None:
            raise InvalidParameterError(f"ggml has no tensor type {output_type!r}")
        params.output_tensor_type = params.token_embedding_type = ggml_type
    params.nthread = n_threads or default_threads()
    logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL)
    if ll.llama_model_quantize(str(source).encode(), str(dest).encode(), ctypes.byref(params)) != 0:
        raise QuickdraftError(f"llama.cpp could not requantize {source} to {quant_type}")
