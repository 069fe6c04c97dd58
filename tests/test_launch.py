"""SLURM / local launch scripts: syntax, #SBATCH directives, the commands DRY_RUN=1 prints under a fake SLURM
job, what a fake `srun` receives, and the process-group timeout the launchers set."""

from __future__ import annotations

import datetime
import glob
import os
import shlex
import stat
import subprocess

import pytest

from conftest import REPO

SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")))
SBATCH_SCRIPTS = ["pretrain_8b.sh", "pretrain_1p7b.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
    assert subprocess.run(["bash", "-n", script]).returncode == 0


def _dry_run(script, tmp_path, **env):
    base = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DRY_RUN": "1",
        "MEGAREC_HOME": REPO,
        "SLURM_JOB_NODELIST": "gpu[007-010]",
        "SLURM_NNODES": "4",
        "SLURM_JOB_ID": "4242",
    }
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "launch", script)],
        env={**base, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _srun_argv(out: str) -> list[str]:
    srun = shlex.split(out.strip().splitlines()[-1])
    assert srun[0] == "srun" and "--ntasks-per-node=1" in srun and "--nodes=4" in srun
    assert srun[-3:-1] == ["bash", "-c"]
    return srun


def _printed_env(out: str) -> dict[str, str]:
    lines = out.strip().splitlines()[1:-1]  # between the rendezvous line and the srun line
    return dict(line.split("=", 1) for line in lines)


def _worker_argv(out: str) -> list[str]:
    inner = _srun_argv(out)[-1]
    assert inner.startswith("trap '' USR1; exec ")
    return shlex.split(inner[len("trap '' USR1; exec ") :])


def test_pretrain_8b_dry_run(tmp_path):
    out = _dry_run(
        "pretrain_8b.sh", tmp_path, DATA_BLEND="0.6234 /d/gen 0.3766 /d/rec", TOKENIZER="/t", INIT_FROM="/ckpt/s1"
    )
    assert "MASTER_ADDR=gpu007 MASTER_PORT=29500 NNODES=4 GPUS_PER_NODE=8" in out
    assert _printed_env(out) == {
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
    }
    # No SLURM_CPUS_PER_TASK in this environment: srun gets no --cpus-per-task.
    assert not any(a.startswith("--cpus-per-task") for a in _srun_argv(out))
    argv = _worker_argv(out)
    assert argv[:3] == ["python", "-m", "torch.distributed.run"]
    for flag in (
        "--nnodes=4",
        "--nproc_per_node=8",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=gpu007:29500",
        "--rdzv_id=4242",
    ):
        assert flag in argv
    i = argv.index("-m", 3)
    assert argv[i + 1 : i + 3] == ["megarec", "pretrain"]
    assert argv[argv.index("--config") + 1] == os.path.join(REPO, "configs/pretrain/stage2_8b.yaml")
    for ov in (
        "parallel.tensor_model_parallel_size=4",
        "parallel.context_parallel_size=2",
        "parallel.sequence_parallel=true",
        "parallel.distributed_timeout_minutes=60",
        "model.fp8=hybrid",
        "train.seq_length=32768",
        "data.data_path=[0.6234, /d/gen, 0.3766, /d/rec]",
        "data.tokenizer=/t",
        "checkpoint.init_from=/ckpt/s1",
    ):
        assert ov in argv, ov
    # Every override the script emits is a valid key of the recipe it runs.
    from megarec.common.config import load_config
    from megarec.pretrain.config import PretrainConfig

    overrides = argv[argv.index("--config") + 2 :]
    cfg = load_config(PretrainConfig, argv[argv.index("--config") + 1], overrides)
    assert cfg.parallel.tensor_model_parallel_size * cfg.parallel.context_parallel_size == 8
    assert cfg.parallel.distributed_timeout_minutes == 60


def test_srun_gets_cpus_per_task_from_the_allocation(tmp_path):
    out = _dry_run("pretrain_8b.sh", tmp_path, SLURM_CPUS_PER_TASK="96")
    srun = _srun_argv(out)
    assert "--cpus-per-task=96" in srun[: srun.index("bash")]
    out = _dry_run("pretrain_8b.sh", tmp_path, SLURM_CPUS_PER_TASK="96", CPUS_PER_TASK="48")
    assert "--cpus-per-task=48" in _srun_argv(out) and "--cpus-per-task=96" not in _srun_argv(out)


def _sbatch_directives(script: str) -> tuple[dict[str, str], int, int]:
    """(#SBATCH options, line of the last directive, line of the first command) of a batch script."""
    options, last_directive, first_command = {}, -1, None
    with open(os.path.join(REPO, "launch", script)) as f:
        for i, line in enumerate(f):
            if line.startswith("#SBATCH"):
                key, _, value = line.split(None, 1)[1].strip().partition("=")
                options[key] = value
                last_directive = i
            elif first_command is None and line.strip() and not line.startswith("#"):
                first_command = i
    return options, last_directive, first_command


@pytest.mark.parametrize("script", SBATCH_SCRIPTS)
def test_batch_log_needs_no_directory(script):
    """SLURM opens --output before the script runs, so a directory in it must already exist: the log goes
    to the submit directory. sbatch also stops reading #SBATCH lines at the first command."""
    options, last_directive, first_command = _sbatch_directives(script)
    assert options["--output"] == "%x-%j.out"
    assert "--error" not in options
    assert last_directive < first_command
    assert options["--cpus-per-task"].isdigit()


def test_pretrain_1p7b_env_overrides(tmp_path):
    out = _dry_run(
        "pretrain_1p7b.sh",
        tmp_path,
        STAGE="1",
        TP="8",
        CP="1",
        GBS="64",
        MASTER_PORT="31000",
        GPUS_PER_NODE="4",
        EXTRA_OVERRIDES="train.steps=10 logging.log_interval=5",
        PG_TIMEOUT_MINUTES="90",
        PYTORCH_CUDA_ALLOC_CONF="expandable_segments:False",
        TORCH_NCCL_AVOID_RECORD_STREAMS="0",
    )
    assert _printed_env(out) == {
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False",
        "TORCH_NCCL_AVOID_RECORD_STREAMS": "0",
    }
    argv = _worker_argv(out)
    assert argv[argv.index("--config") + 1].endswith("configs/pretrain/stage1_1p7b.yaml")
    for ov in (
        "parallel.tensor_model_parallel_size=8",
        "parallel.context_parallel_size=1",
        "parallel.distributed_timeout_minutes=90",
        "train.global_batch_size=64",
        "train.steps=10",
        "logging.log_interval=5",
        "--rdzv_endpoint=gpu007:31000",
        "--nproc_per_node=4",
    ):
        assert ov in argv, ov


def _fake_tool(bindir, name: str, body: str) -> None:
    path = os.path.join(bindir, name)
    with open(path, "w") as f:
        f.write("#!/bin/bash\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


def test_real_submission_exports_settings_to_srun(tmp_path):
    """Not a dry run: a fake srun records the arguments and environment it is started with."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _fake_tool(bindir, "srun", f'printf "%s\\n" "$@" > {tmp_path}/argv\nenv > {tmp_path}/env\n')
    env = {
        "PATH": f"{bindir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MEGAREC_HOME": REPO,
        "SLURM_JOB_NODELIST": "gpu[007-010]",
        "SLURM_NNODES": "4",
        "SLURM_JOB_ID": "4242",
        "SLURM_CPUS_PER_TASK": "96",
        "DATA_BLEND": "/d/gen",
        "TOKENIZER": "/t",
        "SAVE_DIR": str(tmp_path / "ckpt"),
        "RUN_DIR": str(tmp_path / "run"),
    }
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "pretrain_8b.sh")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    srun = (tmp_path / "argv").read_text().splitlines()
    assert srun[:5] == [
        "--nodes=4",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        f"--chdir={REPO}",
        "--cpus-per-task=96",
    ]
    exported = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines() if "=" in line)
    assert exported["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert exported["TORCH_NCCL_AVOID_RECORD_STREAMS"] == "1"
    assert exported["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert (tmp_path / "ckpt").is_dir() and (tmp_path / "run").is_dir()
    assert not (tmp_path / "logs").exists()


def test_init_megatron_uses_the_configured_timeout(monkeypatch):
    import torch.distributed as dist

    from megarec.runtime import megatron_parallel
    from megarec.runtime.config import ParallelConfig

    class Reached(Exception):
        pass

    seen = {}

    def fake_init_process_group(backend, **kwargs):
        seen.update(kwargs, backend=backend)
        raise Reached

    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", fake_init_process_group)
    for key, value in {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29999",
    }.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(Reached):
        megatron_parallel.init_megatron(ParallelConfig(distributed_timeout_minutes=45), seed=0)
    assert seen["timeout"] == datetime.timedelta(minutes=45)
    assert seen["rank"] == 1 and seen["world_size"] == 2
    assert ParallelConfig().distributed_timeout_minutes == 10  # Megatron-LM's --distributed-timeout-minutes


def test_timeout_must_be_positive():
    from megarec.common.errors import ConfigError
    from megarec.models.qwen3.builder import validate_layout
    from megarec.models.qwen3.presets import get_preset
    from megarec.runtime.config import ParallelConfig

    with pytest.raises(ConfigError, match="distributed_timeout_minutes must be >= 1"):
        validate_layout(get_preset("qwen3-tiny"), ParallelConfig(distributed_timeout_minutes=0), "local")


def test_slurm_script_refuses_outside_allocation(tmp_path):
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "pretrain_8b.sh")],
        env={"PATH": "/usr/bin:/bin", "MEGAREC_HOME": REPO},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "no SLURM allocation" in proc.stderr


def test_missing_data_is_an_error_when_not_dry(tmp_path):
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "pretrain_8b.sh")],
        env={"PATH": "/usr/bin:/bin", "MEGAREC_HOME": REPO, "SLURM_JOB_NODELIST": "n1"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "set DATA_BLEND" in proc.stderr


def test_local_dry_run(tmp_path):
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "local.sh"), "--config", "x.yaml", "data.mock=true"],
        env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "NPROC": "2"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0
    assert shlex.split(proc.stdout) == [
        "python",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "megarec",
        "pretrain",
        "--config",
        "x.yaml",
        "data.mock=true",
    ]


def test_local_dry_run_on_gpus(tmp_path):
    """With GPUs (a fake nvidia-smi listing three) one worker per GPU and the SLURM launchers' settings."""
    _fake_tool(tmp_path, "nvidia-smi", 'for i in 0 1 2; do echo "GPU $i: NVIDIA H100 80GB HBM3"; done\n')
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "local.sh"), "--config", "x.yaml"],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin", "DRY_RUN": "1", "TORCH_NCCL_AVOID_RECORD_STREAMS": "0"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    *env_lines, command = proc.stdout.strip().splitlines()
    assert env_lines == [
        "CUDA_DEVICE_MAX_CONNECTIONS=1",
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
        "TORCH_NCCL_AVOID_RECORD_STREAMS=0",
    ]
    assert "--nproc_per_node=3" in shlex.split(command)
