"""Launch-environment detection (torchrun, SLURM, single process) and SLURM nodelist parsing."""

from __future__ import annotations

import pytest

from megarec.runtime.distributed import detect_launch_env, first_slurm_host


@pytest.mark.parametrize(
    "nodelist,first",
    [("gpu[003-005,010]", "gpu003"), ("node7", "node7"), ("a[1,3],b[2-4]", "a1"), ("h100-[12-13]", "h100-12")],
)
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_torchrun_env_wins():
    env = detect_launch_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "n1",
            "MASTER_PORT": "1234",
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "2",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.launcher) == (
        3,
        8,
        1,
        "n1",
        1234,
        "torchrun",
    )


def test_slurm_env():
    env = detect_launch_env(
        {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "SLURM_JOB_NODELIST": "gpu[010-011]"}
    )
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.launcher) == (5, 16, 5, "gpu010", "slurm")


def test_single_process_default():
    env = detect_launch_env({})
    assert (env.rank, env.world_size, env.launcher) == (0, 1, "single") and env.master_port > 0
