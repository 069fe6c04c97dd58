"""The bad-input matrix of the runtime side: damaged checkpoints (pretrain resume/init, convert), file-system
errors, config messages. Each case runs the real CLI in a fresh directory and must end with exit 2 and one
stderr line naming the file / key at fault, leaving every file outside the command's output as it was
(tests/bad_input.py). Multi-process cases run under torchrun: every rank prints the same line."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from bad_input import Case, changed, one_error_line, snapshot
from conftest import REPO, run_cli

TINY = os.path.join(REPO, "configs", "pretrain", "tiny_cpu.yaml")
TIMEOUT = 300
# A quick pretrain run that needs no data, writes nothing outside its run directory and keeps stderr clean.
PRETRAIN = ["pretrain", "--config", TINY, "data.mock=true", "train.steps=1", "logging.progress=false"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One tiny pre-training checkpoint (train.steps=0) and one converted from a tiny HF Qwen3, shared by every
    case (each case damages its own copy)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    root = tmp_path_factory.mktemp("built")
    proc = run_cli(
        [
            "pretrain",
            "--config",
            TINY,
            "data.mock=true",
            "train.steps=0",
            f"checkpoint.dir={root / 'pretrain'}",
            f"logging.run_dir={root / 'run'}",
            "logging.progress=false",
        ],
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.manual_seed(0)
    hf_cfg = Qwen3Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    Qwen3ForCausalLM(hf_cfg).save_pretrained(root / "hf")
    proc = run_cli(
        ["convert", "hf-to-mcore", "--hf-dir", str(root / "hf"), "--out", str(root / "converted")], timeout=TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"pretrain": str(root / "pretrain"), "converted": str(root / "converted"), "convert_proc": proc}


BUILT: dict = {}  # the fixture's checkpoints, set before a case's argv runs


def _copy(tmp, which: str) -> str:
    """A fresh copy of a built checkpoint root inside the case's directory; returns its iteration directory."""
    dst = os.path.join(tmp, "ckpt")
    shutil.copytree(BUILT[which], dst)
    return os.path.join(dst, "iter_0000000")


def _largest_shard(step: str) -> str:
    return max((n for n in os.listdir(step) if n.endswith(".distcp")), key=lambda n: os.path.getsize(f"{step}/{n}"))


def truncated(tmp, which="pretrain") -> str:
    step = _copy(tmp, which)
    with open(os.path.join(step, _largest_shard(step)), "r+b") as f:
        f.truncate(1000)
    return os.path.join(tmp, "ckpt")


def without(name: str):
    def make(tmp, which="pretrain") -> str:
        step = _copy(tmp, which)
        os.remove(os.path.join(step, name if name != "shard" else _largest_shard(step)))
        return os.path.join(tmp, "ckpt")

    return make


def garbled(tmp) -> str:
    """Same sizes, damaged bytes: only the load itself can tell."""
    step = _copy(tmp, "pretrain")
    with open(os.path.join(step, _largest_shard(step)), "r+b") as f:
        f.write(b"\xff" * 64)
    return os.path.join(tmp, "ckpt")


def dangling_pointer(tmp) -> str:
    _copy(tmp, "pretrain")
    with open(os.path.join(tmp, "ckpt", "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("7")
    return os.path.join(tmp, "ckpt")


def pretrain(tmp, *extra) -> list[str]:
    return [*PRETRAIN, f"logging.run_dir={tmp}/run", *extra]


def a_file(tmp) -> str:
    path = os.path.join(tmp, "notes.txt")
    with open(path, "w") as f:
        f.write("not a directory\n")
    return path


def a_folder(tmp) -> str:
    os.makedirs(os.path.join(tmp, "a_folder"), exist_ok=True)
    return "a_folder"


def bad_recipe(tmp) -> str:
    path = os.path.join(tmp, "my_recipe.yaml")
    with open(path, "w") as f:
        f.write(f"base: {TINY}\ntrain:\n  stepz: 3\n")
    return path


def full_disk_run(tmp) -> str:
    """A run directory (outside the snapshot: /dev/full must not be read) whose config.yaml is /dev/full."""
    run = f"{tmp}_full_disk_run"
    os.makedirs(run, exist_ok=True)
    if not os.path.lexists(f"{run}/config.yaml"):
        os.symlink("/dev/full", f"{run}/config.yaml")
    return run


TRUNCATED = ("is truncated", "ckpt/iter_0000000/__", ".distcp", "1000 bytes")
OUT = ("run",)  # a failed pretrain may leave its run directory

CASES = [
    # -------------------------------------------------------------------- damaged checkpoints
    Case(
        "resume_from_truncated_shard",
        lambda t: pretrain(t, f"checkpoint.resume_from={truncated(t)}", f"checkpoint.dir={t}/new"),
        TRUNCATED,
        OUT + ("new",),
    ),
    Case(
        "resume_from_without_common_pt",
        lambda t: pretrain(t, f"checkpoint.resume_from={without('common.pt')(t)}", f"checkpoint.dir={t}/new"),
        ("ckpt/iter_0000000", "common.pt is missing"),
        OUT + ("new",),
    ),
    Case(
        "resume_from_without_a_shard",
        lambda t: pretrain(t, f"checkpoint.resume_from={without('shard')(t)}", f"checkpoint.dir={t}/new"),
        ("ckpt/iter_0000000", ".distcp is missing"),
        OUT + ("new",),
    ),
    Case(
        "resume_from_without_torch_metadata",
        lambda t: pretrain(t, f"checkpoint.resume_from={without('.metadata')(t)}", f"checkpoint.dir={t}/new"),
        ("ckpt/iter_0000000", ".metadata is missing"),
        OUT + ("new",),
    ),
    Case(
        "resume_from_garbled_shard",
        lambda t: pretrain(t, f"checkpoint.resume_from={garbled(t)}", f"checkpoint.dir={t}/new"),
        ("checkpoint", "ckpt/iter_0000000", "cannot read"),
        OUT + ("new",),
    ),
    Case(
        "resume_from_dangling_pointer",
        lambda t: pretrain(t, f"checkpoint.resume_from={dangling_pointer(t)}", f"checkpoint.dir={t}/new"),
        ("latest_checkpointed_iteration.txt", "iter_0000007"),
        OUT + ("new",),
    ),
    Case(
        "resume_own_dir_truncated_shard",  # checkpoint.resume=true (default) on a damaged checkpoint.dir
        lambda t: pretrain(t, f"checkpoint.dir={truncated(t)}"),
        TRUNCATED,
        OUT,
    ),
    Case(
        "init_from_truncated_shard",
        lambda t: pretrain(t, f"checkpoint.init_from={truncated(t)}", f"checkpoint.dir={t}/new"),
        TRUNCATED,
        OUT + ("new",),
    ),
    Case(
        "init_from_without_common_pt",
        lambda t: pretrain(t, f"checkpoint.init_from={without('common.pt')(t)}", f"checkpoint.dir={t}/new"),
        ("ckpt/iter_0000000", "common.pt is missing"),
        OUT + ("new",),
    ),
    Case(
        "mcore_to_hf_truncated_shard",
        lambda t: ["convert", "mcore-to-hf", "--mcore-dir", truncated(t, "converted"), "--out", f"{t}/hf"],
        TRUNCATED,
        ("hf",),
    ),
    Case(
        "mcore_to_hf_without_common_pt",
        lambda t: ["convert", "mcore-to-hf", "--mcore-dir", without("common.pt")(t, "converted"), "--out", f"{t}/hf"],
        ("ckpt/iter_0000000", "common.pt is missing"),
        ("hf",),
    ),
    Case(
        "megatron_lm_flags_without_torch_metadata",
        lambda t: ["convert", "megatron-lm-flags", "--mcore-dir", without(".metadata")(t)],
        ("ckpt/iter_0000000", ".metadata is missing"),
    ),
    # -------------------------------------------------------------------- file-system errors
    Case(
        "checkpoint_dir_under_a_file",  # refused before training, not at the first save
        lambda t: pretrain(t, f"checkpoint.dir={a_file(t)}/ckpt"),
        ("checkpoint.dir=", "notes.txt", "is a file, not a directory"),
        OUT,
    ),
    Case(
        "run_dir_not_writable",  # EPERM/EACCES/EROFS for root and users alike
        lambda t: pretrain(t, "logging.run_dir=/sys/megarec-bad-input/run"),
        ("logging.run_dir=/sys/megarec-bad-input/run", "cannot write in"),
    ),
    Case(
        "full_disk",  # ENOSPC from close(), which names no file: the line still does
        lambda t: [*PRETRAIN, f"logging.run_dir={full_disk_run(t)}"],
        ("config.yaml", "No space left on device"),
    ),
    Case(
        "input_is_a_directory",
        lambda t: ["scaling", "plan", "--flops", "1e21", "--fit", a_folder(t)],
        ("a_folder: Is a directory",),
    ),
    Case(
        "input_under_a_file",
        lambda t: ["scaling", "plan", "--flops", "1e21", "--fit", f"{a_file(t)}/fit.json"],
        ("notes.txt/fit.json", "Not a directory"),
    ),
    Case(
        "out_under_a_file",  # refused before the fit runs
        lambda t: ["scaling", "fit", "--runs", f"{t}/runs.csv", "--out", f"{a_file(t)}/fit"],
        ("--out", "notes.txt", "is a file, not a directory"),
    ),
    # -------------------------------------------------------------------- config messages
    Case(
        "override_typo_blamed_on_the_command_line",
        lambda t: ["pretrain", "--config", "configs/pretrain/tiny_cpu.yaml", "train.nope=1"],
        ("unknown config key 'train.nope'", "from the command line: 'train.nope=1'"),
    ),
    Case(
        "recipe_typo_blamed_on_the_recipe",
        lambda t: ["pretrain", "--config", bad_recipe(t), "train.steps=2"],
        ("unknown config key 'train.stepz'", "my_recipe.yaml"),
    ),
    Case(
        "recipe_found_in_the_repository_configs",  # relative to <repo>/configs, from another directory
        lambda t: ["pretrain", "--config", "pretrain/tiny_cpu.yaml", "train.seq_length=x"],
        ("train.seq_length: expected an integer", "from the command line"),
    ),
    Case(
        "micro_batch_size_zero",
        lambda t: pretrain(t, "train.micro_batch_size=0"),
        ("train.micro_batch_size must be >= 1, got 0",),
    ),
    Case(
        "log_interval_zero",  # was a ZeroDivisionError at the first step
        lambda t: pretrain(t, "logging.log_interval=0"),
        ("logging.log_interval must be >= 1, got 0",),
    ),
    Case(
        "sft_micro_batch_size_zero",
        lambda t: ["sft", "model.path=hf", f"logging.run_dir={t}/run", "train.micro_batch_size=0"],
        ("train.micro_batch_size must be >= 1, got 0",),
    ),
    Case(
        "sft_override_typo",
        lambda t: ["sft", "--config", "configs/posttrain/sft.yaml", "model.path=hf", "optimizer.lrr=1"],
        ("unknown config key 'optimizer.lrr'", "from the command line: 'optimizer.lrr=1'"),
    ),
]


def _write_runs_csv(tmp) -> None:
    with open(os.path.join(tmp, "runs.csv"), "w") as f:
        f.write("params,tokens,loss\n1e6,1e8,4.0\n1e7,1e9,3.0\n1e8,1e10,2.5\n1e6,1e9,3.6\n1e7,1e10,2.8\n")


@pytest.mark.timeout(2 * TIMEOUT)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line(case, built, tmp_path):
    BUILT.update(built)
    tmp = str(tmp_path)
    _write_runs_csv(tmp)
    argv = case.argv(tmp)
    before = snapshot(tmp)
    proc = run_cli(argv, timeout=TIMEOUT, cwd=tmp, env=case.env)
    line = one_error_line(proc, argv[0])
    for needle in case.needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert changed(before, snapshot(tmp), case.outputs) == []
    assert not [p for p in os.listdir(tmp) if p.startswith(".")], "a hidden staging directory was left behind"


def test_override_typo_does_not_blame_the_recipe(tmp_path):
    proc = run_cli(["pretrain", "--config", TINY, "train.nope=1"], timeout=TIMEOUT, cwd=str(tmp_path))
    line = one_error_line(proc, "pretrain")
    assert "tiny_cpu.yaml" not in line and "base.yaml" not in line, line


# ------------------------------------------------------------------------------------ under torchrun


def rank_error_lines(proc, verb: str) -> str:
    """Under torchrun: each rank that got to print printed the same single error line (rank 0 bare, others
    prefixed) and nothing else, and exited 2 — torchrun stops the other ranks (SIGTERM) as soon as the first
    one exits, so a rank may end before printing; the launcher's own report follows. Returns the line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    launcher = next(
        (i for i, line in enumerate(lines) if re.match(r"^[EWI]\d{4} .*torch/distributed/elastic", line)), len(lines)
    )
    workers = lines[:launcher]
    messages = {re.sub(r"^\[rank \d+\] ", "", line) for line in workers}
    assert workers and len(messages) == 1, "\n".join(lines[-30:])
    (message,) = messages
    assert message.startswith(f"megarec {verb}: error: "), message
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", proc.stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, proc.stderr[-3000:]
    assert "Traceback" not in "\n".join(workers)
    return message


@pytest.mark.slow
@pytest.mark.timeout(2 * TIMEOUT)
@pytest.mark.parametrize(
    "make,key,needles",
    [
        (truncated, "resume_from", TRUNCATED),
        (without("common.pt"), "init_from", ("ckpt/iter_0000000", "common.pt is missing")),
    ],
    ids=["resume_from_truncated_shard", "init_from_without_common_pt"],
)
def test_damaged_checkpoint_under_torchrun(make, key, needles, built, tmp_path):
    BUILT.update(built)
    tmp = str(tmp_path)
    argv = pretrain(tmp, f"checkpoint.{key}={make(tmp)}", f"checkpoint.dir={tmp}/new")
    before = snapshot(tmp)
    proc = run_cli(argv, nproc=2, timeout=TIMEOUT, cwd=tmp)
    line = rank_error_lines(proc, "pretrain")
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert changed(before, snapshot(tmp), OUT + ("new",)) == []


# ------------------------------------------------------------------------------------ full disk


def run_with_file_size_limit(argv: list[str], limit: int, cwd: str):
    """`megarec <argv>` with RLIMIT_FSIZE = `limit` bytes: a write past it fails with EFBIG (Python ignores
    SIGXFSZ), which is what a full disk or an exhausted quota looks like to the writer."""
    import resource
    import subprocess
    import sys

    def limit_writes():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "megarec", *argv]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd, env=env, preexec_fn=limit_writes
    )


def test_full_disk_while_building_the_dataset_index_leaves_no_partial_index(tmp_path):
    """Megatron-Core writes its index files in place and reuses what it finds: a cut-short build must not
    leave files behind (a truncated last file would look like a finished index to the next run)."""
    cache = tmp_path / "run" / "data_cache"
    proc = run_with_file_size_limit([*PRETRAIN, f"logging.run_dir={tmp_path / 'run'}"], 100_000, str(tmp_path))
    line = one_error_line(proc, "pretrain")
    for needle in (f"cannot build the dataset index cache in {cache} (data.cache_dir)", "short write", "removed"):
        assert needle in line, line
    assert os.listdir(cache) == []


def test_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path):
    """Step 2's save is refused by the file system: one line says so and names step 1 as the checkpoint in
    force; the partial step-2 directory is gone and the pointer and step 1 are untouched."""
    run = [*PRETRAIN, f"logging.run_dir={tmp_path / 'run'}", f"checkpoint.dir={tmp_path / 'ckpt'}"]
    # The 2-step dataset index first (no checkpoint), so the limited run writes nothing but the checkpoint.
    proc = run_cli([*run, "train.steps=2", "checkpoint.save_interval=0"], timeout=TIMEOUT, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.rmtree(tmp_path / "ckpt", ignore_errors=True)
    proc = run_cli([*run, "train.steps=1", "checkpoint.save_interval=1"], timeout=TIMEOUT, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    step1 = tmp_path / "ckpt" / "iter_0000001"
    before = snapshot(str(tmp_path / "ckpt"))
    largest = max(p.stat().st_size for p in step1.iterdir())
    proc = run_with_file_size_limit(
        [*run, "train.steps=2", "checkpoint.save_interval=1", "checkpoint.resume=true"], largest // 2, str(tmp_path)
    )
    line = one_error_line(proc, "pretrain")
    for needle in ("cannot write checkpoint step 2", "nothing was published", f"still {step1}"):
        assert needle in line, line
    assert snapshot(str(tmp_path / "ckpt")) == before


# ------------------------------------------------------------------------------------ quiet runs


def test_cpu_pretrain_says_once_which_gpu_packages_are_absent(tmp_path):
    """No Transformer Engine / Apex warnings and no wandb banner: one line names the absent packages, and one
    says where checkpoints go."""
    proc = run_cli(
        [*PRETRAIN, f"logging.run_dir={tmp_path / 'run'}", "logging.wandb_mode=offline"],
        timeout=TIMEOUT,
        cwd=str(tmp_path),
        env={"WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert len([line for line in output.splitlines() if "optional GPU packages" in line]) <= 1, output
    for noise in ("Transformer Engine and Apex", "Apex is not installed", "UserWarning", "FutureWarning", "wandb:"):
        assert noise not in output, output
    assert proc.stderr.strip() == "", proc.stderr
    saved = [line for line in proc.stdout.splitlines() if "checkpoints go to" in line]
    assert saved == [f"megarec: checkpoints go to {tmp_path / 'run' / 'checkpoints'} (checkpoint.dir)"], proc.stdout


def test_convert_says_once_which_gpu_packages_are_absent(built):
    proc = built["convert_proc"]
    output = proc.stdout + proc.stderr
    assert len([line for line in output.splitlines() if "optional GPU packages" in line]) <= 1, output
    for noise in ("Transformer Engine and Apex", "Apex is not installed", "UserWarning"):
        assert noise not in output, output
