"""`megarec doctor gpu`: argument handling and the run of the selected checks, in order, to one JSON summary."""

from __future__ import annotations

import os
import shutil
import sys
import time

from megarec.common.errors import ConfigError, MegarecError

DEFAULT_STEPS = 20
MIN_STEPS = 5
MARKER = ".doctor_gpu"  # written first into --out: a later run may reuse that directory


def register(sub) -> None:
    from megarec.doctor.checks import BASE_RUN_ALLOWANCE_S, CHECKS, SETUP_ALLOWANCE_S

    p = sub.add_parser(
        "doctor", help="Acceptance checks of a node (`megarec doctor gpu`).", description="Acceptance checks of a node."
    )
    verbs = p.add_subparsers(dest="doctor_verb", metavar="<target>", required=True)
    listing = "\n".join(f"  {c.name:<11s} {c.title} (own time limit {c.timeout_s:.0f}s)" for c in CHECKS)
    g = verbs.add_parser(
        "gpu",
        help="A few-minute GPU acceptance check: TE/FP8/THD/TP/CP parity, throughput, memory; one JSON summary.",
        description="Run megarec's real product paths on the GPUs of this node — `tokenizer build-qwen3`, "
        "`init-model`, `convert hf-to-mcore`, `pretrain` (under torchrun for the 2-GPU check) and a "
        "THD probe built from megarec's model and batch code — and check the results against stated "
        "tolerances. Progress goes to stderr; the last stdout line is the JSON summary (also written "
        "to <out>/doctor_gpu.json) with pass/fail/skip per check, the measured numbers and the "
        "tolerance used. Exit status: 0 when no check failed, 1 when one did, 2 when the doctor "
        "cannot run (no CUDA, bad flags). About 5-6 minutes on one H100 (an estimate).",
        epilog="checks (in the order they run):\n" + listing + "\n\n"
        "Each check ends its commands when its time limit (times --timeout-scale) is up and fails with "
        f"'timeout'; the first check that builds the shared small model (tokenizer, init-model, convert: "
        f"{SETUP_ALLOWANCE_S:.0f}s) or runs its TE bf16 reference ({BASE_RUN_ALLOWANCE_S:.0f}s) gets that "
        "time on top.",
    )
    g.add_argument(
        "--out",
        default="runs/doctor_gpu",
        help="Directory for logs/ (one log per command), work/ (tokenizer, models, run directories) and "
        "doctor_gpu.json. Must be empty or an earlier doctor's output (which is cleared). "
        "Default %(default)s.",
    )
    g.add_argument(
        "--only",
        metavar="NAMES",
        default=None,
        help="Comma-separated checks to run (default: all), e.g. --only te_parity,fp8.",
    )
    g.add_argument("--skip", metavar="NAMES", default=None, help="Comma-separated checks not to run.")
    g.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"Optimizer steps of the loss-curve runs (te_parity, fp8, multi_gpu); at least {MIN_STEPS}. "
        "Default %(default)s.",
    )
    g.add_argument(
        "--keep",
        action="store_true",
        help="Keep <out>/work (tokenizer, HF and Megatron checkpoints, run directories with "
        "metrics.jsonl); by default only the logs and the summary stay.",
    )
    g.add_argument(
        "--tiktoken",
        metavar="PATH",
        default=None,
        help="Local qwen.tiktoken for `tokenizer build-qwen3` (default: the dashscope wheel fetched "
        "once with pip into the megarec cache).",
    )
    g.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        metavar="TFLOPS",
        help="Dense bf16 peak TFLOP/s per GPU for MFU (default: from the GPU's name: H100/H200/H800/"
        "GH200/A100); with it the MFU floor applies to any GPU.",
    )
    g.add_argument(
        "--timeout-scale",
        type=float,
        default=1.0,
        metavar="F",
        help="Multiply every time limit by F (slow file systems, first-time kernel builds). Default %(default)s.",
    )
    g.set_defaults(func=run_gpu, verb="doctor gpu")


def _validate(args):
    from megarec.doctor.checks import select_checks

    selected = select_checks(args.only, args.skip)
    if args.steps < MIN_STEPS:
        raise ConfigError(f"--steps must be at least {MIN_STEPS}, got {args.steps}")
    if not args.timeout_scale > 0:
        raise ConfigError(f"--timeout-scale must be > 0, got {args.timeout_scale}")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        raise ConfigError(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    if args.tiktoken is not None and not os.path.isfile(args.tiktoken):
        raise ConfigError(f"--tiktoken {args.tiktoken} is not a file")
    return selected


def _prepare_out(out: str) -> str:
    """Check --out, clear an earlier doctor's output in it and mark it as ours."""
    from megarec.common.outdir import check_out_dir, has_entry
    from megarec.doctor.plan import WorkPaths

    out = check_out_dir(out, own=has_entry(MARKER), hint="give an empty directory or an earlier doctor's --out")
    paths = WorkPaths(out)
    for d in (paths.work, paths.logs):
        shutil.rmtree(d, ignore_errors=True)
    if os.path.exists(paths.summary):
        os.unlink(paths.summary)
    os.makedirs(paths.logs, exist_ok=True)
    with open(os.path.join(out, MARKER), "w") as f:
        f.write("megarec doctor gpu output directory\n")
    return out


def run_gpu(args) -> int:
    selected = _validate(args)
    from megarec.doctor import device as dev_mod

    if not dev_mod.cuda_available():
        raise MegarecError(dev_mod.no_cuda_message())
    from megarec.common.atomic import write_json
    from megarec.doctor.checks import Context, Settings, run_check
    from megarec.doctor.plan import WorkPaths, repo_root
    from megarec.doctor.runner import Runner, child_env
    from megarec.doctor.summary import build_summary, progress_line, summary_line

    def say(msg: str) -> None:
        print(f"doctor: {msg}", file=sys.stderr, flush=True)

    start = time.monotonic()
    paths = WorkPaths(_prepare_out(args.out))
    say("probing the GPUs ...")
    device = dev_mod.probe()
    say(
        f"{device.name} x{device.count} (compute capability {device.capability[0]}.{device.capability[1]}, "
        f"{device.total_memory_gib:.0f} GiB), torch {device.torch_version}, Transformer Engine "
        f"{device.te_version or 'not importable'}; checks: {', '.join(c.name for c in selected)}"
    )
    settings = Settings(
        steps=args.steps,
        tiktoken=os.path.abspath(args.tiktoken) if args.tiktoken else None,
        peak_tflops=args.peak_tflops,
        timeout_scale=args.timeout_scale,
    )
    runner = Runner(paths.logs, child_env(repo_root()), say)
    ctx = Context(paths, device, settings, runner)
    results = []
    for i, check in enumerate(selected, 1):
        say(f"[{i}/{len(selected)}] {check.name}: {check.title}")
        result = run_check(check, ctx, say)
        results.append(result)
        say(progress_line(result))
    summary = build_summary(
        results,
        device=device.as_dict(),
        elapsed_s=time.monotonic() - start,
        settings={**settings.as_dict(), "out": paths.out, "kept_work": args.keep},
    )
    write_json(paths.summary, summary)
    if not args.keep:
        shutil.rmtree(paths.work, ignore_errors=True)
    say(
        f"{summary['verdict'].upper()}: {summary['counts']['pass']} passed, {summary['counts']['fail']} failed, "
        f"{summary['counts']['skip']} skipped in {summary['elapsed_s']:.0f}s; summary in {paths.summary}"
    )
    print(summary_line(summary), flush=True)
    return summary["exit_code"]
