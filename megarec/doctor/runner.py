"""Subprocesses of the doctor: one log per command, a heartbeat on stderr, and a deadline.

Every command runs in its own process group (torchrun and its workers included), so a command still running
when its check's time is up is ended as a whole: SIGTERM (the pretrain loop exits cleanly on it), then
SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Optional

HEARTBEAT_S = 30.0
KILL_GRACE_S = 15.0

# Set for every child unless the caller's environment already says otherwise (the launchers' GPU settings).
DEFAULT_ENV = {
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
# Always set: unbuffered logs, no wandb, and Megatron's requirement for TP communication overlap.
FORCED_ENV = {"PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "CUDA_DEVICE_MAX_CONNECTIONS": "1"}


class CheckTimeout(Exception):
    """A command was still running when its check's deadline passed (it has been ended)."""


class CommandFailed(Exception):
    """A command exited non-zero; the message is one line with its last meaningful output and log path."""


@dataclass
class Outcome:
    name: str
    log: str
    seconds: float

    def text(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()


def child_env(package_root: str, environ: Optional[dict] = None) -> dict:
    """The environment of every command: the caller's, the GPU defaults, and this checkout first on the path
    (the subprocesses must run the same megarec as the doctor)."""
    env = dict(os.environ if environ is None else environ)
    for k, v in DEFAULT_ENV.items():
        env.setdefault(k, v)
    env.update(FORCED_ENV)
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def last_lines(path: str, n: int) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f.read().replace("\r", "\n").splitlines() if ln.strip()]
    except OSError:
        return []
    return lines[-n:]


def failure_line(path: str) -> str:
    """The most telling line of a failed command's log: its last error line, else its last line."""
    lines = last_lines(path, 40)
    for ln in reversed(lines):
        if "error" in ln.lower():
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


class Runner:
    """Runs commands against the current deadline (set by the orchestrator per check)."""

    def __init__(self, log_dir: str, env: dict, say: Callable[[str], None], heartbeat_s: float = HEARTBEAT_S):
        self.log_dir = log_dir
        self.env = env
        self.say = say
        self.heartbeat_s = heartbeat_s
        self.deadline: Optional[float] = None  # time.monotonic() value
        self.logs: dict[str, str] = {}  # commands of the current check: name → log

    def start_check(self, timeout_s: float) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.logs = {}

    def extend(self, seconds: float) -> None:
        """More time for the current check (shared work it runs first, e.g. the model set-up)."""
        if self.deadline is not None:
            self.deadline += seconds

    def run(self, name: str, argv: list[str], devices: list[str]) -> Outcome:
        os.makedirs(self.log_dir, exist_ok=True)
        log_path = os.path.join(self.log_dir, f"{name}.log")
        self.logs[name] = log_path
        env = dict(self.env, CUDA_VISIBLE_DEVICES=",".join(devices))
        start = time.monotonic()
        self.say(f"  {name}: running on GPU {','.join(devices)} (log: {log_path})")
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(f"$ CUDA_VISIBLE_DEVICES={','.join(devices)} {shlex.join(argv)}\n")
            log.flush()
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            next_beat = start + self.heartbeat_s
            try:
                while proc.poll() is None:
                    time.sleep(0.5)
                    now = time.monotonic()
                    if self.deadline is not None and now > self.deadline:
                        _end(proc)
                        raise CheckTimeout(
                            f"timeout: {name} was still running after {now - start:.0f}s when the "
                            f"check's time ran out; ended it (log: {log_path})"
                        )
                    if now >= next_beat:
                        tail = last_lines(log_path, 1)
                        self.say(f"  {name}: {now - start:4.0f}s  {tail[0][:120] if tail else ''}")
                        next_beat += self.heartbeat_s
            except BaseException:
                if proc.poll() is None:
                    _end(proc)
                raise
        seconds = time.monotonic() - start
        if proc.returncode != 0:
            raise CommandFailed(
                f"{name} exited with status {proc.returncode}: {failure_line(log_path)} (log: {log_path})"
            )
        self.say(f"  {name}: done in {seconds:.0f}s")
        return Outcome(name, log_path, seconds)


def _end(proc: subprocess.Popen) -> None:
    """SIGTERM to the command's process group (the pretrain loop stops cleanly on it), then SIGKILL to whatever
    of that group is left after the grace period (e.g. torchrun workers stuck in a collective)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
