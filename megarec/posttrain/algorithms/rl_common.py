"""Pieces shared by the on-policy algorithms (distillation, GRPO): turning a rollout into a training batch
and the clipped policy-gradient update over it."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from megarec.errors import ConfigError
from megarec.posttrain.batching import pad_batch, select_rows

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def rollout_batch(rollout, pad_id: int, sample_mask: Optional[Sequence[bool]] = None) -> dict:
    """Batch of prompt + response rows. `loss_mask` covers response tokens, except positions where the
    constraint left exactly one choice (a forced token has log-prob 0 under the sampled distribution and
    carries no learning signal) and rows whose `sample_mask` is False. Constraint masks, when recorded,
    are compacted into a per-batch table."""
    seqs, loss_masks, mask_ids = [], [], []
    forced = [int(_POPCOUNT[m].sum()) == 1 for m in rollout.mask_table]
    remap: dict[int, int] = {}
    for i, (p, r) in enumerate(zip(rollout.prompts, rollout.responses)):
        seqs.append(p + r)
        keep = sample_mask is None or bool(sample_mask[i])
        ids = rollout.mask_ids[i] if rollout.mask_ids is not None else [-1] * len(r)
        lm = [0.0] * len(p) + [0.0 if (not keep or (m >= 0 and forced[m])) else 1.0 for m in ids]
        loss_masks.append(lm)
        if rollout.mask_ids is not None:
            mask_ids.append([-1] * len(p) + [remap.setdefault(m, len(remap)) if m >= 0 else -1 for m in ids])
    batch = pad_batch(seqs, pad_id, {"loss_mask": loss_masks},
                      mask_ids=mask_ids if rollout.mask_ids is not None else None)
    if rollout.mask_ids is not None:
        batch["masks"] = rollout.masks_tensor(sorted(remap, key=remap.get))
    return batch


def check_mini_batches(rows_per_rank: int, mini_batches: int, key: str) -> None:
    if rows_per_rank % mini_batches:
        raise ConfigError(f"{key}={mini_batches} must divide the samples per rank per step ({rows_per_rank})")


def ppo_update(policy, batch: dict, epochs: int, mini_batches: int) -> dict:
    """`epochs` passes over the batch, each split into `mini_batches` optimizer steps; returns metrics
    averaged over the optimizer steps (grad_norm, lr: of the last step)."""
    n = batch["input_ids"].shape[0]
    size = n // mini_batches
    sums: dict[str, float] = {}
    last: dict = {}
    updates = 0
    for _ in range(epochs):
        for k in range(mini_batches):
            part = select_rows(batch, slice(k * size, (k + 1) * size))
            policy.prepare_for_training_step()
            m = policy.get_loss_and_metrics(part)
            last = policy.finish_training_step()
            for key, v in m.items():
                sums[key] = sums.get(key, 0.0) + float(v)
            updates += 1
    out = {k: v / updates for k, v in sums.items()}
    out.update(last)
    return out
