"""Check results, the overall verdict, the exit code and the one-line JSON summary."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

PASS, FAIL, SKIP = "pass", "fail", "skip"
STATUSES = (PASS, FAIL, SKIP)


@dataclass
class CheckResult:
    """One check's outcome: status, one-sentence reason, what was measured and the tolerance it was held to."""

    name: str
    status: str
    reason: str
    measured: dict = field(default_factory=dict)
    tolerance: dict = field(default_factory=dict)
    seconds: float = 0.0
    logs: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")


def counts(results: list[CheckResult]) -> dict:
    return {s: sum(r.status == s for r in results) for s in STATUSES}


def verdict(results: list[CheckResult]) -> str:
    """fail as soon as one check failed; pass otherwise (skips do not fail the node, and say why)."""
    return FAIL if any(r.status == FAIL for r in results) else PASS


def exit_code(results: list[CheckResult]) -> int:
    return 1 if verdict(results) == FAIL else 0


def _clean(value):
    """JSON without NaN/Inf (null instead), so any JSON reader takes the summary."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def build_summary(results: list[CheckResult], *, device: Optional[dict], settings: dict, elapsed_s: float) -> dict:
    return _clean(
        {
            "doctor": "gpu",
            "verdict": verdict(results),
            "exit_code": exit_code(results),
            "counts": counts(results),
            "elapsed_s": round(elapsed_s, 1),
            "device": device,
            "settings": settings,
            "checks": [asdict(r) for r in results],
        }
    )


def summary_line(summary: dict) -> str:
    """The summary as one line of JSON (the last line the doctor prints on stdout)."""
    return json.dumps(summary, separators=(",", ":"), sort_keys=False)


def progress_line(result: CheckResult) -> str:
    return f"{result.name}: {result.status.upper()} in {result.seconds:.0f}s — {result.reason}"
