"""Megatron-Core's model-parallel groups (TP, PP, VP, CP and the data-parallel rest) on top of the default
process group, and the seeding Megatron-LM does for them. Used by pre-training, conversion and the GPU check."""

from __future__ import annotations

import torch

from megarec.runtime import cpu_shims
from megarec.runtime.config import ParallelConfig
from megarec.runtime.distributed import DistEnv, init_process_group, shutdown


def init_megatron(parallel: ParallelConfig, seed: int) -> DistEnv:
    """The default process group (see `init_process_group`), the CPU shims when there is no CUDA, Megatron's
    TP/PP/DP/CP groups, then every RNG seeded (`seed_everything`)."""
    from megatron.core import parallel_state as ps

    env = init_process_group(parallel.distributed_timeout_minutes, always=True)
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
    return env


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy, torch and the model-parallel tracker as Megatron-LM does: pipeline stages get
    seed + 100 × PP rank, so a from-scratch model's stages do not start as copies of each other (its initial
    weights therefore depend on PP; converted or resumed weights do not); the tracker gives TP ranks distinct
    dropout streams. Returns the seed used."""
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


def shutdown_megatron() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    shutdown()
