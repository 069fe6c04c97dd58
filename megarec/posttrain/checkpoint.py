"""Resumable post-training checkpoints, committed like every megarec checkpoint (`megarec.runtime.checkpoint_dir`:
`<dir>/iter_0000100/` + `latest_checkpointed_iteration.txt`, written under a temporary name first).

A step directory holds `hf/` (the policy as an fp32 HF checkpoint: config, safetensors, tokenizer, itemic.json),
`optimizer.pt` (unsharded AdamW state keyed by parameter names, so a run may resume on another number of ranks)
and `trainer_state.pt` (step, LR schedule, data position, verb).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from megarec.common.errors import ConfigError
from megarec.posttrain.models import sharding
from megarec.runtime import checkpoint_dir
from megarec.runtime import distributed as dist_utils

HF_SUBDIR = "hf"
FORMAT_VERSION = 1
STATE_FILE = "trainer_state.pt"


def latest_checkpoint(root: Optional[str]) -> Optional[str]:
    """The newest complete step directory under `root`, or None."""
    path = checkpoint_dir.latest_dir(root)
    if path is not None and not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise ConfigError(f"{path} is not a complete post-training checkpoint (no {STATE_FILE})")
    return path


def save(root: str, step: int, policy, state: dict, keep_last: int) -> str:
    """Collective: every rank calls; rank 0 writes."""
    env = policy.env
    if env.is_rank0:
        checkpoint_dir.begin(root, step)
    tmp = checkpoint_dir.step_dir(root, step) + checkpoint_dir.TMP_SUFFIX
    dist_utils.barrier()
    with checkpoint_dir.writing(root, step):
        policy.save(os.path.join(tmp, HF_SUBDIR), dtype=torch.float32)
        optim = sharding.full_optimizer_state(policy.model, policy.optimizer)
        if env.is_rank0:
            torch.save(optim, os.path.join(tmp, "optimizer.pt"))
            torch.save(
                {
                    "format": FORMAT_VERSION,
                    "step": step,
                    "scheduler": policy.scheduler.state_dict(),
                    "world_size": env.world_size,
                    **state,
                },
                os.path.join(tmp, STATE_FILE),
            )
    if env.is_rank0:
        checkpoint_dir.commit(root, step, keep_last)
    dist_utils.barrier()
    return checkpoint_dir.step_dir(root, step)


def read_state(ckpt: str) -> dict:
    state = torch.load(os.path.join(ckpt, STATE_FILE), weights_only=False)
    if state.get("format") != FORMAT_VERSION:
        raise ConfigError(f"{ckpt}: unknown checkpoint format {state.get('format')}")
    return state


def restore_optimizer(ckpt: str, policy) -> None:
    """Load the unsharded optimizer state (read on rank 0, broadcast when sharded)."""
    sharded = sharding.is_sharded(policy.model)
    if policy.env.is_rank0 or not sharded:
        optim = torch.load(os.path.join(ckpt, "optimizer.pt"), weights_only=False)
    else:
        optim = {}
    sharding.load_full_optimizer_state(policy.model, policy.optimizer, optim)
