"""An EAGLE-style draft head (Li et al. 2024, arXiv 2401.15077 and 2406.16858): one decoder
layer that extrapolates the target's features, decoded by the target's frozen LM head (or a
reduced draft vocabulary, as in EAGLE-3).

Offsets. ``f_t`` is the target's final hidden state at position t (its LM head predicts x_{t+1}
from it). The head's input at position t is fc(concat(f_t, embed(x_{t+1}))); its output is a
guess of f_{t+1}, whose LM-head decoding predicts x_{t+2}. Knowing the next token removes the
uncertainty the feature alone cannot resolve. Drafting feeds its own guesses back: from
(f̂_{t+1}, x̂_{t+2}) it guesses f_{t+2}, and so on. The head has its own KV cache over positions.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import DraftVocab


class KVCache:
    """Keys and values of the positions the head has read: k, v [B, kv_heads, S, head_dim]."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions."""
        if self.k is not None:
            self.k, self.v = self.k[:, :, :length], self.v[:, :, :length]


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding (rotate-half form). x [B, heads, T, d], positions [T]."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None]  # [T, d/2]
    cos, sin = torch.cat([angles, angles], -1).cos().to(x.dtype), torch.cat([angles, angles], -1).sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


class EagleHead(nn.Module):
    """fc(concat(feature, embedding)) followed by one pre-norm decoder layer (GQA attention with
    rotary positions, SwiGLU MLP).

    forward(features [B, T, H], embeds [B, T, H], positions [T], cache, mask) -> [B, T, H]
    guessed next features. ``mask`` [T, S] (bool, True = may attend; S = cached + T) defaults
    to causal; a tree passes its ancestor mask.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 intermediate_size: int, rope_theta: float = 10000.0, rms_norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.shape = dict(hidden_size=hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
                          head_dim=head_dim, intermediate_size=intermediate_size, rope_theta=rope_theta,
                          rms_norm_eps=rms_norm_eps)
        H = hidden_size
        self.fc = nn.Linear(2 * H, H, bias=False)
        self.norm1 = nn.RMSNorm(H, eps=rms_norm_eps)
        self.q = nn.Linear(H, num_heads * head_dim)
        self.k = nn.Linear(H, num_kv_heads * head_dim)
        self.v = nn.Linear(H, num_kv_heads * head_dim)
        self.o = nn.Linear(num_heads * head_dim, H, bias=False)
        self.norm2 = nn.RMSNorm(H, eps=rms_norm_eps)
        self.gate = nn.Linear(H, intermediate_size, bias=False)
        self.up = nn.Linear(H, intermediate_size, bias=False)
        self.down = nn.Linear(intermediate_size, H, bias=False)

    @classmethod
    def for_target(cls, config, intermediate_size: int | None = None) -> "EagleHead":
        """A head shaped like one decoder layer of the target (transformers ``config``)."""
        heads = config.num_attention_heads
        rope = getattr(config, "rope_parameters", None) or {}
        return cls(hidden_size=config.hidden_size, num_heads=heads,
                   num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   intermediate_size=intermediate_size or config.intermediate_size,
                   rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
                   rms_norm_eps=float(getattr(config, "rms_norm_eps", 1e-6)))

    def forward(self, features: torch.Tensor, embeds: torch.Tensor, positions: torch.Tensor,
                cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        s = self.shape
        B, T, _ = features.shape
        x = self.fc(torch.cat([features, embeds.to(features.dtype)], -1))
        h = self.norm1(x)
        q = self.q(h).view(B, T, s["num_heads"], s["head_dim"]).transpose(1, 2)
        k = self.k(h).view(B, T, s["num_kv_heads"], s["head_dim"]).transpose(1, 2)
        v = self.v(h).view(B, T, s["num_kv_heads"], s["head_dim"]).transpose(1, 2)
        q, k = rotate(q, positions, s["rope_theta"]), rotate(k, positions, s["rope_theta"])
        past = 0
        if cache is not None:
            past = len(cache)
            k, v = cache.append(k, v)
        if mask is None and past:
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
        attn = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                          enable_gqa=True)
        x = x + self.o(attn.transpose(1, 2).reshape(B, T, -1))
        h = self.norm2(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))

    def loss(self, vocab: DraftVocab, embed: nn.Embedding, hidden: torch.Tensor, tokens: torch.Tensor,
             labels: torch.Tensor, noise: float = 0.0, ce_weight: float = 0.1) -> tuple[torch.Tensor, list[float]]:
        """EAGLE's loss: smooth-L1 feature regression plus ``ce_weight`` x cross-entropy.

        hidden [B, T, H] the target's final hidden states of a text, tokens [B, T] the text,
        labels [B, T] the target's argmax after each position. Input t = (f_t, x_{t+1}) for
        t < T - 1; its output is compared with f_{t+1} and decoded against labels[t + 1].
        ``noise``: uniform noise of this relative size added to the input features (EAGLE's
        robustness to its own imprecise features when drafting). Returns (loss, [top-1 accuracy]).
        """
        features, target = hidden[:, :-1], hidden[:, 1:]
        if noise:
            features = features + (torch.rand_like(features) - 0.5) * 2 * noise * features.std()
        positions = torch.arange(hidden.shape[1] - 1, device=hidden.device)
        guess = self(features, embed(tokens[:, 1:]), positions)
        regression = nn.functional.smooth_l1_loss(guess.float(), target.float())
        logits = vocab.logits(guess)
        wanted = vocab.from_full(labels[:, 1:])
        ce = nn.functional.cross_entropy(logits.flatten(0, 1).float(), wanted.flatten())
        valid = wanted != -100
        accuracy = float(((logits.argmax(-1) == wanted) & valid).sum()) / max(1, int(valid.sum()))
        return regression + ce_weight * ce, [accuracy]
