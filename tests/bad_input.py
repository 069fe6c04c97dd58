"""The bad-input test matrix's yardstick: a user error is exit code 2 and exactly one stderr line
(`megarec <verb>: error: ...`) naming what is wrong, and no file outside the command's output is created,
changed or removed."""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Case:
    """One bad input: `argv(tmp)` builds the `megarec` arguments inside a fresh directory `tmp`; `needles` must all
    appear in the error line; `outputs` (paths relative to `tmp`) may be created by the failed command (nothing
    else may change)."""

    name: str
    argv: Callable
    needles: tuple[str, ...]
    outputs: tuple[str, ...] = ()
    env: Optional[dict] = None


def snapshot(root: str) -> dict[str, tuple[int, str]]:
    """Every file under `root`: relative path → (size, sha256)."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = (os.path.getsize(path), hashlib.sha256(f.read()).hexdigest())
    return out


def one_error_line(proc: subprocess.CompletedProcess, verb: str) -> str:
    """The single stderr line of a failed command (exit 2), without tracebacks or warnings around it."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}, stderr:\n{proc.stderr[-3000:]}"
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n" + "\n".join(lines[-20:])
    assert lines[0].startswith(f"megarec {verb}: error: "), lines[0]
    return lines[0]


def changed(before: dict, after: dict, outputs: tuple[str, ...]) -> list[str]:
    """Paths created, changed or removed outside the allowed outputs (an output may be a file or a folder)."""

    def allowed(path: str) -> bool:
        return any(path == o or path.startswith(o.rstrip("/") + "/") for o in outputs)

    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p) and not allowed(p))
