"""Process group for post-training: one data-parallel group (FSDP2 shards over it), NCCL on GPUs, gloo on
CPUs. A single process runs without any process group. Small collective helpers that are no-ops then."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from megarec.runtime.distributed import detect_launch_env


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistEnv:
    """Join the launcher's process group (torchrun or srun); a single process needs none."""
    launch = detect_launch_env()
    if torch.cuda.is_available():
        torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if launch.world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", launch.master_addr)
        os.environ.setdefault("MASTER_PORT", str(launch.master_port))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=launch.rank,
                                world_size=launch.world_size)
    return DistEnv(launch.rank, launch.world_size, launch.local_rank, device)


def single_process_env() -> DistEnv:
    """For library use and tests: this process alone, on its best device."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return DistEnv(0, 1, 0, device)


def shutdown(sync: bool = False) -> None:
    """Destroy the process group. `sync` (the normal exit) first waits for every rank: a rank tearing gloo
    down while a peer's gloo thread still serves a collective aborts that peer ("terminate called without
    an active exception", seen intermittently at exit on loaded machines). Error paths skip the barrier,
    which could hang on a peer that will never arrive."""
    if dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place for a tensor on the collective's device; float64 recommended)."""
    if _active():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    if _active():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def sum_floats(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of a list of floats over ranks (float64)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    return all_reduce_sum(t).tolist()


def barrier() -> None:
    if _active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list:
    """Every rank's object, in rank order, on every rank."""
    if not _active():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
