"""`megarec doctor gpu` on the CPU side: flags and one-line errors, the skip rules as functions of a device
description, the tolerance comparisons on real metrics.jsonl files, the verdict and exit code, the planned
command lines against the real parsers and config loader, and the subprocess runner's deadlines.

Nothing here pretends a GPU run passed: the checks' GPU work is not run on this machine (see the README's
"GPU acceptance check")."""

from __future__ import annotations

import json
import math
import os
import sys
import time

import pytest

from megarec.common.errors import ConfigError
from megarec.doctor import checks, curves, device, plan, runner, summary
from megarec.doctor.device import DeviceInfo

from conftest import REPO, run_cli

H100 = DeviceInfo("NVIDIA H100 80GB HBM3", (9, 0), 79.1, 1, visible=["0"])


def dev(name="NVIDIA H100 80GB HBM3", cap=(9, 0), mem=79.1, count=1, **kw) -> DeviceInfo:
    return DeviceInfo(name, cap, mem, count, visible=[str(i) for i in range(count)], **kw)


# --- flags ---------------------------------------------------------------------------------------------------------


def test_select_checks_keeps_the_fixed_order():
    names = lambda sel: [c.name for c in sel]  # noqa: E731
    assert names(checks.select_checks(None, None)) == list(checks.CHECK_NAMES)
    assert checks.CHECK_NAMES == ("te_parity", "fp8", "thd", "throughput", "memory", "multi_gpu")
    assert names(checks.select_checks("multi_gpu, fp8,te_parity", None)) == ["te_parity", "fp8", "multi_gpu"]
    assert names(checks.select_checks(None, "memory,throughput")) == ["te_parity", "fp8", "thd", "multi_gpu"]
    assert names(checks.select_checks("fp8,thd", "fp8")) == ["thd"]


@pytest.mark.parametrize(
    "only,skip,message",
    [
        ("fp9", None, "--only: unknown check 'fp9' (checks: te_parity, fp8, thd, throughput, memory, multi_gpu)"),
        (None, "te_parity,mem", "--skip: unknown check 'mem'"),
        (",", None, "--only: no check named"),
        ("fp8", "fp8", "--only/--skip leave no check to run"),
    ],
)
def test_select_checks_errors(only, skip, message):
    with pytest.raises(ConfigError) as e:
        checks.select_checks(only, skip)
    assert message in str(e.value)


def _one_error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    return lines[0]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--only", "fp9"], "--only: unknown check 'fp9'"),
        (["--skip", "thd,warp"], "--skip: unknown check 'warp'"),
        (["--steps", "2"], "--steps must be at least 5"),
        (["--timeout-scale", "0"], "--timeout-scale must be > 0"),
        (["--tiktoken", "/nonexistent/qwen.tiktoken"], "--tiktoken /nonexistent/qwen.tiktoken is not a file"),
    ],
)
def test_bad_flags_are_one_line(flags, message, tmp_path):
    line = _one_error_line(run_cli(["doctor", "gpu", "--out", str(tmp_path / "d"), *flags], timeout=120))
    assert line.startswith("megarec doctor gpu: error: ") and message in line, line


def test_without_cuda_one_error_line_exit_2(tmp_path):
    """This machine has no GPU: the doctor says so in one line, exits 2 and writes nothing."""
    out = tmp_path / "doctor"
    line = _one_error_line(run_cli(["doctor", "gpu", "--out", str(out)], timeout=120))
    assert line.startswith("megarec doctor gpu: error: no CUDA device visible"), line
    assert not out.exists()


def test_help_explains_every_flag_and_check():
    proc = run_cli(["doctor", "gpu", "--help"], timeout=60)
    assert proc.returncode == 0
    for text in (
        "--out",
        "--only",
        "--skip",
        "--steps",
        "--keep",
        "--tiktoken",
        "--peak-tflops",
        "--timeout-scale",
        "doctor_gpu.json",
        *checks.CHECK_NAMES,
    ):
        assert text in proc.stdout, text


def test_out_dir_is_empty_or_an_earlier_doctors(tmp_path):
    from megarec.doctor.cli import MARKER, _prepare_out

    out = tmp_path / "doctor"
    assert _prepare_out(str(out)) == str(out) and (out / MARKER).is_file() and (out / "logs").is_dir()
    paths = plan.WorkPaths(str(out))
    for stale in (paths.log("te_bf16"), os.path.join(paths.run_dir("te_bf16"), "metrics.jsonl"), paths.summary):
        os.makedirs(os.path.dirname(stale), exist_ok=True)
        open(stale, "w").close()
    _prepare_out(str(out))  # an earlier doctor's output: reused, its results cleared
    assert sorted(os.listdir(out)) == [MARKER, "logs"] and os.listdir(paths.logs) == []
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty"):
        _prepare_out(str(other))
    assert (other / "notes.txt").read_text() == "mine"


# --- skip rules and device facts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,cap,te_fp8,skips",
    [
        ("NVIDIA A100-SXM4-80GB", (8, 0), None, "compute capability 8.0 < 8.9"),
        ("NVIDIA GeForce RTX 3090", (8, 6), None, "8.6 < 8.9"),
        ("NVIDIA L4", (8, 9), (True, ""), None),
        ("NVIDIA H100 80GB HBM3", (9, 0), None, None),
        ("NVIDIA B200", (10, 0), (True, ""), None),
        (
            "NVIDIA L40S",
            (8, 9),
            (False, "CUDA 12.1 or higher required for FP8 execution on Ada."),
            "Transformer Engine reports no FP8 support: CUDA 12.1",
        ),
    ],
)
def test_fp8_rule(name, cap, te_fp8, skips):
    reason = device.fp8_skip_reason(dev(name, cap, te_fp8=te_fp8))
    if skips is None:
        assert reason is None
    else:
        assert reason and skips in reason


def test_multi_gpu_rule():
    assert device.multi_gpu_skip_reason(dev(count=1)) == "needs 2 GPUs, 1 visible"
    assert device.multi_gpu_skip_reason(dev(count=2)) is None
    assert device.multi_gpu_skip_reason(dev(count=8)) is None


@pytest.mark.parametrize(
    "name,peak,fp8_peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0, 1979.0),
        ("NVIDIA H100 PCIe", 756.0, 1513.0),
        ("NVIDIA H100 NVL", 835.0, 1671.0),
        ("NVIDIA H200", 989.0, 1979.0),
        ("NVIDIA GH200 480GB", 989.0, 1979.0),
        ("NVIDIA A100-SXM4-40GB", 312.0, None),
    ],
)
def test_known_gpus_have_a_peak_and_the_floor(name, peak, fp8_peak):
    spec = device.gpu_spec(name)
    assert (spec.bf16_tflops, spec.fp8_tflops) == (peak, fp8_peak)
    assert device.peak_tflops(dev(name))[0] == peak
    assert device.mfu_floor(dev(name)) == device.MFU_FLOOR == 0.15


def test_unknown_gpu_has_no_floor_unless_a_peak_is_given():
    rtx = dev("NVIDIA GeForce RTX 4090", (8, 9))
    assert device.gpu_spec(rtx.name) is None
    assert device.peak_tflops(rtx) == (None, "unknown GPU") and device.mfu_floor(rtx) is None
    assert device.peak_tflops(rtx, 165.0) == (165.0, "--peak-tflops") and device.mfu_floor(rtx, 165.0) == 0.15


def test_te_missing_and_visible_devices():
    assert device.te_missing_reason(H100) is None
    reason = device.te_missing_reason(dev(te_error="ModuleNotFoundError: No module named 'transformer_engine'"))
    assert "Transformer Engine does not import" in reason and "No module named" in reason
    assert device.visible_devices(2, {"CUDA_VISIBLE_DEVICES": "3, 5,6"}) == ["3", "5"]
    assert device.visible_devices(2, {}) == ["0", "1"]
    info = device.parse_probe(
        {
            "name": "NVIDIA H100 80GB HBM3",
            "capability": [9, 0],
            "total_memory_gib": 79.1,
            "count": 2,
            "te_version": "2.4.0",
            "te_error": None,
            "te_fp8": [True, ""],
        },
        {"CUDA_VISIBLE_DEVICES": "4,7"},
    )
    assert info.capability == (9, 0) and info.visible == ["4", "7"] and info.te_fp8 == (True, "")
    assert info.as_dict()["capability"] == "9.0" and info.as_dict()["peak_table_entry"] == "H100/H200 SXM"


def test_memory_probe_sequence_length_fits_the_gpu():
    recipe = plan.recipe_seq_length()
    assert recipe == 32768  # configs/models/qwen3_8b_h100.yaml
    assert plan.memory_seq_length(dev(mem=79.1), recipe) == recipe
    assert plan.memory_seq_length(dev("NVIDIA A100-SXM4-40GB", (8, 0), 39.4), recipe) == 16384
    assert plan.memory_seq_length(dev(mem=8.0), recipe) is None
    # the 4-layer run is what must fit; its estimate grows with the sequence
    assert plan.memory_estimate(4, 16384).total < plan.memory_estimate(4, 32768).total


# --- curves from real metrics.jsonl files ----------------------------------------------------------------------------


def write_metrics(run_dir, losses, **extra_per_step):
    """A metrics.jsonl as the pretrain loop writes it (through its own MetricsLogger), with a checkpoint and a
    validation record in between that the doctor must skip."""
    from megarec.runtime.metrics import MetricsLogger

    logger = MetricsLogger(str(run_dir), True, "disabled", "p", None, {}, len(losses), 0, False)
    for i, loss in enumerate(losses, 1):
        rec = {"step": i, "loss": loss, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1000.0 * i}
        rec.update({k: v[i - 1] for k, v in extra_per_step.items()})
        logger.log(rec)
        if i == 2:
            logger.log({"step": i, "valid_loss": 5.0, "eval_time_s": 0.1})
            logger.log({"step": i, "checkpoint": "/x/iter_0000002", "save_time_s": 0.2})
    logger.close()
    return str(run_dir)


REF = [9.11, 8.80, 8.29, 8.25, 8.63, 8.15, 8.45, 8.07, 8.02, 7.93]


def test_read_records_skips_other_records(tmp_path):
    run = write_metrics(tmp_path / "a", REF)
    recs = curves.read_records(run)
    assert [r["step"] for r in recs] == list(range(1, 11)) and curves.loss_curve(recs) == REF
    assert curves.read_records(str(tmp_path / "missing")) == []


def _curve(tmp_path, name, losses):
    return curves.loss_curve(curves.read_records(write_metrics(tmp_path / name, losses)))


def test_compare_curves_within_and_outside_tolerance(tmp_path):
    tol = checks.BF16_PARITY
    assert tol.max_rel == 0.02
    ref = _curve(tmp_path, "ref", REF)
    close = _curve(tmp_path, "close", [x * (1 + 0.015 * (-1) ** i) for i, x in enumerate(REF)])
    c = curves.compare_curves(ref, close, tol, 10, "local", "TE")
    assert c.ok and math.isclose(c.max_rel_diff, 0.015, rel_tol=1e-6) and "within 1.50%" in c.reason
    off = list(REF)
    off[6] *= 1.03
    c = curves.compare_curves(ref, _curve(tmp_path, "off", off), tol, 10, "local", "TE")
    assert not c.ok and c.worst_step == 7 and "TE departs from local by 3.00% at step 7" in c.reason
    # the FP8 tolerance is wider: the same 3% passes there
    assert curves.compare_curves(ref, _curve(tmp_path, "off8", off), checks.FP8_PARITY, 10).ok


def test_compare_curves_missing_steps_and_nan(tmp_path):
    ref = _curve(tmp_path, "ref", REF)
    short = _curve(tmp_path, "short", REF[:9])
    c = curves.compare_curves(ref, short, checks.BF16_PARITY, 10, "local", "TE")
    assert not c.ok and c.reason == "TE logged 9 of 10 steps"
    nan = list(REF)
    nan[3] = float("nan")  # the logger writes it as null
    nan_curve = _curve(tmp_path, "nan", nan)
    assert nan_curve[3] is None
    c = curves.compare_curves(ref, nan_curve, checks.BF16_PARITY, 10, "local", "TE")
    assert not c.ok and c.reason == "TE has a non-finite loss at step 4"
    assert not curves.compare_curves(nan_curve, ref, checks.BF16_PARITY, 10).ok


def test_curve_falls():
    assert curves.curve_falls(REF, checks.MIN_DROP)
    assert not curves.curve_falls([9.1, 9.0, 9.05, 9.0, 8.95], checks.MIN_DROP)  # 1% is no training signal
    assert not curves.curve_falls([9.1, None, 8.0, 7.0, 6.0], checks.MIN_DROP)
    assert not curves.curve_falls([9.1, 8.0], checks.MIN_DROP)


def test_throughput_statistics_and_rules(tmp_path):
    n = plan.THROUGHPUT_STEPS
    mfu = [0.05, 0.2, 0.3] + [0.40, 0.42, 0.41, 0.39, 0.40, 0.41, 0.40][: n - 3]
    recs = curves.read_records(write_metrics(tmp_path / "t", REF[:n], mfu=mfu))
    med = curves.steady_median(recs, "mfu", plan.THROUGHPUT_WARMUP)
    assert med == pytest.approx(0.40)  # warm-up steps left out
    assert curves.steady_median(recs, "tokens_per_s", plan.THROUGHPUT_WARMUP) == pytest.approx(7000.0)
    assert checks.throughput_problems("qwen3-0.6b", recs, med, 0.15) == []
    assert checks.throughput_problems("qwen3-0.6b", recs, med, None) == []
    assert checks.throughput_problems("qwen3-0.6b", recs, 0.1, 0.15) == ["qwen3-0.6b: MFU 0.100 below the 0.15 floor"]
    assert "no finite MFU" in checks.throughput_problems("qwen3-0.6b", recs, None, None)[0]
    assert "logged 9 of 10 steps" in checks.throughput_problems("qwen3-0.6b", recs[:9], med, 0.15)[0]


def test_memory_per_layer_rule(tmp_path):
    peaks2 = curves.read_records(write_metrics(tmp_path / "m2", REF[:3], max_memory_allocated_gib=[10.0, 18.5, 18.5]))
    peaks4 = curves.read_records(write_metrics(tmp_path / "m4", REF[:3], max_memory_allocated_gib=[20.0, 31.5, 31.0]))
    key = "max_memory_allocated_gib"
    p2, p4 = curves.last_value(peaks2, key), curves.last_value(peaks4, key)
    assert (p2, p4) == (18.5, 31.0)
    per_layer = curves.per_layer_delta(p2, p4, 2, 4)
    assert per_layer == 6.25
    estimated = curves.per_layer_delta(
        plan.memory_estimate(2, 32768).total, plan.memory_estimate(4, 32768).total, 2, 4
    ) / (1 << 30)
    assert 7.0 < estimated < 8.5  # weights/grads/Adam of one 8B layer + its 32K activations
    assert checks.memory_problems(per_layer / estimated) == []
    assert checks.memory_problems(0.4) == ["measured/estimated memory per layer is 0.40, outside [0.5, 1.3]"]
    assert checks.memory_problems(1.31) and checks.memory_problems(None) and checks.memory_problems(float("nan"))
    assert curves.last_value(curves.read_records(write_metrics(tmp_path / "m0", REF[:2])), key) is None


def test_thd_rules():
    good = {
        "max_abs_diff": 0.03,
        "mean_abs_diff": 0.005,
        "control_mean_abs_diff": 0.63,
        "tokens_compared": 921,
        "loss_mask_tokens": 921,
    }
    assert checks.thd_problems(good) == []
    assert "up to 0.1500" in checks.thd_problems({**good, "max_abs_diff": 0.15})[0]
    assert "mean 0.0300" in checks.thd_problems({**good, "mean_abs_diff": 0.03})[0]
    assert "cannot tell packed" in checks.thd_problems({**good, "control_mean_abs_diff": 0.05})[0]
    assert "921 in-document targets" in checks.thd_problems({**good, "loss_mask_tokens": 925})[0]
    assert len(checks.thd_problems({**good, "max_abs_diff": float("nan"), "control_mean_abs_diff": float("nan")})) == 2


# --- verdict, exit code, JSON --------------------------------------------------------------------------------------


def test_verdict_and_exit_code():
    R = summary.CheckResult
    passed = [R("te_parity", "pass", "ok"), R("fp8", "skip", "A100")]
    assert summary.verdict(passed) == "pass" and summary.exit_code(passed) == 0
    failed = passed + [R("thd", "fail", "timeout: thd_probe ...")]
    assert summary.verdict(failed) == "fail" and summary.exit_code(failed) == 1
    assert summary.exit_code([R("fp8", "skip", "A100")]) == 0  # nothing failed
    with pytest.raises(ValueError):
        R("x", "passed", "typo")
    s = summary.build_summary(
        failed + [R("memory", "pass", "ok", {"ratio": float("nan")})],
        device={"name": "X"},
        settings={"steps": 20},
        elapsed_s=12.34,
    )
    assert s["counts"] == {"pass": 2, "fail": 1, "skip": 1} and s["verdict"] == "fail" and s["exit_code"] == 1
    line = summary.summary_line(s)
    assert "\n" not in line and json.loads(line) == s and s["checks"][3]["measured"]["ratio"] is None
    assert summary.progress_line(failed[2]).startswith("thd: FAIL in 0s")


# --- planned command lines --------------------------------------------------------------------------------------------


def _small_arch():
    """The architecture `init-model` writes for the doctor's flags, through the real init-model parser."""
    from megarec.cli import build_parser
    from megarec.models.qwen3.presets import get_preset

    a = build_parser().parse_args(["init-model", "--tokenizer", "t", "--out", "o", *plan.SMALL_MODEL_FLAGS])
    return get_preset(a.preset).replace(
        num_layers=a.num_layers,
        hidden_size=a.hidden_size,
        ffn_hidden_size=a.ffn_hidden_size,
        num_attention_heads=a.num_attention_heads,
        num_query_groups=a.num_query_groups,
        head_dim=a.head_dim,
        vocab_size=plan.BPE_RANKS + 26,
    )


def test_planned_pretrain_overrides_are_valid_config(tmp_path):
    """Every `megarec pretrain` the doctor can launch loads through the real config loader, and its layout passes
    the engine's own checks for the Transformer Engine spec at the number of processes it runs on."""
    from megarec.common.config import load_config
    from megarec.models.qwen3.builder import resolve_arch, validate_layout
    from megarec.pretrain.batch import check_seq_length
    from megarec.pretrain.config import PretrainConfig

    paths = plan.WorkPaths(str(tmp_path))
    runs = plan.planned_pretrain_runs(paths, steps=20, peak_tflops=989.0, memory_seq=32768)
    assert len({r.name for r in runs}) == len(runs) == 9
    small = _small_arch()
    for run in runs:
        cfg = load_config(PretrainConfig, None, run.overrides)
        assert cfg.data.mock and cfg.model.dtype == "bf16" and cfg.logging.run_dir == paths.run_dir(run.name)
        assert cfg.logging.wandb_mode == "disabled" and cfg.train.eval_interval == 0 and cfg.train.seed == plan.SEED
        arch = small if cfg.model.hf_config else resolve_arch(cfg.model)
        validate_layout(arch, cfg.parallel, cfg.model.transformer_impl, run.nproc, cfg.model.fp8)
        check_seq_length(cfg.train.seq_length, cfg.parallel)
        dp = run.nproc // cfg.parallel.model_parallel_size
        assert dp >= 1 and cfg.train.global_batch_size % (cfg.train.micro_batch_size * dp) == 0
        if run.name in plan.SMALL_RUNS:
            assert cfg.checkpoint.init_from == paths.mcore and cfg.model.hf_config == paths.hf_model
            assert cfg.train.steps == 20
    by = {r.name: load_config(PretrainConfig, None, r.overrides) for r in runs}
    assert by["te_bf16"].model.transformer_impl == "transformer_engine"
    assert by["local_bf16"].model.transformer_impl == "local"
    assert by["te_fp8"].model.fp8 == "hybrid" and by["te_bf16"].model.fp8 is None
    assert by["tp2_sp"].parallel.tensor_model_parallel_size == 2 and by["tp2_sp"].parallel.sequence_parallel
    assert by["cp2"].parallel.context_parallel_size == 2
    assert by["throughput_0p6b"].model.preset == "qwen3-0.6b" and by["throughput_1p7b"].train.seq_length == 4096
    assert by["throughput_1p7b"].logging.gpu_peak_tflops == 989.0
    assert [by[f"memory_{n}l"].model.num_layers for n in (2, 4)] == [2, 4]
    assert by["memory_4l"].train.seq_length == 32768 and by["memory_4l"].model.vocab_size == plan.MEMORY_VOCAB
    # same data, batches and seed for every curve that is compared
    keys = lambda c: (c.train.seq_length, c.train.global_batch_size, c.train.seed, c.optimizer.lr)  # noqa: E731
    assert len({keys(by[n]) for n in plan.SMALL_RUNS}) == 1
    # the 2-GPU runs go through torchrun, the others not
    argv = {r.name: r.argv("python") for r in runs}
    assert argv["tp2_sp"][:6] == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert argv["te_bf16"][:4] == ["python", "-m", "megarec", "pretrain"]


def test_setup_commands_parse_with_the_real_cli(tmp_path):
    from megarec.cli import build_parser

    paths = plan.WorkPaths(str(tmp_path))
    cmds = plan.setup_commands(paths, tiktoken="/t/qwen.tiktoken")
    parsed = [build_parser().parse_args(list(c.args)) for c in cmds]
    assert [p.verb for p in parsed] == ["tokenizer", "init-model", "convert"]
    assert parsed[0].bpe_ranks == plan.BPE_RANKS and parsed[0].tiktoken == "/t/qwen.tiktoken"
    assert parsed[1].tokenizer == paths.tokenizer and parsed[1].out == paths.hf_model
    assert parsed[2].hf_dir == paths.hf_model and parsed[2].out == paths.mcore and parsed[2].dtype == "bf16"
    assert "--tiktoken" not in plan.setup_commands(paths)[0].args
    assert plan.thd_probe_argv("python")[:3] == ["python", "-m", "megarec.doctor.thd_probe"]


def test_log_lines_the_doctor_looks_for_are_printed_by_the_product(monkeypatch, capsys):
    """The parity checks read these lines from the pretrain logs; they must stay in the code that prints them
    (tests/test_checkpoint_extra_state.py runs the extra-state line for real)."""
    import inspect

    import torch
    import torch.distributed as dist

    from megarec.pretrain import trainer as pretrain
    from megarec.pretrain.config import PretrainConfig
    from megarec.runtime import megatron_checkpoint as checkpointing

    assert checks.EXTRA_STATE_NOTE in inspect.getsource(checkpointing._load_tolerating_extra_state)
    assert checks.INIT_NOTE.replace("megarec: ", "") in inspect.getsource(pretrain._train)
    # the FP8 run announces its FP8 peak (what the fp8 check looks for), the bf16 run does not
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    cfg = PretrainConfig()
    assert pretrain._mfu_peak(cfg)[0] == "bf16" and checks.FP8_PEAK_NOTE not in capsys.readouterr().out
    cfg.model.fp8 = "hybrid"
    assert pretrain._mfu_peak(cfg)[0] == "fp8" and checks.FP8_PEAK_NOTE in capsys.readouterr().out


# --- the runner: real subprocesses --------------------------------------------------------------------------------


def _runner(tmp_path, messages):
    return runner.Runner(str(tmp_path / "logs"), runner.child_env(REPO), messages.append, heartbeat_s=0.5)


def test_runner_success_failure_and_environment(tmp_path):
    said = []
    r = _runner(tmp_path, said)
    r.start_check(60)
    out = r.run(
        "ok",
        [
            sys.executable,
            "-c",
            "import os; print('visible', os.environ['CUDA_VISIBLE_DEVICES'], "
            "os.environ['CUDA_DEVICE_MAX_CONNECTIONS'])",
        ],
        ["3", "5"],
    )
    assert "visible 3,5 1" in out.text() and out.text().startswith("$ CUDA_VISIBLE_DEVICES=3,5 ")
    with pytest.raises(runner.CommandFailed) as e:
        r.run(
            "bad",
            [
                sys.executable,
                "-c",
                "import sys; print('warming up'); sys.exit('megarec pretrain: error: no such thing')",
            ],
            ["0"],
        )
    assert "bad exited with status 1: megarec pretrain: error: no such thing (log: " in str(e.value)
    assert r.logs == {"ok": str(tmp_path / "logs" / "ok.log"), "bad": str(tmp_path / "logs" / "bad.log")}
    assert any("ok: done in" in m for m in said)


def test_runner_deadline_ends_the_whole_process_group(tmp_path, monkeypatch):
    """A command past its check's deadline is ended with its children (even one ignoring SIGTERM) and the check
    gets a timeout."""
    monkeypatch.setattr(runner, "KILL_GRACE_S", 1.0)
    said = []
    r = _runner(tmp_path, said)
    pid_file = tmp_path / "child.pid"
    script = (
        "import signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\ntime.sleep(300)\n"
    )
    r.start_check(2.0)
    start = time.monotonic()
    with pytest.raises(runner.CheckTimeout) as e:
        r.run("hang", [sys.executable, "-c", script], ["0"])
    assert time.monotonic() - start < 30
    assert str(e.value).startswith("timeout: hang was still running after ")
    child = int(pid_file.read_text())
    for _ in range(50):  # the SIGKILLed child may take a moment to be reaped by init
        if not os.path.exists(f"/proc/{child}") or "zombie" in open(f"/proc/{child}/status").read():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"child {child} survived the deadline")
    assert any("hang:" in m and "started" in m for m in said)  # heartbeat shows the log's last line


def test_run_check_turns_every_outcome_into_a_record(tmp_path):
    paths = plan.WorkPaths(str(tmp_path))
    ctx = checks.Context(paths, H100, checks.Settings(steps=20), _runner(tmp_path, []))

    def raising(exc):
        def func(_ctx):
            raise exc

        return func

    cases = [
        (checks.Skip("needs 2 GPUs, 1 visible"), "skip"),
        (checks.Fail("out of tolerance", {"x": 1}), "fail"),
        (runner.CheckTimeout("timeout: te_bf16 was still running"), "fail"),
        (KeyError("loss"), "fail"),
    ]
    for exc, status in cases:
        check = checks.Check("fp8", "t", 10, raising(exc), {"max_rel_diff_per_step": 0.05})
        result = checks.run_check(check, ctx, lambda m: None)
        assert result.status == status and result.tolerance == {"max_rel_diff_per_step": 0.05}
    assert result.reason.startswith("internal error KeyError")
    assert os.path.isfile(os.path.join(paths.logs, "fp8.traceback.txt"))


def test_checks_refuse_without_transformer_engine(tmp_path):
    no_te = dev(count=2, te_error="ImportError: libcudnn.so.9: cannot open shared object file")
    ctx = checks.Context(plan.WorkPaths(str(tmp_path)), no_te, checks.Settings(steps=20), _runner(tmp_path, []))
    for check in checks.CHECKS:
        result = checks.run_check(check, ctx, lambda m: None)
        assert result.status == "fail" and "Transformer Engine does not import" in result.reason, check.name
        assert result.logs == {}  # nothing was launched


def test_fp8_and_multi_gpu_skip_before_launching_anything(tmp_path):
    a100 = dev("NVIDIA A100-SXM4-80GB", (8, 0), count=1)
    ctx = checks.Context(plan.WorkPaths(str(tmp_path)), a100, checks.Settings(steps=20), _runner(tmp_path, []))
    by = {c.name: c for c in checks.CHECKS}
    fp8 = checks.run_check(by["fp8"], ctx, lambda m: None)
    multi = checks.run_check(by["multi_gpu"], ctx, lambda m: None)
    assert (fp8.status, multi.status) == ("skip", "skip") and fp8.logs == multi.logs == {}
    assert "8.0 < 8.9" in fp8.reason and multi.reason == "needs 2 GPUs, 1 visible"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_shared_setup_runs_for_real_and_a_failed_reference_is_reported_once(tmp_path):
    """The shared set-up (tokenizer → init-model → convert) runs for real here; the TE bf16 reference run then
    fails for real on this CUDA-less machine, te_parity reports it, and fp8 reports the same failure without
    launching it again."""
    paths = plan.WorkPaths(str(tmp_path / "out"))
    ctx = checks.Context(paths, dev(), checks.Settings(steps=5), _runner(tmp_path, []))
    by = {c.name: c for c in checks.CHECKS}
    first = checks.run_check(by["te_parity"], ctx, lambda m: None)
    assert first.status == "fail" and "te_bf16 exited with status 2" in first.reason
    assert "transformer_impl=transformer_engine needs CUDA" in first.reason
    assert list(first.logs) == ["setup_tokenizer", "setup_init_model", "setup_convert", "te_bf16"]
    assert os.path.isfile(os.path.join(paths.mcore, "latest_checkpointed_iteration.txt"))
    with open(os.path.join(paths.hf_model, "config.json")) as f:
        hf = json.load(f)
    assert (hf["hidden_size"], hf["num_hidden_layers"], hf["vocab_size"]) == (512, 4, plan.BPE_RANKS + 26)
    assert hf["initializer_range"] == 0.1 and hf["tie_word_embeddings"]
    second = checks.run_check(by["fp8"], ctx, lambda m: None)
    assert second.status == "fail" and second.reason.startswith("te_bf16 failed in an earlier check")
    assert second.logs == {}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cpu_pretrain_metrics_unchanged_and_readable(tmp_path):
    """On CPU the pretrain record gains no GPU-only keys (no mfu, no max_memory_allocated_gib), and the doctor reads
    a real run's metrics.jsonl."""
    run_dir = tmp_path / "run"
    proc = run_cli(
        [
            "pretrain",
            "--config",
            "configs/pretrain/tiny_cpu.yaml",
            "data.mock=true",
            "train.steps=3",
            "train.eval_interval=0",
            "checkpoint.save_interval=0",
            f"logging.run_dir={run_dir}",
            "logging.progress=false",
            "logging.wandb_mode=disabled",
        ],
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = curves.read_records(str(run_dir))
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert not any("mfu" in r or "max_memory_allocated_gib" in r for r in recs)
    curve = curves.loss_curve(recs)
    assert curves.compare_curves(curve, curve, checks.BF16_PARITY, 3).ok
