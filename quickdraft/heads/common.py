"""What Medusa and EAGLE heads share: the draft vocabulary, the target's identity, save and load.

A heads directory (``--heads DIR``) holds ``config.json`` (:class:`HeadConfig`: the kind, its
shape, the target it was trained on, how it was trained) and ``heads.safetensors`` (the head's
own weights, plus ``vocab_ids`` for a reduced draft vocabulary). The target's LM head and token
embedding are never saved: heads borrow them, frozen, from the target they run on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import HeadsMismatchError, QuickdraftError
from ..system import cache_dir

FORMAT = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "heads.safetensors"


@dataclass
class HeadConfig:
    """Everything needed to rebuild a head and check it against a target.

    kind: "medusa" or "eagle". target: :func:`describe_target` of the model it was trained on.
    draft_vocab: how many token ids the head can draft (the target's vocab_size when full).
    shape: the kind's constructor arguments (e.g. num_heads). training: what produced the
    weights (corpus, tokens, minutes, steps, final loss, per-head accuracy); informational.
    """

    kind: str
    target: dict
    draft_vocab: int
    shape: dict
    training: dict = field(default_factory=dict)
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "HeadConfig":
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise QuickdraftError(f"heads format {data.get('format')!r} is not supported (expected {FORMAT})")
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def describe_target(model: nn.Module) -> dict:
    """The identity of a transformers causal LM: architecture, sizes and a weight fingerprint.

    The fingerprint hashes a fixed sample of the weights rounded to bfloat16, so the same model
    loaded in float32 or bfloat16 (or dequantized from the same GGUF) gives the same value.
    """
    config = model.config
    return {
        "architecture": type(model).__name__,
        "hidden_size": int(config.hidden_size),
        "vocab_size": int(model.get_output_embeddings().weight.shape[0]),
        "num_layers": int(getattr(config, "num_hidden_layers", 0)),
        "fingerprint": _fingerprint(model),
    }


def _fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    named = sorted(model.named_parameters(), key=lambda item: item[0])
    picks = [named[i] for i in sorted({round(j * (len(named) - 1) / 7) for j in range(8)})]
    embed = model.get_input_embeddings().weight
    rows = torch.linspace(0, embed.shape[0] - 1, 64).long()
    samples = [("embed-rows", embed.detach()[rows, :64])]
    samples += [(name, p.detach().reshape(-1)[:4096]) for name, p in picks]
    for name, values in samples:
        digest.update(name.encode())
        digest.update(values.to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def check_target(config: HeadConfig, model: nn.Module, where: Path | str) -> None:
    """Refuse heads trained on another model (architecture, sizes or weights differ)."""
    actual = describe_target(model)
    for key in ("architecture", "hidden_size", "vocab_size", "num_layers", "fingerprint"):
        if config.target.get(key) != actual[key]:
            raise HeadsMismatchError(
                f"the {config.kind} heads in {where} were trained on another model: their target has "
                f"{key} {config.target.get(key)!r}, this target has {actual[key]!r} "
                f"(trained on {config.target.get('architecture')} with hidden size "
                f"{config.target.get('hidden_size')} and {config.target.get('vocab_size')} tokens); "
                f"train heads for this target with `quickdraft train {config.kind} --target ...`")


class DraftVocab:
    """The tokens a head may draft, decoded by the target's frozen LM head.

    ``ids`` [Vd] are full-vocabulary token ids (EAGLE-3's reduced vocabulary: the most frequent
    tokens of the training data), or None for the whole vocabulary. Head logits are over the
    Vd draft ids: index i stands for token ``ids[i]``.
    """

    def __init__(self, lm_head: nn.Linear, ids: torch.Tensor | None, dtype: torch.dtype | None = None) -> None:
        weight, bias = lm_head.weight.detach(), getattr(lm_head, "bias", None)
        self.vocab_size = weight.shape[0]
        self.ids = None if ids is None else ids.to(device=weight.device, dtype=torch.long)
        if self.ids is not None:
            weight = weight[self.ids]
            bias = None if bias is None else bias.detach()[self.ids]
        dtype = dtype or weight.dtype
        self.weight = weight.to(dtype)  # [Vd, H]
        self.bias = None if bias is None else bias.detach().to(dtype)

    def __len__(self) -> int:
        return self.weight.shape[0]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., H] -> logits over the draft vocabulary [..., Vd]."""
        return nn.functional.linear(features.to(self.weight.dtype), self.weight, self.bias)

    def to_full(self, index: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary indices [...] -> full token ids [...]."""
        return index if self.ids is None else self.ids[index]

    def from_full(self, tokens: torch.Tensor, ignore: int = -100) -> torch.Tensor:
        """Full token ids [...] -> draft-vocabulary indices, ``ignore`` for tokens outside it."""
        if self.ids is None:
            return tokens
        table = torch.full((self.vocab_size,), ignore, dtype=torch.long, device=self.ids.device)
        table[self.ids] = torch.arange(len(self.ids), device=self.ids.device)
        return table[tokens.to(self.ids.device)]


def most_frequent(tokens: torch.Tensor, vocab_size: int, size: int) -> torch.Tensor | None:
    """The at most ``size`` most frequent ids among ``tokens`` (ties: lower id first; ids that
    never occur are left out), sorted by id; None when ``size`` is 0 or covers the vocabulary."""
    if size <= 0 or size >= vocab_size:
        return None
    counts = torch.bincount(tokens.reshape(-1).long(), minlength=vocab_size)
    order = torch.argsort(-counts, stable=True)[:size]
    return torch.sort(order[counts[order] > 0]).values


def save_heads(directory: Path, config: HeadConfig, head: nn.Module, vocab_ids: torch.Tensor | None) -> None:
    """Write ``config.json`` and ``heads.safetensors`` into ``directory`` (created if missing),
    replacing both atomically enough that an interrupted save leaves the old pair readable."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    if vocab_ids is not None:
        tensors["vocab_ids"] = vocab_ids.detach().cpu().long().contiguous()
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(directory / WEIGHTS_FILE)
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(config.to_json())
    tmp.replace(directory / CONFIG_FILE)


def heads_dir(heads: Path | str | None, kind: str) -> Path:
    """Where the ``kind`` heads are: ``heads`` itself, its ``kind`` subdirectory (so one
    directory can hold both kinds), or, when ``heads`` is None, ``<cache>/heads/<kind>``, where
    ``quickdraft train`` saves by default."""
    root = Path(heads).expanduser() if heads else cache_dir() / "heads"
    for candidate in (root, root / kind):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    if not heads:
        raise QuickdraftError(f"method '{kind}' needs trained heads: pass --heads DIR, or make them with "
                              f"`quickdraft train {kind}` (saved to {root / kind})")
    return root


def read_config(directory: Path | str) -> HeadConfig:
    directory = Path(directory).expanduser()
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise QuickdraftError(f"{directory} holds no trained heads ({CONFIG_FILE} is missing); "
                              "make some with `quickdraft train medusa|eagle --target MODEL --out DIR`")
    return HeadConfig.from_json(path.read_text())


def load_heads(directory: Path | str, kind: str, model: nn.Module | None = None
               ) -> tuple[HeadConfig, dict[str, torch.Tensor], torch.Tensor | None]:
    """Read a heads directory of ``kind``; with ``model``, check it was trained on that target.
    Returns (config, head state dict, vocab ids or None)."""
    directory = Path(directory).expanduser()
    config = read_config(directory)
    if config.kind != kind:
        raise QuickdraftError(f"{directory} holds {config.kind} heads, not {kind} heads")
    if model is not None:
        check_target(config, model, directory)
    tensors = load_file(str(directory / WEIGHTS_FILE))
    vocab_ids = tensors.pop("vocab_ids", None)
    return config, tensors, vocab_ids
