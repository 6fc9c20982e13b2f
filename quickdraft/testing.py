"""Tiny random-weight GGUF models for tests and benches.

``write_tiny_gguf`` writes a real GGUF file (``llama`` or ``qwen2`` architecture, float32 or
float16 weights) that llama.cpp loads and runs in milliseconds. ``make_tiny_pair`` writes a
*target* and a correlated *draft* that share a vocabulary, so speculative decoding has something
to accept and something to reject.

Worked example::

    from quickdraft.testing import make_tiny_pair, write_tiny_gguf, TinyVocab
    target, draft = make_tiny_pair(tmp_path)                        # same vocabulary
    other = write_tiny_gguf(tmp_path / "bigger.gguf",
                            vocab=TinyVocab(extra_words=("banana",)))  # larger vocabulary
    permuted = write_tiny_gguf(tmp_path / "perm.gguf",
                               vocab=TinyVocab(shuffle_seed=1))     # same size, other texts

Tokenizer
---------
The vocabulary is SentencePiece-style (``tokenizer.ggml.model = "llama"``, llama.cpp's SPM
tokenizer). It is the least fiddly type to synthesize: no merge table and no pre-tokenizer regex
(GPT2-BPE needs both, and every multi-character token must be reachable through the merges),
and the 256 byte-fallback tokens ``<0x00>``..``<0xFF>`` make *any* text tokenizable. SPM merges
adjacent symbols whenever their concatenation is a token (highest score first), so every prefix
of every word piece is in the vocabulary too, which keeps words reachable. ``add_space_prefix`` is
off, so ``detokenize(tokenize(text)) == text`` exactly for any text (like Qwen's byte-level BPE,
and unlike Llama-1, which prepends a space).

Token ids (``TinyVocab``)::

    0 <unk> (unknown)    1 <s> (bos, control)    2 </s> (eos, control)
    3 <|im_start|>       4 <|im_end|> (control; llama.cpp also treats <|im_end|> as end-of-turn)
    5..260               <0x00>..<0xFF> byte fallback
    261..                printable ASCII characters, then SPM pieces ("▁the", "▁def", ...)

Weights
-------
Every tensor is drawn from its own numpy stream, seeded by ``(seed, tensor name)``, so models
made with the same seed share whole tensors even when their layer counts differ. The scales keep
activations near unit size: embeddings N(0, 1), projections N(0, 1/fan_in) (q and k a bit
larger, so attention is peaked and the prediction depends on the context and not only on the
last token), RMS-norm weights 1. The output matrix is scaled so that logits have a standard
deviation of ``logit_scale`` (default 8): the greedy top-1 / top-2 margin has a median of ~1.5
and is below 0.01 on under 1% of positions, against a ~2e-5 numerical difference between
batched and one-token evaluation, so argmax comparisons do not flake.

That ~2e-5 needs an F32 KV cache (``type_k = type_v = GGML_TYPE_F32``) and flash attention
disabled. With llama.cpp's defaults (f16 KV cache, flash attention "auto", which is on for CPU)
batched and one-token logits differ by up to ~1e-2 (f16 rounding in attention). That flips the
greedy argmax on roughly 1 position in a few thousand, and scaling the logits does not help
because the error scales with them. Token-for-token comparisons on these models should use
the F32 configuration.

A random model would emit its end-of-generation tokens (``</s>``, ``<|im_end|>``; llama.cpp
treats both as end-of-generation) often: with unscaled rows about a third of 60-token greedy
generations stop early. To keep test generations long and printable, their output-matrix rows
are shrunk (honestly, in the weights): the EOS / ``<|im_end|>`` rows by ``eog_row_scale``
(default 0.7: about 1 in 200 greedy generations stops within 60 tokens; 2.0 makes almost every
generation stop within a few tokens, for tests of stopping), and the rows of ``<unk>``, ``<s>``,
``<|im_start|>`` and of the byte tokens other than printable ASCII, newline and tab by 0.25
(practically never chosen, so generated text is printable ASCII).

Draft models
------------
``perturb > 0`` with ``base_seed`` gives ``w = base + perturb * noise``, where ``base`` is the
model ``write_tiny_gguf`` would write with ``seed=base_seed`` and ``noise`` is a fresh draw with
``seed`` at the same per-tensor scale (norm weights are left at 1). ``make_tiny_pair`` uses
``perturb=DRAFT_PERTURB`` (0.05), for a draft whose greedy choice matches the target's on about
75% of positions (0.03: ~85%, 0.1: ~50%; measured in ``tests/unit/test_tiny_models.py``).
``base_seed`` with ``perturb=0`` copies the base exactly. Because tensors are seeded by name, a
draft with fewer layers (``n_layer=1, base_seed=0``) shares the target's first layers, but
agrees only ~30% of the time: useful for a proposer that does not pay.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CROSS_WORDS",
    "DEFAULT_TINY_CHAT_TEMPLATE",
    "DEFAULT_WORDS",
    "DRAFT_PERTURB",
    "TinyVocab",
    "make_tiny_pair",
    "seeded_tensor",
    "write_tiny_cross_draft",
    "write_tiny_gguf",
]

#: A minimal ChatML template (what Qwen2.5 uses), stored in ``tokenizer.chat_template``. Like
#: Qwen2.5's it renders tools (a system turn listing them) and tool calls in Hermes' format
#: (``<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>``, tool results as
#: ``<tool_response>`` user turns); messages without them render as plain ChatML.
DEFAULT_TINY_CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\n# Tools\n<tools>' }}"
    "{% for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\n</tools>\nCall a tool as <tool_call>\n{\"name\": NAME, \"arguments\": {...}}\n</tool_call>"
    "<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% for call in message['tool_calls'] or [] %}"
    "{{ '\n<tool_call>\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": '"
    " + (call['function']['arguments'] | tojson) + '}\n</tool_call>' }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Relative noise of the draft in ``make_tiny_pair`` (see module docstring).
DRAFT_PERTURB = 0.05

#: Common short English and code words; each becomes an SPM piece with and without '▁'.
DEFAULT_WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "in", "is", "it", "that", "for", "on", "with", "as", "was", "be",
    "at", "by", "this", "are", "or", "an", "not", "from", "but", "have", "you", "we", "they",
    "he", "she", "his", "her", "all", "one", "can", "will", "there", "what", "so", "if", "do",
    "no", "yes", "hello", "world", "user", "assistant", "system", "time", "code", "data",
    "def", "return", "import", "class", "self", "print", "else", "elif", "while", "None",
    "True", "False", "lambda", "yield", "pass", "int", "str", "list", "len", "range", "value",
    "name", "args", "test", "ing", "ed", "er", "es", "ly",
)
_CODE_PIECES: tuple[str, ...] = ("▁▁▁▁", "()", "):", "==", "->", "__", "\",", "',", "[]", "{}")

# llama.cpp / gguf token types
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6

_SPECIALS = (("<unk>", _UNKNOWN), ("<s>", _CONTROL), ("</s>", _CONTROL),
             ("<|im_start|>", _CONTROL), ("<|im_end|>", _CONTROL))
UNK_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID = range(5)
_FIRST_BYTE_ID = len(_SPECIALS)


@dataclass(frozen=True)
class TinyVocab:
    """A small SPM vocabulary (a few hundred tokens); see the module docstring for the layout.

    extra_words: more words (each adds itself, '▁'+itself and their prefixes): a larger vocabulary.
    shuffle_seed: permute the ids of the normal pieces (specials and bytes stay put): same size,
        different text at many ids.
    words: the base word list.
    """

    extra_words: tuple[str, ...] = ()
    shuffle_seed: int | None = None
    words: tuple[str, ...] = DEFAULT_WORDS

    def pieces(self) -> list[tuple[str, float, int]]:
        """Return the vocabulary as ``[(text, score, token_type)]`` in id order."""
        out: list[tuple[str, float, int]] = [(t, 0.0, ty) for t, ty in _SPECIALS]
        out += [(f"<0x{b:02X}>", 0.0, _BYTE) for b in range(256)]
        seen = {t for t, _, _ in out}
        normal: list[str] = []

        def add(piece: str) -> None:
            if piece and piece not in seen:
                seen.add(piece)
                normal.append(piece)

        add("▁")
        for c in range(0x21, 0x7F):                 # printable ASCII; ' ' is '▁'
            add(chr(c))
        for word in (*self.words, *self.extra_words, *_CODE_PIECES):
            for variant in (word, word if word.startswith("▁") else "▁" + word):
                for end in range(2, len(variant) + 1):  # every prefix: SPM can reach the word
                    add(variant[:end])
        if self.shuffle_seed is not None:
            order = np.random.default_rng(self.shuffle_seed).permutation(len(normal))
            normal = [normal[i] for i in order]
        # SPM merges the highest score first: prefer longer pieces.
        out += [(p, float(len(p)), _NORMAL) for p in normal]
        return out

    @property
    def n_vocab(self) -> int:
        return len(self.pieces())


def _row_scales(pieces: list[tuple[str, float, int]], eog_row_scale: float) -> np.ndarray:
    """Per-token factor on the output-matrix row (see "A random model would emit ..." above)."""
    scale = np.ones(len(pieces), dtype=np.float32)
    for tok in (UNK_ID, BOS_ID, IM_START_ID):
        scale[tok] = 0.25
    for tok in (EOS_ID, IM_END_ID):
        scale[tok] = eog_row_scale
    for b in range(256):
        printable = 0x20 <= b < 0x7F or b in (0x09, 0x0A)
        if not printable:
            scale[_FIRST_BYTE_ID + b] = 0.25
    return scale


def _tensor_specs(arch: str, n_vocab: int, n_layer: int, n_embd: int, n_head: int,
                  n_head_kv: int, n_ff: int, logit_scale: float) -> list[tuple[str, tuple[int, ...], float | None]]:
    """``[(name, numpy shape (out, in), std or None for a norm weight of ones)]``."""
    head_dim = n_embd // n_head
    n_kv = n_head_kv * head_dim
    qk_std = 1.5 / np.sqrt(n_embd)          # attention scores with std ~2: peaked, context-dependent
    specs: list[tuple[str, tuple[int, ...], float | None]] = [
        ("token_embd.weight", (n_vocab, n_embd), 1.0),
        ("output_norm.weight", (n_embd,), None),
        ("output.weight", (n_vocab, n_embd), logit_scale / np.sqrt(n_embd)),
    ]
    for i in range(n_layer):
        b = f"blk.{i}."
        specs += [
            (b + "attn_norm.weight", (n_embd,), None),
            (b + "attn_q.weight", (n_embd, n_embd), qk_std),
            (b + "attn_k.weight", (n_kv, n_embd), qk_std),
            (b + "attn_v.weight", (n_kv, n_embd), 1.0 / np.sqrt(n_embd)),
            (b + "attn_output.weight", (n_embd, n_embd), 1.0 / np.sqrt(n_embd)),
            (b + "ffn_norm.weight", (n_embd,), None),
            (b + "ffn_gate.weight", (n_ff, n_embd), 1.0 / np.sqrt(n_embd)),
            (b + "ffn_up.weight", (n_ff, n_embd), 1.0 / np.sqrt(n_embd)),
            (b + "ffn_down.weight", (n_embd, n_ff), 1.0 / np.sqrt(n_ff)),
        ]
        if arch == "qwen2":
            specs += [
                (b + "attn_q.bias", (n_embd,), 0.5),
                (b + "attn_k.bias", (n_kv,), 0.5),
                (b + "attn_v.bias", (n_kv,), 0.1),
            ]
    return specs


def _draw(seed: int, name: str, shape: tuple[int, ...], std: float) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)


def seeded_tensor(name: str, shape: tuple[int, ...], std: float | None, *, seed: int,
                  base_seed: int | None = None, perturb: float = 0.0) -> np.ndarray:
    """One float32 tensor of the tiny-model recipe (see "Draft models" above): ones when ``std``
    is None (a norm weight), else a normal draw of that std from its own stream, seeded by
    ``seed`` and ``name``; with ``base_seed``, the base model's draw plus ``perturb`` x this one."""
    if std is None:
        return np.ones(shape, dtype=np.float32)
    if base_seed is None:
        return _draw(seed, name, shape, std)
    data = _draw(base_seed, name, shape, std)
    if perturb > 0:
        data += np.float32(perturb) * _draw(seed, name, shape, std)
    return data


def write_tiny_gguf(
    path: str | os.PathLike[str],
    *,
    arch: str = "qwen2",
    vocab: TinyVocab | None = None,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx_train: int = 2048,
    seed: int = 0,
    perturb: float = 0.0,
    base_seed: int | None = None,
    chat_template: str | None = DEFAULT_TINY_CHAT_TEMPLATE,
    logit_scale: float = 8.0,
    eog_row_scale: float = 0.7,
    f16: bool = False,
    add_space_prefix: bool = False,
) -> Path:
    """Write a tiny random-weight GGUF model that llama.cpp can load; return its path.

    arch: "qwen2" (q/k/v biases, NEOX rope) or "llama" (no biases, normal rope).
    perturb, base_seed: weights = base(base_seed) + perturb * noise(seed) (base_seed None: seed).
    logit_scale: standard deviation of the logits (large = well-separated greedy choices).
    eog_row_scale: factor on the EOS and <|im_end|> output rows (< 1: ends less often).
    f16: store the matrices as float16 (norms and biases stay float32).
    add_space_prefix: the tokenizer puts a space before a text (Llama-1 style), so it does not give
        back the text it tokenized ("hi" comes back " hi"): a draft that cannot bridge vocabularies.
    The file is written to a temporary name and renamed, so readers never see half a file.
    """
    import gguf  # imported here: only tests and benches need it

    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be 'llama' or 'qwen2', not {arch!r}")
    if n_embd % n_head or n_head % n_head_kv:
        raise ValueError("n_embd must be divisible by n_head, and n_head by n_head_kv")
    if perturb < 0 or (perturb > 0 and base_seed is None):
        raise ValueError("perturb > 0 needs base_seed, and perturb must not be negative")
    vocab = vocab or TinyVocab()
    pieces = vocab.pieces()
    n_vocab = len(pieces)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(f"quickdraft-tiny-{arch}-s{seed}" + (f"-b{base_seed}-p{perturb:g}" if perturb else ""))
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
        w.add_context_length(n_ctx_train)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(n_ff)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_rope_dimension_count(n_embd // n_head)
        w.add_rope_freq_base(1_000_000.0 if arch == "qwen2" else 10_000.0)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_vocab_size(n_vocab)

        w.add_tokenizer_model("llama")
        w.add_token_list([p[0] for p in pieces])
        w.add_token_scores([p[1] for p in pieces])
        w.add_token_types([p[2] for p in pieces])
        w.add_bos_token_id(BOS_ID)
        w.add_eos_token_id(EOS_ID)
        w.add_unk_token_id(UNK_ID)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(add_space_prefix)
        if chat_template is not None:
            w.add_chat_template(chat_template)

        specs = _tensor_specs(arch, n_vocab, n_layer, n_embd, n_head, n_head_kv, n_ff, logit_scale)
        for name, shape, std in specs:
            data = seeded_tensor(name, shape, std, seed=seed, base_seed=base_seed, perturb=perturb)
            if name == "output.weight":
                data = data * _row_scales(pieces, eog_row_scale)[:, None]
            if f16 and data.ndim == 2:
                data = data.astype(np.float16)
            w.add_tensor(name, np.ascontiguousarray(data))

        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: Words a draft of another vocabulary adds (``write_tiny_cross_draft``): they extend pieces of the
#: base words (" no" -> " none", " the" -> " these"), so the two tokenizers part often on ordinary text.
CROSS_WORDS: tuple[str, ...] = ("none", "these", "those", "then", "another", "nothing", "order", "thing", "once")


def write_tiny_cross_draft(path: str | os.PathLike[str], *, arch: str = "qwen2", words: tuple[str, ...] = CROSS_WORDS,
                           perturb: float = DRAFT_PERTURB) -> Path:
    """A draft for ``make_tiny_pair``'s target with another vocabulary that still agrees with it
    often: the target's vocabulary plus ``words`` (their pieces take ids after the base words', so
    the code pieces move), and the target's weights plus ``perturb`` noise. Each tensor is drawn row
    by row from its own stream, so a token at the same id in both vocabularies has the same
    embedding and output row; the added pieces tokenize the same text differently (" none" is one
    token here, " no" + "ne" in the target)."""
    return write_tiny_gguf(path, arch=arch, vocab=TinyVocab(extra_words=words), seed=1, perturb=perturb, base_seed=0)


def make_tiny_pair(dir: str | os.PathLike[str], *, arch: str = "qwen2",
                   perturb: float = DRAFT_PERTURB) -> tuple[Path, Path]:
    """Write ``(target, draft)`` into ``dir``: same vocabulary and shape, correlated weights.

    The draft is the target plus ``perturb`` relative noise, so its greedy choice agrees with the
    target's often but not always (about 75% of positions at the default).
    """
    dir = Path(dir)
    target = write_tiny_gguf(dir / f"tiny-{arch}-target.gguf", arch=arch, seed=0)
    draft = write_tiny_gguf(dir / f"tiny-{arch}-draft.gguf", arch=arch, seed=1,
                            perturb=perturb, base_seed=0)
    return target, draft
