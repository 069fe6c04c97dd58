"""Process-group set-up from torchrun or SLURM environments, then Megatron-Core model parallel groups."""
from __future__ import annotations

import datetime
import os
import re
import socket
from dataclasses import dataclass

import torch

from megarec.common.errors import ConfigError
from megarec.models.config import ParallelConfig


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | slurm | single


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM nodelist such as 'gpu[003-005,010],cpu1' → 'gpu003'."""
    match = re.match(r"([^\[,]+)(\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ConfigError(f"cannot parse SLURM nodelist '{nodelist}'")
    prefix, bracket = match.group(1), match.group(3)
    if not bracket:
        return prefix
    first = bracket.split(",")[0].split("-")[0]
    return prefix + first


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def detect_launch_env(environ: dict | None = None) -> LaunchEnv:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; `srun python -m megarec` sets SLURM_* only."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                         env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)), "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        return LaunchEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                         env.get("MASTER_ADDR") or first_slurm_host(nodelist),
                         int(env.get("MASTER_PORT", 29500)), "slurm")
    return LaunchEnv(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT", 0)) or _free_port(), "single")


def world_size_from_env() -> int:
    return detect_launch_env().world_size


def init_distributed(parallel: ParallelConfig, seed: int) -> LaunchEnv:
    """Create the default process group (NCCL with CUDA, gloo otherwise) and Megatron's TP/PP/DP/CP
    groups, then seed every RNG (the model-parallel tracker gives TP ranks distinct dropout streams;
    pipeline stages get distinct seeds, see `seed_everything`)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megarec.runtime import cpu_shims

    launch = detect_launch_env()
    if torch.cuda.is_available():
        torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if launch.world_size == 1:  # no rendezvous needed: an in-memory store, no port to collide on
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            os.environ["MASTER_ADDR"] = launch.master_addr
            os.environ["MASTER_PORT"] = str(launch.master_port)
            dist.init_process_group(backend, rank=launch.rank, world_size=launch.world_size,
                                    timeout=datetime.timedelta(minutes=parallel.distributed_timeout_minutes))
    cpu_shims.enable()
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
    )
    seed_everything(seed)
    return launch


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy, torch and the model-parallel tracker as Megatron-LM does: pipeline stages get
    seed + 100 × PP rank, so a from-scratch model's stages do not start as copies of each other (its
    initial weights therefore depend on PP; converted or resumed weights do not). Returns the seed used."""
    import random

    import numpy as np
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    stage_seed = seed + 100 * ps.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    model_parallel_cuda_manual_seed(stage_seed)
    return stage_seed


def shutdown() -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
