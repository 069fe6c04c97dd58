"""The checks of `megarec doctor gpu`: what each one runs, what it measures and the tolerance it applies.

Each check is a function of a `Context` returning a `CheckResult`. The work several checks share — the small
converted model (tokenizer → init-model → convert) and its Transformer Engine bf16 run, the reference of the
FP8 and multi-GPU checks — runs once, in the first check that needs it, whose time limit grows by that work's
allowance; a later check reuses the result (or reports the earlier failure).
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

from megarec.common.errors import ConfigError
from megarec.doctor import plan
from megarec.doctor.curves import (
    CurveTolerance,
    RatioBand,
    compare_curves,
    curve_falls,
    last_value,
    loss_curve,
    per_layer_delta,
    read_records,
    steady_median,
)
from megarec.doctor.device import (
    DeviceInfo,
    fits,
    fp8_skip_reason,
    mfu_floor,
    multi_gpu_skip_reason,
    peak_tflops,
    te_missing_reason,
)
from megarec.doctor.runner import CheckTimeout, CommandFailed, Outcome, Runner
from megarec.doctor.summary import FAIL, PASS, SKIP, CheckResult

# --- tolerances ---------------------------------------------------------------------------------------------------
BF16_PARITY = CurveTolerance(
    0.02,
    "bf16, same converted weights, data and seed; only kernels differ (TE fused "
    "norm+linear and attention vs PyTorch). On CPU two bf16 paths of the local spec (SDPA "
    "vs unfused attention) of this model differ by <= 0.1% per step over 20 steps at 256 "
    "tokens, so 2% is 20x that; a run that ignored checkpoint.init_from starts ~20% lower. "
    "Not yet calibrated on a GPU",
)
FP8_PARITY = CurveTolerance(
    0.05,
    "FP8 hybrid (E4M3 fwd / E5M2 bwd), delayed scaling with fresh amax history, vs "
    "the bf16 TE run; FP8 rounds GEMM inputs to 3-4 mantissa bits, so 2.5x the bf16 band. "
    "A guess until the first GPU runs: no FP8 hardware was available to calibrate it",
)
PARALLEL_PARITY = CurveTolerance(
    0.02, "same as the bf16 parity: TP/SP/CP change only reduction order and communication, not the maths"
)
MIN_DROP = 0.05  # the reference curve must fall by >= 5% (mean of the last 3 steps vs step 1)
THD_MAX_ABS = 0.10  # nats, any single token
THD_MEAN_ABS = 0.02  # nats, mean over tokens
THD_CONTROL_MIN = 0.20  # nats: the unpacked control must differ at least this much (10x THD_MEAN_ABS)
MEMORY_BAND = RatioBand(
    0.5,
    1.3,
    "megarec.models.qwen3.memory counts each op's saved tensors separately (an upper "
    "bound by design), so measured may be well below; above 1.3x the estimate undercounts",
)

# Lines the pretrain loop prints that the parity check looks for.
INIT_NOTE = "megarec: initialised weights from"
EXTRA_STATE_NOTE = "has no Transformer Engine extra state for"
FP8_PEAK_NOTE = "over the dense fp8 peak"  # the MFU announcement of a run with model.fp8 set

# Shared work and the time it adds to the check that runs it first (seconds, before --timeout-scale).
SETUP_ALLOWANCE_S = 240.0  # tokenizer (may pip-download the dashscope wheel once), init-model, convert
BASE_RUN_ALLOWANCE_S = 150.0  # the TE bf16 run of the small model


class Skip(Exception):
    """The check does not apply to this node; the message says why."""


class Fail(Exception):
    """The check could not be carried out or its result is out of tolerance; the message says why."""

    def __init__(self, reason: str, measured: Optional[dict] = None):
        super().__init__(reason)
        self.measured = measured or {}


@dataclass
class Settings:
    steps: int
    tiktoken: Optional[str] = None
    peak_tflops: Optional[float] = None
    timeout_scale: float = 1.0

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "tiktoken": self.tiktoken,
            "peak_tflops": self.peak_tflops,
            "timeout_scale": self.timeout_scale,
        }


class Context:
    """What the checks share: paths, the device, settings, the runner and the results of shared work."""

    def __init__(self, paths: plan.WorkPaths, device: DeviceInfo, settings: Settings, runner: Runner):
        self.paths, self.device, self.settings, self.runner = paths, device, settings, runner
        self._done: dict[str, object] = {}

    def _once(self, key: str, allowance_s: float, work: Callable[[], object]):
        if key in self._done:
            value = self._done[key]
            if isinstance(value, Exception):
                raise Fail(f"{key} failed in an earlier check: {value}")
            if isinstance(value, Outcome):
                self.runner.logs[value.name] = value.log  # this check's record lists every log it used
            return value
        self.runner.extend(allowance_s * self.settings.timeout_scale)
        try:
            value = work()
        except (CheckTimeout, CommandFailed, Fail) as e:
            self._done[key] = e
            raise
        self._done[key] = value
        return value

    def run(self, cmd: plan.Command) -> Outcome:
        if cmd.nproc > len(self.device.visible):
            raise Skip(f"{cmd.name} needs {cmd.nproc} GPUs, {len(self.device.visible)} visible")
        return self.runner.run(cmd.name, cmd.argv(), self.device.visible[: cmd.nproc])

    def small_model(self) -> None:
        """Tokenizer → random small HF Qwen3 (`init-model`) → Megatron-Core checkpoint (`convert hf-to-mcore`)."""
        self._once("setup", SETUP_ALLOWANCE_S, self._setup)

    def _setup(self) -> None:
        for cmd in plan.setup_commands(self.paths, self.settings.tiktoken):
            try:
                self.run(cmd)
            except CommandFailed as e:
                if cmd.name == "setup_tokenizer" and "dashscope" in str(e):
                    raise Fail(
                        "could not build the Qwen3-layout tokenizer: the dashscope wheel that carries "
                        "qwen.tiktoken could not be fetched with pip; pass --tiktoken PATH (a local "
                        f"qwen.tiktoken) — {e}"
                    ) from None
                raise

    def small_run(self, name: str) -> tuple[Outcome, list]:
        """A run of the small converted model (each name runs once) and its loss curve."""
        self.small_model()
        cmd = plan.small_run(self.paths, name, self.settings.steps)
        allowance = BASE_RUN_ALLOWANCE_S if name == "te_bf16" else 0.0
        outcome = self._once(name, allowance, lambda: self.run(cmd))
        return outcome, loss_curve(read_records(self.paths.run_dir(name)))


def _require_te(ctx: Context) -> None:
    reason = te_missing_reason(ctx.device)
    if reason:
        raise Fail(reason)


def _verdict(name: str, problems: list[str], ok_reason: str, measured: dict) -> CheckResult:
    if problems:
        return CheckResult(name, FAIL, "; ".join(problems), measured)
    return CheckResult(name, PASS, ok_reason, measured)


# --- 1. TE vs local ------------------------------------------------------------------------------------------------
def check_te_parity(ctx: Context) -> CheckResult:
    _require_te(ctx)
    te, te_curve = ctx.small_run("te_bf16")
    local, local_curve = ctx.small_run("local_bf16")
    cmp = compare_curves(local_curve, te_curve, BF16_PARITY, ctx.settings.steps, "local bf16", "TE bf16")
    te_log, local_log = te.text(), local.text()
    measured = {
        **cmp.measured(),
        "te_losses": te_curve,
        "local_losses": local_curve,
        "te_loaded_converted_weights": INIT_NOTE in te_log,
        "local_loaded_converted_weights": INIT_NOTE in local_log,
        "te_missing_extra_state_lines": te_log.count(EXTRA_STATE_NOTE),
    }
    problems = [] if cmp.ok else [cmp.reason]
    if INIT_NOTE not in te_log or INIT_NOTE not in local_log:
        problems.append(f"a run did not print '{INIT_NOTE} …': checkpoint.init_from was not used")
    if te_log.count(EXTRA_STATE_NOTE) != 1:
        problems.append(
            f"the TE run reported the missing Transformer Engine _extra_state of the converted "
            f"checkpoint {te_log.count(EXTRA_STATE_NOTE)} times (expected one line)"
        )
    if cmp.ok and not curve_falls(local_curve, MIN_DROP):
        problems.append(
            f"the loss did not fall by {MIN_DROP:.0%} in {ctx.settings.steps} steps: the comparison "
            "says nothing about training"
        )
    return _verdict(
        "te_parity",
        problems,
        cmp.reason + "; converted weights loaded into both, missing TE extra state reported",
        measured,
    )


# --- 2. FP8 ----------------------------------------------------------------------------------------------------------
def check_fp8(ctx: Context) -> CheckResult:
    _require_te(ctx)
    reason = fp8_skip_reason(ctx.device)
    if reason:
        raise Skip(reason)
    _, bf16_curve = ctx.small_run("te_bf16")
    fp8, fp8_curve = ctx.small_run("te_fp8")
    cmp = compare_curves(bf16_curve, fp8_curve, FP8_PARITY, ctx.settings.steps, "TE bf16", "TE FP8")
    announced = FP8_PEAK_NOTE in fp8.text()
    measured = {**cmp.measured(), "bf16_losses": bf16_curve, "fp8_losses": fp8_curve, "fp8_peak_announced": announced}
    problems = [] if cmp.ok else [cmp.reason]
    if not announced:
        problems.append("the FP8 run did not announce the FP8 MFU peak: model.fp8 did not reach the training loop")
    return _verdict("fp8", problems, cmp.reason, measured)


# --- 3. THD packing -----------------------------------------------------------------------------------------------
def check_thd(ctx: Context) -> CheckResult:
    _require_te(ctx)
    out = ctx.runner.run("thd_probe", plan.thd_probe_argv(), ctx.device.visible[:1])
    lines = [ln for ln in out.text().splitlines() if ln.startswith("{")]
    if not lines:
        raise Fail(f"the THD probe printed no result (log: {out.log})")
    r = json.loads(lines[-1])
    return _verdict(
        "thd",
        thd_problems(r),
        f"packed per-token losses within {r['max_abs_diff']:.4f} (mean "
        f"{r['mean_abs_diff']:.4f}) nats of each document alone; the unpacked control differs by "
        f"{r['control_mean_abs_diff']:.3f}",
        r,
    )


def thd_problems(r: dict) -> list[str]:
    """Tolerance rules of the THD check applied to the probe's JSON."""
    problems = []
    if r["tokens_compared"] != r["loss_mask_tokens"]:
        problems.append(
            f"the packs' loss mask covers {r['loss_mask_tokens']} tokens but {r['tokens_compared']} "
            "in-document targets were compared"
        )
    if not (r["max_abs_diff"] <= THD_MAX_ABS and r["mean_abs_diff"] <= THD_MEAN_ABS):
        problems.append(
            f"packed per-token losses differ from the documents run alone by up to "
            f"{r['max_abs_diff']:.4f} (mean {r['mean_abs_diff']:.4f}) nats, over the {THD_MAX_ABS} / "
            f"{THD_MEAN_ABS} tolerance"
        )
    if not r["control_mean_abs_diff"] >= THD_CONTROL_MIN:
        problems.append(
            f"the unpacked control differs by only {r['control_mean_abs_diff']:.4f} nats (< "
            f"{THD_CONTROL_MIN}): the probe cannot tell packed from cross-document attention"
        )
    return problems


# --- 4. throughput and MFU ----------------------------------------------------------------------------------------
def throughput_problems(preset: str, records: list, mfu: Optional[float], floor: Optional[float]) -> list[str]:
    problems = []
    if len(records) != plan.THROUGHPUT_STEPS:
        problems.append(f"{preset} logged {len(records)} of {plan.THROUGHPUT_STEPS} steps")
    if mfu is None or not math.isfinite(mfu) or mfu <= 0:
        problems.append(f"{preset}: no finite MFU in metrics.jsonl")
    elif floor is not None and mfu < floor:
        problems.append(f"{preset}: MFU {mfu:.3f} below the {floor:.2f} floor")
    return problems


def check_throughput(ctx: Context) -> CheckResult:
    from megarec.pretrain.config import LoggingConfig

    _require_te(ctx)
    peak, source = peak_tflops(ctx.device, ctx.settings.peak_tflops)
    floor = mfu_floor(ctx.device, ctx.settings.peak_tflops)
    measured = {
        "mfu_peak_tflops": peak if peak is not None else LoggingConfig().gpu_peak_tflops,
        "mfu_peak_source": source
        if peak is not None
        else "unknown GPU: logging.gpu_peak_tflops default (H100 SXM), not this GPU's — pass --peak-tflops",
        "mfu_floor": floor,
        "seq_length": plan.THROUGHPUT_SEQ_LENGTH,
        "global_batch": plan.THROUGHPUT_GLOBAL_BATCH,
        "steps": plan.THROUGHPUT_STEPS,
        "warmup_steps_excluded": plan.THROUGHPUT_WARMUP,
        "models": {},
    }
    problems, ran = [], 0
    for preset in plan.THROUGHPUT_PRESETS:
        estimate = plan.throughput_estimate(preset)
        if not fits(estimate.total, ctx.device, plan.FIT_FRACTION):
            measured["models"][preset] = {
                "skipped": f"estimated {estimate.total / (1 << 30):.1f} GiB does not fit "
                f"{plan.FIT_FRACTION:.0%} of {ctx.device.total_memory_gib:.0f} GiB"
            }
            continue
        cmd = plan.throughput_run(ctx.paths, preset, peak)
        ran += 1
        try:
            ctx.run(cmd)
        except CommandFailed as e:  # the other model still gets measured
            measured["models"][preset] = {"failed": str(e)}
            problems.append(str(e))
            continue
        records = read_records(ctx.paths.run_dir(cmd.name))
        mfu = steady_median(records, "mfu", plan.THROUGHPUT_WARMUP)
        measured["models"][preset] = {
            "tokens_per_s": steady_median(records, "tokens_per_s", plan.THROUGHPUT_WARMUP),
            "mfu": mfu,
            "tflops_per_device": steady_median(records, "tflops_per_device", plan.THROUGHPUT_WARMUP),
            "step_time_s": steady_median(records, "step_time_s", plan.THROUGHPUT_WARMUP),
            "max_memory_allocated_gib": last_value(records, "max_memory_allocated_gib"),
        }
        problems += throughput_problems(preset, records, mfu, floor)
    if not ran:
        raise Skip(
            "no throughput model fits this GPU: "
            + "; ".join(f"{k}: {v['skipped']}" for k, v in measured["models"].items())
        )
    shown = ", ".join(
        f"{k} {v['tokens_per_s']:.0f} tok/s MFU {v['mfu']:.3f}"
        for k, v in measured["models"].items()
        if v.get("mfu") is not None and v.get("tokens_per_s") is not None
    )
    skipped = [k for k, v in measured["models"].items() if "skipped" in v]
    if skipped:
        shown += f"; {', '.join(skipped)} skipped (does not fit this GPU)"
    floor_text = f"floor {floor:.2f}" if floor is not None else "no floor (peak unknown)"
    return _verdict(
        "throughput", problems, f"{shown} ({floor_text}, peak {measured['mfu_peak_tflops']:g} TFLOP/s)", measured
    )


# --- 5. memory per layer ------------------------------------------------------------------------------------------
def memory_problems(ratio: Optional[float]) -> list[str]:
    if MEMORY_BAND.contains(ratio):
        return []
    shown = "not measurable" if ratio is None or not math.isfinite(ratio) else f"{ratio:.2f}"
    return [f"measured/estimated memory per layer is {shown}, outside [{MEMORY_BAND.low}, {MEMORY_BAND.high}]"]


def check_memory(ctx: Context) -> CheckResult:
    _require_te(ctx)
    gib = float(1 << 30)
    recipe_seq = plan.recipe_seq_length()
    seq = plan.memory_seq_length(ctx.device, recipe_seq)
    if seq is None:
        raise Skip(
            f"even {plan.MEMORY_MIN_SEQ} tokens of 4 Qwen3-8B-width layers do not fit "
            f"{plan.FIT_FRACTION:.0%} of {ctx.device.total_memory_gib:.0f} GiB"
        )
    small, large = plan.MEMORY_LAYERS
    peaks = {}
    for layers in plan.MEMORY_LAYERS:
        cmd = plan.memory_run(ctx.paths, layers, seq)
        ctx.run(cmd)
        peaks[layers] = last_value(read_records(ctx.paths.run_dir(cmd.name)), "max_memory_allocated_gib")
    est_small, est_large = plan.memory_estimate(small, seq), plan.memory_estimate(large, seq)
    estimated = per_layer_delta(est_small.total, est_large.total, small, large) / gib
    missing = [n for n, p in peaks.items() if p is None]
    if missing:
        raise Fail(f"the {missing[0]}-layer run logged no max_memory_allocated_gib")
    measured_per_layer = per_layer_delta(peaks[small], peaks[large], small, large)
    ratio = measured_per_layer / estimated if estimated else None
    measured = {
        "seq_length": seq,
        "recipe_seq_length": recipe_seq,
        "seq_length_note": None
        if seq == recipe_seq
        else f"reduced from {recipe_seq} to fit {plan.FIT_FRACTION:.0%} of {ctx.device.total_memory_gib:.0f} GiB",
        "vocab_size": plan.MEMORY_VOCAB,
        f"peak_{small}_layers_gib": peaks[small],
        f"peak_{large}_layers_gib": peaks[large],
        "per_layer_measured_gib": measured_per_layer,
        "per_layer_estimated_gib": estimated,
        "per_layer_estimated_activations_gib": est_large.activations_per_layer / gib,
        "per_layer_estimated_states_gib": estimated - est_large.activations_per_layer / gib,
        "ratio_measured_over_estimated": ratio,
    }
    ok = (
        f"{measured_per_layer:.2f} GiB per layer measured vs {estimated:.2f} GiB estimated at {seq} tokens"
        f"{'' if seq == recipe_seq else f' (reduced from {recipe_seq} to fit)'} (ratio {ratio:.2f})"
        if ratio is not None
        else ""
    )
    return _verdict("memory", memory_problems(ratio), ok, measured)


# --- 6. TP+SP and CP on 2 GPUs ------------------------------------------------------------------------------------
def check_multi_gpu(ctx: Context) -> CheckResult:
    _require_te(ctx)
    reason = multi_gpu_skip_reason(ctx.device)
    if reason:
        raise Skip(reason)
    _, base = ctx.small_run("te_bf16")
    measured, problems, oks = {"te_bf16_losses": base}, [], []
    for name in ("tp2_sp", "cp2"):
        _, curve = ctx.small_run(name)
        cmp = compare_curves(base, curve, PARALLEL_PARITY, ctx.settings.steps, "1-GPU TE bf16", name)
        measured[name] = {**cmp.measured(), "losses": curve}
        (oks if cmp.ok else problems).append(cmp.reason)
    return _verdict("multi_gpu", problems, "; ".join(oks), measured)


# --- registry, selection, orchestration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    name: str
    title: str
    timeout_s: float  # the check's own work; shared work it runs first adds its allowance
    func: Callable[[Context], CheckResult]
    tolerance: dict


CHECKS: tuple[Check, ...] = (
    Check(
        "te_parity",
        "TE vs local layer spec, bf16, from the same converted HF checkpoint",
        150,
        check_te_parity,
        {
            **BF16_PARITY.as_dict(),
            "min_loss_drop": MIN_DROP,
            "also": "both runs print the init_from line; the TE run prints the missing _extra_state line",
        },
    ),
    Check(
        "fp8",
        "FP8 hybrid (delayed scaling) vs bf16 under TE",
        150,
        check_fp8,
        {**FP8_PARITY.as_dict(), "skip": "compute capability < 8.9 or TE reports no FP8"},
    ),
    Check(
        "thd",
        "THD packed per-token losses vs each document alone (TE)",
        150,
        check_thd,
        {
            "max_abs_diff_nats": THD_MAX_ABS,
            "mean_abs_diff_nats": THD_MEAN_ABS,
            "control_min_mean_abs_diff_nats": THD_CONTROL_MIN,
            "why": "bf16 on both sides; the same comparison in bf16 on CPU (local spec, explicit mask, same model "
            "and documents) gives max 0.03 / mean 0.005 nats and a control of 0.63 nats",
        },
    ),
    Check(
        "throughput",
        "tokens/s and MFU of Qwen3-0.6B and 1.7B at 4096 tokens, TP=1, bf16, TE",
        300,
        check_throughput,
        {
            "mfu_floor": "0.15 on GPUs with a known peak (H100/H200/H800/GH200/A100 or --peak-tflops); none otherwise",
            "statistic": "median after warm-up",
        },
    ),
    Check(
        "memory",
        "peak memory per layer at Qwen3-8B width and 32K tokens vs megarec.models.qwen3.memory",
        240,
        check_memory,
        MEMORY_BAND.as_dict(),
    ),
    Check(
        "multi_gpu",
        "TP=2 + sequence parallel and CP=2 (TE ring attention) vs the 1-GPU TE run",
        300,
        check_multi_gpu,
        {**PARALLEL_PARITY.as_dict(), "skip": "fewer than 2 GPUs"},
    ),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)


def parse_names(text: Optional[str], flag: str) -> list[str]:
    if text is None:
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECK_NAMES]
    if unknown or not names:
        what = f"unknown check '{unknown[0]}'" if unknown else "no check named"
        raise ConfigError(f"{flag}: {what} (checks: {', '.join(CHECK_NAMES)})")
    return names


def select_checks(only: Optional[str], skip: Optional[str]) -> list[Check]:
    """The checks to run, in their fixed order, from comma-separated --only / --skip lists."""
    chosen = parse_names(only, "--only") or list(CHECK_NAMES)
    skipped = parse_names(skip, "--skip")
    selected = [c for c in CHECKS if c.name in chosen and c.name not in skipped]
    if not selected:
        raise ConfigError("--only/--skip leave no check to run")
    return selected


def run_check(check: Check, ctx: Context, say: Callable[[str], None]) -> CheckResult:
    """One check under its deadline; any exception becomes a fail (or skip) record, never a crash."""
    start = time.monotonic()
    ctx.runner.start_check(check.timeout_s * ctx.settings.timeout_scale)
    try:
        result = check.func(ctx)
    except Skip as e:
        result = CheckResult(check.name, SKIP, str(e))
    except Fail as e:
        result = CheckResult(check.name, FAIL, str(e), e.measured)
    except (CheckTimeout, CommandFailed) as e:
        result = CheckResult(check.name, FAIL, str(e))
    except Exception as e:  # a bug or an unexpected file: report it on this check, keep the others
        os.makedirs(ctx.paths.logs, exist_ok=True)
        path = os.path.join(ctx.paths.logs, f"{check.name}.traceback.txt")
        with open(path, "w") as f:
            f.write(traceback.format_exc())
        result = CheckResult(check.name, FAIL, f"internal error {type(e).__name__}: {e} (traceback: {path})")
    result.tolerance = {**check.tolerance, **result.tolerance}
    result.seconds = round(time.monotonic() - start, 1)
    result.logs = dict(ctx.runner.logs)
    return result
