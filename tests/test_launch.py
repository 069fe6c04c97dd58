"""SLURM / local launch scripts: syntax, and the commands DRY_RUN=1 prints under a fake SLURM job."""
from __future__ import annotations

import glob
import os
import shlex
import subprocess

import pytest

from conftest import REPO

SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")))


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
    assert subprocess.run(["bash", "-n", script]).returncode == 0


def _dry_run(script, tmp_path, **env):
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DRY_RUN": "1", "MEGAREC_HOME": REPO,
            "SLURM_JOB_NODELIST": "gpu[007-010]", "SLURM_NNODES": "4", "SLURM_JOB_ID": "4242"}
    proc = subprocess.run(["bash", os.path.join(REPO, "launch", script)], env={**base, **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _worker_argv(out: str) -> list[str]:
    srun = shlex.split(out.strip().splitlines()[-1])
    assert srun[0] == "srun" and "--ntasks-per-node=1" in srun and "--nodes=4" in srun
    inner = srun[-1]
    assert inner.startswith("trap '' USR1; exec ")
    return shlex.split(inner[len("trap '' USR1; exec "):])


def test_pretrain_8b_dry_run(tmp_path):
    out = _dry_run("pretrain_8b.sh", tmp_path, DATA_BLEND="0.6234 /d/gen 0.3766 /d/rec", TOKENIZER="/t",
                   INIT_FROM="/ckpt/s1")
    assert "MASTER_ADDR=gpu007 MASTER_PORT=29500 NNODES=4 GPUS_PER_NODE=8" in out
    assert "CUDA_DEVICE_MAX_CONNECTIONS=1" in out
    argv = _worker_argv(out)
    assert argv[:3] == ["python", "-m", "torch.distributed.run"]
    for flag in ("--nnodes=4", "--nproc_per_node=8", "--rdzv_backend=c10d", "--rdzv_endpoint=gpu007:29500",
                 "--rdzv_id=4242"):
        assert flag in argv
    i = argv.index("-m", 3)
    assert argv[i + 1:i + 3] == ["megarec", "pretrain"]
    assert argv[argv.index("--config") + 1] == os.path.join(REPO, "configs/pretrain/stage2_8b.yaml")
    for ov in ("parallel.tensor_model_parallel_size=4", "parallel.context_parallel_size=2",
               "parallel.sequence_parallel=true", "model.fp8=hybrid", "train.seq_length=32768",
               "data.data_path=[0.6234, /d/gen, 0.3766, /d/rec]", "data.tokenizer=/t", "checkpoint.init_from=/ckpt/s1"):
        assert ov in argv, ov
    # Every override the script emits is a valid key of the recipe it runs.
    from megarec.config import load_config
    from megarec.training.config import PretrainConfig

    overrides = argv[argv.index("--config") + 2:]
    cfg = load_config(PretrainConfig, argv[argv.index("--config") + 1], overrides)
    assert cfg.parallel.tensor_model_parallel_size * cfg.parallel.context_parallel_size == 8


def test_pretrain_1p7b_env_overrides(tmp_path):
    out = _dry_run("pretrain_1p7b.sh", tmp_path, STAGE="1", TP="8", CP="1", GBS="64", MASTER_PORT="31000",
                   GPUS_PER_NODE="4", EXTRA_OVERRIDES="train.train_iters=10 logging.log_interval=5")
    argv = _worker_argv(out)
    assert argv[argv.index("--config") + 1].endswith("configs/pretrain/stage1_1p7b.yaml")
    for ov in ("parallel.tensor_model_parallel_size=8", "parallel.context_parallel_size=1",
               "train.global_batch_size=64", "train.train_iters=10", "logging.log_interval=5",
               "--rdzv_endpoint=gpu007:31000", "--nproc_per_node=4"):
        assert ov in argv, ov


def test_slurm_script_refuses_outside_allocation(tmp_path):
    proc = subprocess.run(["bash", os.path.join(REPO, "launch", "pretrain_8b.sh")],
                          env={"PATH": "/usr/bin:/bin", "MEGAREC_HOME": REPO}, capture_output=True, text=True)
    assert proc.returncode == 2 and "no SLURM allocation" in proc.stderr


def test_missing_data_is_an_error_when_not_dry(tmp_path):
    proc = subprocess.run(["bash", os.path.join(REPO, "launch", "pretrain_8b.sh")],
                          env={"PATH": "/usr/bin:/bin", "MEGAREC_HOME": REPO, "SLURM_JOB_NODELIST": "n1"},
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "set DATA_BLEND" in proc.stderr


def test_local_dry_run(tmp_path):
    proc = subprocess.run(["bash", os.path.join(REPO, "launch", "local.sh"), "--config", "x.yaml", "data.mock=true"],
                          env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "NPROC": "2"}, capture_output=True, text=True)
    assert proc.returncode == 0
    assert shlex.split(proc.stdout) == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                        "-m", "megarec", "pretrain", "--config", "x.yaml", "data.mock=true"]
