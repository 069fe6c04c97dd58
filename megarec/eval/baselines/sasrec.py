"""SASRec (Kang & McAuley, 2018): causal self-attention over the item sequence with learned positions.

Pre-LayerNorm blocks (multi-head attention via `scaled_dot_product_attention`, GELU feed-forward), item
embeddings tied with the output layer, left-padded inputs (index 0). A padded key is never attended
to; every position may attend to itself, so no attention row is empty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttentionBlock(nn.Module):
    """Pre-LN causal multi-head self-attention + feed-forward, each with a residual connection."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
        self.drop = nn.Dropout(dropout)  # on both residual branches (CPU dropout is costly: no more sites)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, T, H)))
        return x + self.drop(self.ff(self.ln2(x)))


class SASRec(nn.Module):
    """Hidden states [B, T, H] for left-padded item-index sequences [B, T]; `logits` scores all items."""

    def __init__(
        self, num_items: int, hidden: int = 64, layers: int = 2, heads: int = 2, max_len: int = 50, dropout: float = 0.2
    ):
        super().__init__()
        self.num_items, self.max_len = num_items, max_len
        self.item_emb = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(SelfAttentionBlock(hidden, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(hidden)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        B, T = seq.shape
        if T > self.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len {self.max_len}")
        valid = seq > 0
        # positions count from the first real item, so left padding does not shift them
        pos = (valid.long().cumsum(1) - 1).clamp(min=0)
        x = self.drop(self.item_emb(seq) * self.item_emb.embedding_dim**0.5 + self.pos_emb(pos))
        causal = torch.ones(T, T, dtype=torch.bool, device=seq.device).tril()
        eye = torch.eye(T, dtype=torch.bool, device=seq.device)
        allowed = (causal & valid[:, None, :]) | eye  # [B, T, T]: key j visible from query i
        allowed = allowed[:, None]  # broadcast over heads
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every item (column 0 = padding) from hidden states [..., H]."""
        return hidden @ self.item_emb.weight.T
