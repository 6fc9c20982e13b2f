"""Hugging Face transformers causal LMs through torch: the research backend (hidden states, custom
attention masks, layer subsets), on CPU or CUDA.

A model comes from a local transformers directory (``config.json`` + weights + tokenizer) or from
a GGUF file, which transformers dequantizes (``from_pretrained(dir, gguf_file=...)``; about a
minute for the bundled 1.5B target on 2 cores). The path is already resolved (bundled names are
resolved by ``models.resolve_model`` before a backend is opened). torch is an optional extra:
``import quickdraft`` does not load it; this module, the heads (quickdraft.heads) and
testing_torch do. Nothing on this path imports llama.cpp.

The KV cache is a ``DynamicCache`` holding one sequence (``tokens``). Beyond the Backend protocol
(the interfaces of backends/base.py):

- ``HIDDEN_STATES``: ``hidden_states(start, stop)``, the final hidden states (after the final
  norm: the LM head's input) of cached positions, kept for every position the cache holds
  (trimmed by ``rollback``, kept along the path by ``keep``), in the model's dtype;
  ``last_hidden``, the rows of the latest ``prefill``/``forward``/``forward_tree``/
  ``extend_tree``/``forward_layers`` [n, H] on ``device``; ``model`` the HF model, ``lm_head``
  its output layer.
- ``TREE``: ``forward_tree(tokens, parents) -> [N, V]``, ``extend_tree`` and ``keep(path)``: a
  token tree in one forward (4-D attention mask, positions = cache length + depth), grown level
  by level, then one root-first path kept (tree.py's contract).
- ``LAYER_SKIP``: ``forward_layers(tokens, layers) -> [n, V]`` runs only the given decoder layers
  (self-speculation); their cache grows, the other layers' does not, and ``drop_partial()`` (or
  the next ``forward``/``rollback``/``prefill``) cuts it back to ``tokens``. ``replay`` evaluates
  cached tokens again through some layers, leaving the cache (and ``last_hidden``) as they were.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Sequence

import numpy as np

from ..chat import render_chat
from ..errors import InvalidParameterError, ModelNotFoundError, QuickdraftError
from ..tree import check_path, layout
from .base import HIDDEN_STATES, LAYER_SKIP, TREE, reusable_prefix

TORCH_HINT = "pip install 'quickdraft[torch]'"

try:
    import torch
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise QuickdraftError(f"the torch backend needs torch and transformers: {TORCH_HINT} ({e})") from None

DTYPES = ("bfloat16", "float32", "float16")
# Vocabulary entries that end a turn in common chat models (besides the tokenizer's EOS).
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>", "<|end|>",
               "</s>", "<end_of_turn>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")  # as llama.cpp


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchBackend:
    """One transformers causal LM, its KV cache (batch 1) and the final hidden state of every
    cached position.

    ``model``: a resolved path (see models.resolve_model): a transformers model directory, or a
    GGUF file (dequantized on load); anything else raises ModelNotFoundError. ``dtype``:
    "bfloat16" (the default: on AVX-512 BF16 CPUs a forward of 1-16 tokens costs nearly the same,
    while float32's cost grows several-fold from 1 to 4 tokens), "float32" (what the tests use for
    exact comparisons) or "float16". ``device``: "cpu", "cuda", ... (default: cuda when present).
    ``n_ctx``: the context size (at most the model's ``max_position_embeddings``). ``n_threads``:
    torch's intra-op threads, process-wide (default: torch's own choice). ``max_tree_nodes``
    bounds a token tree (as in the llama.cpp backend; here only the attention mask grows with
    it). ``verbose``: let transformers' warnings and progress bars through.
    """

    name = "torch"
    capabilities = frozenset({TREE, HIDDEN_STATES, LAYER_SKIP})

    def __init__(self, model: str | Path, *, dtype: str = "bfloat16", device: str | None = None,
                 n_ctx: int = 4096, n_threads: int | None = None, max_tree_nodes: int = 64,
                 verbose: bool = False) -> None:
        try:
            import transformers
            from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
        except ImportError as e:
            raise QuickdraftError(f"the torch backend needs transformers: {TORCH_HINT} ({e})") from None
        if dtype not in DTYPES:
            raise QuickdraftError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.dtype, self.device, self.n_threads = dtype, device or default_device(), n_threads
        self.max_tree_nodes = max_tree_nodes
        if n_threads:
            torch.set_num_threads(n_threads)
        self.path = Path(model)
        if self.path.is_dir():
            where = dict(pretrained_model_name_or_path=str(self.path))
        elif self.path.is_file():
            where = dict(pretrained_model_name_or_path=str(self.path.parent), gguf_file=self.path.name)
        else:
            raise ModelNotFoundError(f"no model directory or GGUF file at {self.path}")
        try:
            with quiet_transformers(verbose):
                self.tokenizer = AutoTokenizer.from_pretrained(**where)
                self.model = AutoModelForCausalLM.from_pretrained(**where, dtype=getattr(torch, dtype))
        except (OSError, ValueError, KeyError) as e:
            raise QuickdraftError(f"transformers could not load {self.path}: {e}") from None
        self.model.to(self.device).eval()
        config = self.model.config
        if set(getattr(config, "layer_types", None) or ["full_attention"]) != {"full_attention"}:
            raise QuickdraftError(f"{self.path.name}: only models whose layers all use full attention are "
                                  f"supported (this one has {sorted(set(config.layer_types))})")
        self.decoder = self.model.get_decoder()
        self.n_layers = len(self.decoder.layers)
        self.lm_head = self.model.get_output_embeddings()
        self.build = f"torch {torch.__version__}, transformers {transformers.__version__}, {dtype} on {self.device}"
        self.vocab_size = int(self.lm_head.weight.shape[0])
        self.n_ctx = min(n_ctx, getattr(config, "max_position_embeddings", n_ctx) or n_ctx)
        self._cache_factory = lambda: DynamicCache(config=config)
        self.cache = self._cache_factory()
        self.tokens: list[int] = []
        self.last_hidden: torch.Tensor | None = None
        self._hidden = _Rows(config.hidden_size, self.model.dtype, self.device)  # of every cached position
        self._partial = 0  # cache rows beyond ``tokens`` (forward_layers, a tree) since the last truncation
        self._tree = _Tree()  # the pending tree, between forward_tree and keep
        self._load_vocabulary()

    def sibling(self, model: Path) -> "TorchBackend":
        """Another model (a resolved path) with this one's settings (used for a draft model)."""
        return TorchBackend(model, dtype=self.dtype, device=self.device, n_ctx=self.n_ctx,
                            n_threads=self.n_threads, max_tree_nodes=self.max_tree_nodes)

    def close(self) -> None:
        """Drop the cache and the kept hidden states (the weights go when the backend is collected)."""
        self.cache = self._cache_factory()
        self.tokens, self.last_hidden, self._partial, self._tree = [], None, 0, _Tree()
        self._hidden.clear()

    # --- the KV cache -------------------------------------------------------------------------
    def prefill(self, tokens: Sequence[int], *, last_logits: bool = False) -> np.ndarray | None:
        """Make the cache hold exactly ``tokens``, reusing the longest cached common prefix.
        With ``last_logits`` return the logits after the last token [V] (re-evaluating that token
        if it was cached). ``last_hidden`` is set to the evaluated positions' hidden states (none
        when everything was cached: :meth:`hidden_states` has every position's)."""
        common = reusable_prefix(self.tokens, tokens, last_logits=last_logits)
        self.rollback(common)
        if common == len(tokens):
            self.last_hidden = self.last_hidden[:0] if self.last_hidden is not None else None  # nothing evaluated
            return None
        hidden = self._append(list(tokens[common:]))
        return self._logits(hidden[-1:])[0] if last_logits else None

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        """Append ``tokens`` (n >= 1); return logits for every new position [n, V]."""
        return self._logits(self._append(list(tokens)))

    def rollback(self, length: int) -> None:
        """Keep the first ``length`` cached tokens (and their hidden states)."""
        del self.tokens[length:]
        self._truncate(len(self.tokens))

    def hidden_states(self, start: int, stop: int) -> torch.Tensor:
        """The final hidden states of cached positions ``start .. stop - 1`` [stop - start, H]
        (a copy, in the model's dtype, on ``device``), whether or not the latest forward
        evaluated them."""
        if not 0 <= start <= stop <= len(self.tokens):
            raise QuickdraftError(f"hidden states of positions {start}..{stop - 1}: the cache holds "
                                  f"{len(self.tokens)} positions")
        return self._hidden.rows(start, stop)

    def forward_tree(self, tokens: Sequence[int], parents: Sequence[int], *,
                     rows: Sequence[int] | None = None) -> np.ndarray:
        """Evaluate a token tree (see tree.py) after the cache in one forward; return logits per
        node [N, V]. Node i sits at position ``len(cache) + depth(i)`` in cache row
        ``len(cache) + i`` and attends to the whole cache plus its ancestors and itself (a 4-D
        additive mask). The cache then holds every node (``tokens`` does not): call
        :meth:`extend_tree` to grow the tree or :meth:`keep` to settle on a path."""
        self._truncate(len(self.tokens))  # a partial draft or an earlier tree's nodes
        self._tree = _Tree()
        return self.extend_tree(tokens, parents, rows=rows)

    def extend_tree(self, tokens: Sequence[int], parents: Sequence[int], *,
                    rows: Sequence[int] | None = None) -> np.ndarray:
        """Add M nodes to the pending tree in one forward; ``parents`` index the pending tree
        (the new node j is node N + j); return their logits [M, V] (only ``rows`` of them, indices
        into the new nodes, when given: the LM head runs on those alone)."""
        pending = self._tree
        if len(tokens) != len(parents):
            raise InvalidParameterError(f"{len(parents)} tree nodes need {len(parents)} tokens, got {len(tokens)}")
        tree = layout((*pending.parents, *parents))
        if len(tree) > self.max_tree_nodes:
            raise InvalidParameterError(f"a tree of {len(tree)} nodes exceeds max_tree_nodes {self.max_tree_nodes}")
        start, n_old = len(self.tokens), len(pending.parents)
        hidden = self._run(list(tokens), positions=start + np.asarray(tree.depth[n_old:]),
                           mask=self._additive_mask(tree.mask[n_old:], start))
        self._partial += len(tokens)
        self.last_hidden = hidden
        self._tree = _Tree([*pending.tokens, *tokens], (*pending.parents, *parents), [*pending.hidden, hidden])
        return self._logits(hidden if rows is None else hidden[list(rows)])

    def keep(self, path: Sequence[int]) -> None:
        """After ``forward_tree``: keep the nodes of ``path`` (root first, node indices, each the
        parent of the next) in the cache, after the old cache, and drop the other nodes."""
        tree = self._tree
        if not tree.parents:
            raise QuickdraftError("keep() needs a forward_tree() first")
        check_path(tree.parents, path)
        start = len(self.tokens)
        index = torch.as_tensor([start + i for i in path], device=self.device)
        with torch.no_grad():
            for layer in self.cache.layers:
                layer.keys[..., start:start + len(path), :] = layer.keys.index_select(-2, index)
                layer.values[..., start:start + len(path), :] = layer.values.index_select(-2, index)
        self._hidden.append(torch.cat(tree.hidden)[list(path)])
        self.tokens += [tree.tokens[i] for i in path]
        self._tree = _Tree()
        self._truncate(len(self.tokens))

    def forward_layers(self, tokens: Sequence[int], layers: Sequence[int]) -> np.ndarray:
        """Append ``tokens`` through the decoder layers ``layers`` only (sorted indices; layer 0
        must be among them, it sizes the attention mask); return logits [n, V].

        Only those layers' caches grow. Successive calls continue the partial sequence; the next
        ``drop_partial``, ``forward``, ``prefill`` or ``rollback`` removes it (``tokens`` never
        includes it)."""
        if not layers or layers[0] != 0:
            raise QuickdraftError("forward_layers needs layer 0 among the layers it runs")
        start = len(self.tokens) + self._partial
        with self._only(layers):
            self.last_hidden = self._run(list(tokens), positions=np.arange(start, start + len(tokens)))
        self._partial += len(tokens)
        return self._logits(self.last_hidden)

    def replay(self, count: int, layers: Sequence[int] | None = None, *,
               layer_states: bool = False) -> np.ndarray | tuple[np.ndarray, "torch.Tensor"]:
        """Evaluate the last ``count`` cached tokens again, as if the cache ended before them,
        through ``layers`` (all by default; with layer 0 among them); the cache is left as it was.
        Returns logits [count, V] (row i predicts the token after cached token L - count + i), and
        with ``layer_states`` also the hidden states [n_layers + 1, count, H] (the embeddings, then
        each layer's output; the last after the final norm). Used to choose layers to skip;
        ``last_hidden`` and :meth:`hidden_states` are left as they were too."""
        start = len(self.tokens) - count
        if not 0 < count <= len(self.tokens):
            raise QuickdraftError(f"cannot replay {count} of {len(self.tokens)} cached tokens")
        causal = np.tril(np.ones((count, count), bool))
        visible = np.concatenate([np.zeros((count, count), bool), causal], axis=1)  # not the old copies
        mask = self._additive_mask(visible, start)
        try:
            with self._only(layers):
                hidden, states = self._run(self.tokens[start:], positions=np.arange(start, start + count),
                                           mask=mask, all_hidden=True)
        finally:
            self._truncate(len(self.tokens))
        logits = self._logits(hidden)
        return (logits, torch.stack(states)[:, 0]) if layer_states else logits

    def drop_partial(self) -> None:
        """Cut every layer's cache back to ``tokens`` (after ``forward_layers``)."""
        self._truncate(len(self.tokens))

    # --- internals ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _only(self, layers: Sequence[int] | None):
        """Run the decoder with only ``layers`` (all when None); each layer keeps its own cache slot."""
        full = self.decoder.layers
        if layers is not None:
            self.decoder.layers = torch.nn.ModuleList([full[i] for i in layers])
        try:
            yield
        finally:
            self.decoder.layers = full

    def _append(self, tokens: list[int]) -> torch.Tensor:
        """Feed ``tokens`` after the cache (dropping partial rows first) as new cached positions:
        they join ``tokens``, their final hidden states [n, H] join the kept rows and
        ``last_hidden``, and are returned."""
        if self._partial:
            self._truncate(len(self.tokens))
        hidden = self._run(tokens, positions=np.arange(len(self.tokens), len(self.tokens) + len(tokens)))
        self.tokens.extend(int(t) for t in tokens)
        self._hidden.append(hidden)
        self.last_hidden = hidden
        return hidden

    def _run(self, tokens: list[int], *, positions: np.ndarray, mask: torch.Tensor | None = None,
             all_hidden: bool = False):
        """Feed ``tokens`` at ``positions`` after the cache rows so far; return the final hidden
        states [n, H], and with ``all_hidden`` also every layer's (a tuple). The caller accounts
        for the cache rows they add (as cached tokens, or as ``_partial`` rows)."""
        if len(self.tokens) + len(tokens) > self.n_ctx:
            raise QuickdraftError(f"context full: {len(self.tokens)} + {len(tokens)} tokens > n_ctx {self.n_ctx}")
        if not tokens:
            raise QuickdraftError("forward needs at least one token")
        ids = torch.as_tensor([tokens], device=self.device)
        pos = torch.as_tensor(np.asarray(positions)[None], device=self.device)
        with torch.no_grad():
            out = self.decoder(input_ids=ids, position_ids=pos, attention_mask=mask,
                               past_key_values=self.cache, use_cache=True, output_hidden_states=all_hidden)
        hidden = out.last_hidden_state[0]
        return (hidden, out.hidden_states) if all_hidden else hidden

    def _logits(self, hidden: torch.Tensor) -> np.ndarray:
        """LM head on hidden states [n, H] -> float32 numpy logits [n, V]."""
        with torch.no_grad():
            return self.lm_head(hidden).float().cpu().numpy()

    def _additive_mask(self, visible: np.ndarray, start: int) -> torch.Tensor:
        """[1, 1, N, start + N]: 0 where a new node may attend (the whole cache, then ``visible``
        [N, N] among the new nodes), the dtype's minimum elsewhere."""
        allowed = np.concatenate([np.ones((len(visible), start), bool), visible], axis=1)
        dtype = self.model.dtype
        mask = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype)
        mask[torch.from_numpy(allowed)] = 0
        return mask[None, None].to(self.device)

    def _truncate(self, length: int) -> None:
        """Cut every layer's cache (and the kept hidden states) to at most ``length`` positions."""
        for layer in self.cache.layers:
            extra = layer.get_seq_length() - length
            if extra > 0:
                layer.crop(-extra)
        self._hidden.truncate(length)
        self._partial = 0

    # --- the vocabulary -----------------------------------------------------------------------
    def _load_vocabulary(self) -> None:
        tok = self.tokenizer
        n_tok = len(tok)
        texts = tok.convert_ids_to_tokens(list(range(min(n_tok, self.vocab_size))))
        special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
        to_bytes = piece_decoder(tok)
        self._text = [(t or "").encode("utf-8") for t in texts] + [b""] * (self.vocab_size - len(texts))
        self._bytes = [b"" if i in special or t is None else to_bytes(t) for i, t in enumerate(texts)]
        self._bytes += [b""] * (self.vocab_size - len(self._bytes))
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        eog = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
        eog |= {i for i, t in enumerate(texts) if t in END_OF_TURN}
        self._eog = {int(i) for i in eog if i is not None and 0 <= i < self.vocab_size}
        if not self._eog:
            raise QuickdraftError(f"{self.path.name}: the tokenizer names no end-of-sequence token")
        self.eos_token = int(tok.eos_token_id if tok.eos_token_id is not None else min(self._eog))
        self.chat_template = tok.chat_template if isinstance(tok.chat_template, str) else None

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of ``text``. ``special``: parse control tokens written in the text (chat
        templates, which render any BOS themselves); otherwise add the model's BOS (if it uses one)
        and treat control-token text as plain text."""
        return list(self.tokenizer(text, add_special_tokens=not special,
                                   split_special_tokens=not special)["input_ids"])

    def token_bytes(self, token: int) -> bytes:
        return self._bytes[token]

    def token_text(self, token: int) -> bytes:
        """The vocabulary entry itself (for comparing vocabularies)."""
        return self._text[token]

    def is_end_of_generation(self, token: int) -> bool:
        return token in self._eog

    def chat_prompt(self, messages: list[dict], tools: Sequence[dict] | None = None) -> str | None:
        if not self.chat_template:
            return None
        return render_chat(self.chat_template, messages, tools=tools, bos=self.tokenizer.bos_token or "",
                           eos=self.tokenizer.eos_token or "")


class _Rows:
    """Rows [n, H] that grow at the end and are cut back: the final hidden states of the cached
    positions. The storage doubles when full, so appending a step's rows copies only them."""

    def __init__(self, width: int, dtype: torch.dtype, device: str) -> None:
        self._store = torch.empty(0, width, dtype=dtype, device=device)
        self.length = 0

    def append(self, rows: torch.Tensor) -> None:
        need = self.length + len(rows)
        if need > len(self._store):
            grown = self._store.new_empty((max(need, 2 * len(self._store), 64), self._store.shape[1]))
            grown[:self.length] = self._store[:self.length]
            self._store = grown
        self._store[self.length:need] = rows
        self.length = need

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    def clear(self) -> None:
        """No rows, and no storage held."""
        self._store, self.length = self._store[:0].clone(), 0

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self._store[start:stop].clone()


class _Tree:
    """The pending token tree between ``forward_tree`` and ``keep``: its nodes' tokens and
    parents, and their final hidden states (one tensor per forward)."""

    def __init__(self, tokens: Sequence[int] = (), parents: Sequence[int] = (),
                 hidden: Sequence[torch.Tensor] = ()) -> None:
        self.tokens, self.parents, self.hidden = list(tokens), tuple(parents), list(hidden)


def piece_decoder(tokenizer):
    """vocabulary entry (str) -> the bytes it stands for: GPT-2 byte-level BPE entries map each
    character back to a byte; SentencePiece entries write '▁' for a space and <0xAB> for bytes."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is not None and "ByteLevel" in repr(decoder):
        table = {ch: b for b, ch in enumerate(_byte_level_alphabet())}

        def byte_level(piece: str) -> bytes:
            try:
                return bytes(table[c] for c in piece)
            except KeyError:  # an added (non-byte-level) token
                return piece.encode("utf-8")
        return byte_level

    def sentencepiece(piece: str) -> bytes:
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")
    return sentencepiece


def _byte_level_alphabet() -> list[str]:
    """The character GPT-2's byte-level BPE writes for each byte 0..255: printable Latin-1
    bytes stand for themselves, the others are shifted to 256 and up, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(shifted)) for b in range(256)]


@contextlib.contextmanager
def quiet_transformers(verbose: bool = False):
    """Keep transformers' warnings and progress bars (GGUF conversion, saving shards) off the
    terminal, unless ``verbose``."""
    if verbose:
        yield
        return
    import transformers

    logging = transformers.utils.logging
    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.set_verbosity(before)
