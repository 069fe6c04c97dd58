"""Rec-RL rewards and GRPO's group-normalised advantages (pure functions).

Rewards compare the code tuples of the items in an answer with the target items' code tuples:
  * hit: 1.0 if any generated item is a target, else 0.0 (the report's reward);
  * prefix (shaped): 1.0 on a hit, else `prefix_weight` × (longest run of leading codes shared with any
    target) / (number of layers) — partial credit for the right semantic neighbourhood.
Advantages: rewards of the G samples of one prompt minus their mean, divided by their standard deviation
(+ eps) when `scale_by_std`. Groups whose rewards are all equal carry no signal (advantage 0); groups
with every reward 0 are counted separately, as a health metric of the task difficulty.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def item_reward(
    generated: Iterable[Sequence[int]], targets: set, kind: str = "hit", prefix_weight: float = 0.5, num_layers: int = 1
) -> float:
    generated = [tuple(g) for g in generated]
    if any(g in targets for g in generated):
        return 1.0
    if kind == "hit" or not generated:
        return 0.0
    best = max(shared_prefix(g, t) for g in generated for t in targets)
    return prefix_weight * best / max(num_layers, 1)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> tuple[torch.Tensor, dict]:
    """rewards [N·G] laid out group by group → (advantages [N·G], stats)."""
    r = rewards.view(-1, group_size).double()
    centred = r - r.mean(dim=1, keepdim=True)
    if scale_by_std and group_size > 1:
        centred = centred / (r.std(dim=1, unbiased=False, keepdim=True) + eps)
    uniform = (r.max(dim=1).values - r.min(dim=1).values) == 0
    centred[uniform] = 0.0
    zero = r.abs().sum(dim=1) == 0
    stats = {
        "groups": float(r.shape[0]),
        "zero_reward_groups": float(zero.sum()),
        "uniform_groups": float(uniform.sum()),
    }
    return centred.float().view(-1), stats
