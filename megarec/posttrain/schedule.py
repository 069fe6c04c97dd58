"""Learning-rate schedule of post-training: linear warm-up, then cosine / linear decay to `min_lr` or
constant. Update k (1-based) trains at `lr_at(k)`: there is no wasted lr = 0 first step, and the last
update of a cosine or linear schedule runs at `min_lr`."""
from __future__ import annotations

import math

import torch

from megarec.posttrain.config import OptimizerSection


def lr_at(k: int, total: int, cfg: OptimizerSection) -> float:
    total = max(total, 1)
    warm = int(round(cfg.warmup_fraction * total))
    if warm and k <= warm:
        return cfg.lr * k / warm
    if cfg.lr_decay_style == "constant" or total <= warm:
        return cfg.lr
    p = min(max((k - warm) / (total - warm), 0.0), 1.0)
    if cfg.lr_decay_style == "linear":
        return cfg.lr - (cfg.lr - cfg.min_lr) * p
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerSection, total_updates: int):
    """LambdaLR whose factor for its n-th step (0-based) is lr_at(n + 1) / lr."""
    base = cfg.lr if cfg.lr > 0 else 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: lr_at(n + 1, total_updates, cfg) / base)
