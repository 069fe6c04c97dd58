"""Process groups for every stage, from torchrun or SLURM environments: which rank this process is, the
default process group (NCCL with CUDA, gloo on CPUs) with a configurable timeout, its device, and the few
collectives the loops use (no-ops in a single process). Megatron-Core's model-parallel groups are built on top
of it by `megarec.runtime.megatron_parallel`."""

from __future__ import annotations

import datetime
import os
import re
import socket
from dataclasses import dataclass
from typing import Optional

import torch

from megarec.common.errors import ConfigError


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
        return LaunchEnv(
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", 0)),
            env.get("MASTER_ADDR", "127.0.0.1"),
            int(env.get("MASTER_PORT", 29500)),
            "torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        return LaunchEnv(
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
            env.get("MASTER_ADDR") or first_slurm_host(nodelist),
            int(env.get("MASTER_PORT", 29500)),
            "slurm",
        )
    return LaunchEnv(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT", 0)) or _free_port(), "single")


def world_size_from_env() -> int:
    return detect_launch_env().world_size


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


def init_process_group(timeout_minutes: Optional[int] = None, always: bool = False) -> DistEnv:
    """Join the launcher's process group and pick this rank's device. A single process gets a group only
    with `always` (Megatron-Core needs one), held in memory: no rendezvous, no port."""
    import torch.distributed as dist

    launch = detect_launch_env()
    if torch.cuda.is_available():
        torch.cuda.set_device(launch.local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if not dist.is_initialized() and (launch.world_size > 1 or always):
        backend = "nccl" if device.type == "cuda" else "gloo"
        if launch.world_size == 1:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            os.environ["MASTER_ADDR"] = launch.master_addr
            os.environ["MASTER_PORT"] = str(launch.master_port)
            timeout = datetime.timedelta(minutes=timeout_minutes) if timeout_minutes else None
            dist.init_process_group(
                backend, rank=launch.rank, world_size=launch.world_size, **({"timeout": timeout} if timeout else {})
            )
    return DistEnv(launch.rank, launch.world_size, launch.local_rank, device)


def single_process_env() -> DistEnv:
    """For library use and tests: this process alone, on its best device."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return DistEnv(0, 1, 0, device)


def shutdown(sync: bool = False) -> None:
    """Destroy the process group. `sync` (the normal exit) first waits for every rank: a rank tearing gloo
    down while a peer's gloo thread still serves a collective aborts that peer ("terminate called without an
    active exception", seen intermittently at exit on loaded machines). Error paths skip the barrier, which
    could hang on a peer that will never arrive."""
    import torch.distributed as dist

    if dist.is_initialized():
        if sync and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_initialized() and dist.get_world_size() > 1


def sum_floats(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of a list of floats over ranks (float64)."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier() -> None:
    import torch.distributed as dist

    if _active():
        dist.barrier()
