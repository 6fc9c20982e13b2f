"""Medusa heads (Cai et al. 2024, arXiv 2401.10774): extra decoding heads on the target's last
hidden state, each guessing a token further ahead, all decoded by the target's frozen LM head.

Offsets. ``h_t`` is the target's final hidden state (after the final norm, the LM head's input) at
position t, i.e. after it has read token x_t; the LM head turns it into the prediction of x_{t+1}.
Head k (k = 0..K-1) turns the same h_t into a prediction of x_{t+k+2}. In the engine the anchor is
the last position in the target's cache: its LM-head token is the pending token (already known),
so head k drafts draft token k, the (k+1)-th token after the pending one.

Worked example: context "a b c", cache holds "a b" and "c" is pending; h at "b" predicts "c";
head 0 on it drafts the token after "c", head 1 the one after that.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import DraftVocab


class ResBlock(nn.Module):
    """h + SiLU(W h + b). W starts at zero, so an untrained block is the identity."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + nn.functional.silu(self.linear(h))


class MedusaHeads(nn.Module):
    """K heads of ``num_layers`` ResBlocks each. forward: h [..., H] -> features [K, ..., H],
    which :class:`DraftVocab` decodes; head k's features predict the token k + 2 after h's."""

    def __init__(self, hidden_size: int, num_heads: int = 4, num_layers: int = 1) -> None:
        super().__init__()
        self.shape = dict(hidden_size=hidden_size, num_heads=num_heads, num_layers=num_layers)
        self.heads = nn.ModuleList(nn.Sequential(*(ResBlock(hidden_size) for _ in range(num_layers)))
                                   for _ in range(num_heads))

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(h) for head in self.heads])

    def loss(self, vocab: DraftVocab, hidden: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor
             ) -> tuple[torch.Tensor, list[float]]:
        """Cross-entropy of every head against the target's own predictions.

        hidden [B, T, H]: the target's final hidden states of a text; tokens [B, T] the text
        (unused: Medusa reads only hidden states); labels [B, T]: labels[t] = the target's
        argmax after position t, its prediction of x_{t+1}. Head k at position t is trained on
        labels[t + k + 1] (the target's next token after x_{t+k+1}). Returns (mean loss over
        heads, top-1 accuracy per head over the labels inside the draft vocabulary).
        """
        losses, accuracy = [], []
        for k, head in enumerate(self.heads):
            shift = k + 1
            logits = vocab.logits(head(hidden[:, :-shift]))  # [B, T - shift, Vd]
            target = vocab.from_full(labels[:, shift:])
            losses.append(nn.functional.cross_entropy(logits.flatten(0, 1).float(), target.flatten()))
            valid = target != -100
            hits = (logits.argmax(-1) == target) & valid
            accuracy.append(float(hits.sum()) / max(1, int(valid.sum())))
        return torch.stack(losses).mean(), accuracy
