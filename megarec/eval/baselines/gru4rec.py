"""GRU4Rec (Hidasi et al., 2016) in its common full-softmax form: item embeddings → GRU → tied output."""

from __future__ import annotations

import torch
from torch import nn


class GRU4Rec(nn.Module):
    """Hidden states [B, T, H] for left-padded item-index sequences [B, T] (padding steps see zeros)."""

    def __init__(self, num_items: int, hidden: int = 64, layers: int = 1, max_len: int = 50, dropout: float = 0.2):
        super().__init__()
        self.num_items, self.max_len = num_items, max_len
        self.item_emb = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, hidden)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.drop(self.item_emb(seq)))
        return self.out(self.drop(h))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.item_emb.weight.T
