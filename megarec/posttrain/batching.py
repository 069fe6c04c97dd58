"""Right-padded training batches and their split into micro-batches and rank shares.

A batch is a dict of [B, T] tensors: `input_ids`, `attention_mask`, `loss_mask` (1 where token t is a
training target; entry 0 is never one), plus algorithm-specific per-token tensors (advantages, old /
reference log-probs, constraint mask ids) and, for constrained samples, a [U, V] `masks` table.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def pad_batch(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    per_token: Optional[dict] = None,
    mask_ids: Optional[Sequence[Sequence[int]]] = None,
) -> dict:
    """Right-pad token lists; `per_token` maps names to per-token float lists (same lengths as the
    sequences); `mask_ids` are per-token constraint rows (-1 = unconstrained)."""
    B, T = len(sequences), max(len(s) for s in sequences)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": attn}
    for name in per_token or {}:
        out[name] = torch.zeros((B, T), dtype=torch.float32)
    if mask_ids is not None:
        out["mask_ids"] = torch.full((B, T), -1, dtype=torch.long)
    for i, seq in enumerate(sequences):
        n = len(seq)
        ids[i, :n] = torch.tensor(list(seq), dtype=torch.long)
        attn[i, :n] = 1
        for name, values in (per_token or {}).items():
            out[name][i, :n] = torch.tensor(list(values[i]), dtype=torch.float32)
        if mask_ids is not None:
            out["mask_ids"][i, :n] = torch.tensor(list(mask_ids[i]), dtype=torch.long)
    return out


def batch_size_of(batch: dict) -> int:
    return batch["input_ids"].shape[0]


def select_rows(batch: dict, rows) -> dict:
    """Rows of every [B, …] tensor, trimmed to the longest remaining sequence; the `masks` table is cut
    down to the rows these sequences use (and `mask_ids` renumbered)."""
    out = {}
    for k, v in batch.items():
        out[k] = v if k == "masks" else v[rows]
    width = int(out["attention_mask"].sum(1).max().item()) if out["attention_mask"].numel() else 0
    for k, v in out.items():
        if k != "masks" and v.dim() == 2:
            out[k] = v[:, : max(width, 1)]
    if "masks" in out and "mask_ids" in out:
        ids = out["mask_ids"]
        used = torch.unique(ids[ids >= 0])
        remap = torch.full((max(out["masks"].shape[0], 1),), -1, dtype=torch.long)
        remap[used] = torch.arange(used.numel())
        out["mask_ids"] = torch.where(ids >= 0, remap[ids.clamp(min=0)], ids)
        out["masks"] = out["masks"][used]
    return out


def micro_batches(batch: dict, size: int) -> list[dict]:
    n = batch_size_of(batch)
    return [select_rows(batch, slice(s, s + size)) for s in range(0, n, size)]


def rank_slice(n: int, rank: int, world: int) -> slice:
    """Contiguous share of rank `rank` among `world` (n must divide evenly)."""
    per = n // world
    return slice(rank * per, (rank + 1) * per)
