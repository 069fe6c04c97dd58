"""The learning-rate schedule of every stage: linear warm-up over a fraction of the updates, then cosine or
linear decay to `min_lr` (or constant). Update k (1-based) trains at `lr_at(k)`: no wasted lr = 0 first update,
and the last update of a decaying schedule runs at `min_lr`. Pre-training gets the same values from
Megatron-Core's OptimizerParamScheduler (kept for its checkpoint state, which Megatron-LM reads), stepped
before each optimizer step; post-training uses `lambda_scheduler`."""

from __future__ import annotations

import math

import torch


def warmup_updates(warmup_fraction: float, total: int) -> int:
    return int(round(warmup_fraction * max(total, 1)))


def lr_at(k: int, total: int, lr: float, min_lr: float, warmup_fraction: float, style: str = "cosine") -> float:
    total = max(total, 1)
    warm = warmup_updates(warmup_fraction, total)
    if warm and k <= warm:
        return lr * k / warm
    if style == "constant" or total <= warm:
        return lr
    p = min(max((k - warm) / (total - warm), 0.0), 1.0)
    if style == "linear":
        return lr - (lr - min_lr) * p
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


def lambda_scheduler(
    optimizer: torch.optim.Optimizer, total_updates: int, lr: float, min_lr: float, warmup_fraction: float, style: str
):
    """A LambdaLR whose n-th step (0-based) sets lr_at(n + 1); the optimizer's base lr must be `lr`."""
    base = lr if lr > 0 else 1.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda n: lr_at(n + 1, total_updates, lr, min_lr, warmup_fraction, style) / base
    )
