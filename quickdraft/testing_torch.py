"""Tiny random-weight transformers models for tests of the torch backend (no downloads).

``write_tiny_hf`` writes a transformers model directory (``save_pretrained``): a Qwen2 or Llama
config with a few small layers, random weights, and a tiny byte-level BPE tokenizer (trained in
milliseconds with the ``tokenizers`` library on a built-in text, saved as a fast tokenizer with a
ChatML chat template). ``make_tiny_hf_pair`` writes a target and a correlated draft that share the
tokenizer. Like ``quickdraft.testing`` (whose weight recipe this reuses): every tensor comes from
its own seeded stream, scaled so that logits have a standard deviation of ``logit_scale`` (greedy
choices are well separated, so argmax comparisons do not flake), the end-of-generation rows of the
output matrix are shrunk so generations run long, and tokens with unprintable bytes are rarely
chosen. ``perturb`` with ``base_seed`` gives ``base + perturb * noise`` (a draft).

Worked example::

    from quickdraft.testing_torch import make_tiny_hf_pair
    target_dir, draft_dir = make_tiny_hf_pair(tmp_path)            # 4 layers each
    backend = TorchBackend(target_dir, dtype="float32")               # exact comparisons

Token ids: 0 ``<|endoftext|>``, 1 ``<|im_start|>``, 2 ``<|im_end|>`` (EOS), then the 256 byte
characters and the learned merges (``TINY_VOCAB_SIZE`` in all).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .testing import DEFAULT_TINY_CHAT_TEMPLATE, DEFAULT_WORDS, DRAFT_PERTURB, seeded_tensor

__all__ = ["TINY_VOCAB_SIZE", "make_tiny_hf_pair", "tiny_tokenizer", "write_tiny_hf"]

TINY_VOCAB_SIZE = 400
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_CORPUS = [
    " ".join(DEFAULT_WORDS),
    "def add(a, b):\n    return a + b\n",
    "for i in range(len(data)):\n    print(i, data[i])\n",
    "class Test:\n    def __init__(self, value):\n        self.value = value\n",
    "the user asked the assistant for some code that prints hello world\n",
    "if value is None:\n    return False\nelse:\n    return True\n",
] * 4


def tiny_tokenizer():
    """A byte-level BPE ``PreTrainedTokenizerFast`` of ``TINY_VOCAB_SIZE`` tokens (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB_SIZE, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=DEFAULT_TINY_CHAT_TEMPLATE)


def _std(name: str, hidden: int, ff: int, logit_scale: float) -> float | None:
    """The weight recipe of quickdraft.testing by parameter name (None: a norm weight of ones)."""
    if "norm" in name:
        return None
    table = {"embed_tokens": 1.0, "q_proj.weight": 1.5 / np.sqrt(hidden), "k_proj.weight": 1.5 / np.sqrt(hidden),
             "q_proj.bias": 0.5, "k_proj.bias": 0.5, "v_proj.bias": 0.1, "down_proj": 1.0 / np.sqrt(ff),
             "lm_head": logit_scale / np.sqrt(hidden)}
    return next((std for key, std in table.items() if key in name), 1.0 / np.sqrt(hidden))


def _row_scales(tokenizer, eog_row_scale: float) -> np.ndarray:
    """Output-row factors: end-of-generation rows ``eog_row_scale``, <|im_start|> and tokens
    with unprintable bytes 0.25 (rarely chosen), the rest 1."""
    from .backends.torch_hf import piece_decoder

    to_bytes = piece_decoder(tokenizer)
    scale = np.ones(len(tokenizer), dtype=np.float32)
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if piece in SPECIALS:
            scale[i] = 0.25 if piece == "<|im_start|>" else eog_row_scale
        elif any(not (0x20 <= b < 0x7F or b in (0x09, 0x0A)) for b in to_bytes(piece)):
            scale[i] = 0.25
    return scale


def write_tiny_hf(path: str | os.PathLike[str], *, arch: str = "qwen2", n_layer: int = 4, hidden: int = 64,
                  n_head: int = 4, n_head_kv: int = 2, ff: int = 128, seed: int = 0, perturb: float = 0.0,
                  base_seed: int | None = None, logit_scale: float = 8.0, eog_row_scale: float = 0.7) -> Path:
    """Write a tiny random-weight transformers model + tokenizer into the directory ``path``.

    arch: "qwen2" (q/k/v biases) or "llama". perturb, base_seed: weights = base(base_seed) +
    perturb * noise(seed). Returns ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if arch not in ("qwen2", "llama"):
        raise ValueError(f"arch must be 'qwen2' or 'llama', not {arch!r}")
    if perturb < 0 or (perturb > 0 and base_seed is None):
        raise ValueError("perturb > 0 needs base_seed, and perturb must not be negative")
    tokenizer = tiny_tokenizer()
    config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = config_class(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=ff,
                          num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_head_kv,
                          max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
                          bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = model_class(config)
    rows = _row_scales(tokenizer, eog_row_scale)
    with torch.no_grad():
        for name, param in model.named_parameters():
            data = seeded_tensor(name, tuple(param.shape), _std(name, hidden, ff, logit_scale), seed=seed,
                                 base_seed=base_seed, perturb=perturb)
            if name == "lm_head.weight":
                data = data * rows[:, None]
            param.copy_(torch.from_numpy(data))
    path = Path(path)
    from .backends.torch_hf import quiet_transformers

    with quiet_transformers():  # no "Writing model shards" bar
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def make_tiny_hf_pair(dir: str | os.PathLike[str], *, arch: str = "qwen2", n_layer: int = 4,
                      perturb: float = DRAFT_PERTURB) -> tuple[Path, Path]:
    """Write ``(target_dir, draft_dir)`` into ``dir``: same tokenizer and shape, the draft's
    weights are the target's plus ``perturb`` relative noise."""
    dir = Path(dir)
    target = write_tiny_hf(dir / f"tiny-hf-{arch}-target", arch=arch, n_layer=n_layer, seed=0)
    draft = write_tiny_hf(dir / f"tiny-hf-{arch}-draft", arch=arch, n_layer=n_layer, seed=1,
                          perturb=perturb, base_seed=0)
    return target, draft
