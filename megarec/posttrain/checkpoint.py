"""Resumable post-training checkpoints.

Layout: `<dir>/step_0000100/` holds `hf/` (the policy as an fp32 HF checkpoint: config, safetensors,
tokenizer, itemic.json), `optimizer.pt` (unsharded AdamW state keyed by parameter names, so a run may
resume on another number of ranks) and `trainer_state.pt` (step, LR schedule, data position, verb).
A checkpoint is written as `step_XXXXXXX.tmp/`, renamed when complete, and only then does `<dir>/latest`
point to it, so an interrupted save never looks complete.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional

import torch

from megarec.common.atomic import atomic_write_text
from megarec.common.errors import ConfigError
from megarec.posttrain import distributed as dist_utils
from megarec.posttrain.models import sharding

LATEST = "latest"
HF_SUBDIR = "hf"
FORMAT_VERSION = 1


def step_dir(root: str, step: int) -> str:
    return os.path.join(root, f"step_{step:07d}")


def latest_checkpoint(root: Optional[str]) -> Optional[str]:
    """The newest complete step directory under `root`, or None."""
    if not root:
        return None
    pointer = os.path.join(root, LATEST)
    if not os.path.isfile(pointer):
        return None
    name = open(pointer).read().strip()
    path = os.path.join(root, name)
    if not os.path.isfile(os.path.join(path, "trainer_state.pt")):
        raise ConfigError(f"{pointer} names {name}, which is not a complete checkpoint")
    return path


def save(root: str, step: int, policy, state: dict, keep_last: int) -> str:
    """Collective: every rank calls; rank 0 writes."""
    final = step_dir(root, step)
    tmp = final + ".tmp"
    env = policy.env
    if env.is_rank0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp, exist_ok=True)
    dist_utils.barrier()
    policy.save(os.path.join(tmp, HF_SUBDIR), dtype=torch.float32)
    optim = sharding.full_optimizer_state(policy.model, policy.optimizer)
    if env.is_rank0:
        torch.save(optim, os.path.join(tmp, "optimizer.pt"))
        torch.save({"format": FORMAT_VERSION, "step": step, "scheduler": policy.scheduler.state_dict(),
                    "world_size": env.world_size, **state}, os.path.join(tmp, "trainer_state.pt"))
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(os.path.join(root, LATEST), os.path.basename(final) + "\n")
        if keep_last > 0:
            _prune(root, keep_last)
    dist_utils.barrier()
    return final


def _prune(root: str, keep_last: int) -> None:
    steps = sorted(n for n in os.listdir(root) if n.startswith("step_") and not n.endswith(".tmp"))
    for name in steps[:-keep_last]:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def read_state(ckpt: str) -> dict:
    state = torch.load(os.path.join(ckpt, "trainer_state.pt"), weights_only=False)
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
