"""Runs the demo's stages in order as subprocesses, one log per stage, resumable stage by stage.

A stage counts as finished when its marker (`<out>/.stages/<name>.json`) says "done" with the same
fingerprint (its command line plus the contents of the recipe it names). A rerun skips finished stages;
a stage whose fingerprint changed is redone from clean outputs, and so is every later stage that consumes
what it wrote: after a shared stage (data, codes, tokenizer, benchmark) every later stage, after a stage of
one seed's training chain the later stages of that chain and every later shared stage — so a changed SFT
setting retrains SFT and GRPO of each seed and re-evaluates, without redoing stage 2. `force` redoes
everything. An interrupted stage (marker "running", same fingerprint) of a resumable verb (preprocess,
pretrain, sft, grpo) reruns in place and resumes; any other interrupted stage starts clean, since its verb
refuses a non-empty output directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Callable, Optional

from megarec.common.errors import MegarecError
from megarec.demo.stages import DemoPaths, Stage

HEARTBEAT_S = 30.0


def _fingerprint(argv: list[str]) -> str:
    h = hashlib.sha256(shlex.join(argv).encode())
    for i, a in enumerate(argv[:-1]):
        if a == "--config" and os.path.isfile(argv[i + 1]):
            from megarec.common.config import read_recipe

            h.update(json.dumps(read_recipe(argv[i + 1]), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def display_command(stage: Stage, argv: list[str], nproc: int) -> str:
    prefix = f"torchrun --standalone --nproc_per_node={nproc} -m megarec" if stage.distributed else "megarec"
    return f"{prefix} {shlex.join(argv)}"


def _subprocess_argv(stage: Stage, argv: list[str], nproc: int) -> list[str]:
    if stage.distributed:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "megarec",
            *argv,
        ]
    return [sys.executable, "-m", "megarec", *argv]


def _env(stage: Stage, nproc: int) -> dict:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if stage.distributed:  # one BLAS pool per rank, sharing the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    return env


def _last_line(log_path: str) -> str:
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - 4096))
            lines = [ln for ln in f.read().decode("utf-8", "replace").replace("\r", "\n").splitlines() if ln.strip()]
        return lines[-1][:140] if lines else ""
    except OSError:
        return ""


def run_logged(argv: list[str], log_path: str, env: dict, label: str, print_fn: Callable = print) -> float:
    """Run one command with stdout+stderr to `log_path`; print a heartbeat with the log's last line."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(argv) + "\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        next_beat = start + HEARTBEAT_S
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                if time.perf_counter() >= next_beat:
                    print_fn(f"      {label}: {time.perf_counter() - start:5.0f}s  {_last_line(log_path)}")
                    next_beat += HEARTBEAT_S
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if proc.returncode != 0:
        tail = "\n".join("      | " + ln for ln in _tail(log_path, 15))
        raise MegarecError(f"stage {label} failed (exit {proc.returncode}); full log: {log_path}\n{tail}")
    return time.perf_counter() - start


def _tail(path: str, n: int) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return [ln.rstrip("\n") for ln in f.read().replace("\r", "\n").splitlines() if ln.strip()][-n:]


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


class StaleOutputs:
    """Which later stages read outputs rewritten in this invocation: every stage after a shared one; after a
    stage of seed k's training chain, the rest of that chain and every shared stage (the benchmark)."""

    def __init__(self, force: bool = False):
        self.everything = force
        self.chains: set[int] = set()

    def stale(self, stage: Stage) -> bool:
        if self.everything:
            return True
        return stage.chain in self.chains if stage.chain is not None else bool(self.chains)

    def ran(self, stage: Stage) -> None:
        if stage.chain is None:
            self.everything = True
        else:
            self.chains.add(stage.chain)


def run_stages(
    cfg, paths: DemoPaths, *, force: bool = False, until: Optional[str] = None, print_fn: Callable = print
) -> list[dict]:
    """Run (or skip) every stage up to and including `until`; returns one record per stage."""
    from megarec.common.atomic import write_json
    from megarec.demo.plan import demo_stages

    all_stages = demo_stages(cfg)
    names = [s.name for s in all_stages]
    if until is not None and until not in names:
        raise MegarecError(f"unknown stage '{until}' (stages: {', '.join(names)})")
    stages = all_stages[: names.index(until) + 1] if until else all_stages
    nproc = cfg.stages.nproc
    records = []
    stale_after = StaleOutputs(force)
    t_all = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        argv = stage.command(cfg, paths)
        shown = display_command(stage, argv, nproc)
        marker = os.path.join(paths.markers, f"{stage.name}.json")
        done = json.load(open(marker)) if os.path.isfile(marker) else None
        fp = _fingerprint(argv)
        head = f"[{i:2d}/{len(stages)}] {stage.name:<13s} {stage.title}"
        stale = stale_after.stale(stage)
        if done and not stale and done.get("fingerprint") == fp and done.get("state") == "done":
            print_fn(f"{head} ... finished earlier ({done['seconds']:.1f}s), skipped")
            records.append(
                {
                    "name": stage.name,
                    "title": stage.title,
                    "status": "cached",
                    "seconds": done["seconds"],
                    "command": shown,
                }
            )
            continue
        # an interrupted stage with the same settings resumes in place when its verb resumes; a changed,
        # forced or re-fed stage, or an interrupted one-shot verb (which refuses a non-empty --out), starts
        # from clean outputs
        if stale or (done and (done.get("fingerprint") != fp or done.get("state") == "done" or not stage.resumes)):
            for out in stage.outputs(paths):
                _remove(out)
        stale_after.ran(stage)
        write_json(marker, {"fingerprint": fp, "state": "running", "command": shown})
        print_fn(f"{head} ... running (log: {os.path.join(paths.logs, stage.name + '.log')})")
        seconds = run_logged(
            _subprocess_argv(stage, argv, nproc),
            os.path.join(paths.logs, f"{stage.name}.log"),
            _env(stage, nproc),
            stage.name,
            print_fn,
        )
        write_json(
            marker,
            {
                "fingerprint": fp,
                "state": "done",
                "seconds": seconds,
                "command": shown,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        print_fn(f"{'':8s}done in {seconds:.1f}s (elapsed {time.perf_counter() - t_all:.0f}s)")
        records.append(
            {"name": stage.name, "title": stage.title, "status": "ran", "seconds": seconds, "command": shown}
        )
    return records
