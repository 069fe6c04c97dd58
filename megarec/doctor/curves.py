"""Numbers out of `<run_dir>/metrics.jsonl` and the tolerance comparisons the checks apply to them.

Pure functions of files and lists, so the tests can hold them to real metrics files without a GPU.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence


def read_records(run_dir: str) -> list[dict]:
    """The per-step training records (those with a "loss" key) of a run; [] when there is no metrics file."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if "loss" in rec:
                out.append(rec)
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def loss_curve(records: Sequence[dict]) -> list[Optional[float]]:
    """Losses by step (None where the logger wrote a NaN/Inf as null)."""
    return [r.get("loss") for r in records]


@dataclass(frozen=True)
class CurveTolerance:
    """Two loss curves agree when every step's relative difference |a − b| / |ref| is within `max_rel`."""

    max_rel: float
    why: str

    def as_dict(self) -> dict:
        return {"max_rel_diff_per_step": self.max_rel, "why": self.why}


@dataclass(frozen=True)
class CurveComparison:
    ok: bool
    reason: str
    steps: int
    max_rel_diff: Optional[float] = None
    worst_step: Optional[int] = None
    first_rel_diff: Optional[float] = None
    final_ref: Optional[float] = None
    final_other: Optional[float] = None

    def measured(self) -> dict:
        return {
            "steps": self.steps,
            "max_rel_diff": self.max_rel_diff,
            "worst_step": self.worst_step,
            "first_step_rel_diff": self.first_rel_diff,
            "final_loss_ref": self.final_ref,
            "final_loss_other": self.final_other,
        }


def compare_curves(
    ref: Sequence,
    other: Sequence,
    tol: CurveTolerance,
    expected_steps: int,
    ref_name: str = "reference",
    other_name: str = "other",
) -> CurveComparison:
    """Step-by-step comparison of two loss curves of `expected_steps` steps each."""
    for name, curve in ((ref_name, ref), (other_name, other)):
        if len(curve) != expected_steps:
            return CurveComparison(False, f"{name} logged {len(curve)} of {expected_steps} steps", len(curve))
        bad = [i + 1 for i, x in enumerate(curve) if not _finite(x)]
        if bad:
            return CurveComparison(False, f"{name} has a non-finite loss at step {bad[0]}", len(curve))
    rel = [abs(o - r) / abs(r) if r else (0.0 if o == r else math.inf) for r, o in zip(ref, other)]
    worst = max(range(len(rel)), key=rel.__getitem__) if rel else 0
    result = dict(
        steps=expected_steps,
        max_rel_diff=max(rel, default=0.0),
        worst_step=worst + 1,
        first_rel_diff=rel[0] if rel else None,
        final_ref=ref[-1] if ref else None,
        final_other=other[-1] if other else None,
    )
    if result["max_rel_diff"] > tol.max_rel:
        return CurveComparison(
            False,
            f"{other_name} departs from {ref_name} by {rel[worst]:.2%} at step "
            f"{worst + 1} ({other[worst]:.4f} vs {ref[worst]:.4f}), over the "
            f"{tol.max_rel:.1%} tolerance",
            **result,
        )
    return CurveComparison(
        True,
        f"{other_name} within {result['max_rel_diff']:.2%} of {ref_name} at every step (tolerance {tol.max_rel:.1%})",
        **result,
    )


def curve_falls(curve: Sequence, min_drop: float, tail: int = 3) -> bool:
    """Whether training did something: the mean of the last `tail` losses is at least `min_drop` (relative)
    below the first loss."""
    if len(curve) < tail + 1 or not all(_finite(x) for x in curve):
        return False
    return statistics.fmean(curve[-tail:]) <= (1.0 - min_drop) * curve[0]


def steady_median(records: Sequence[dict], key: str, warmup: int) -> Optional[float]:
    """Median of `key` over the steps after `warmup` (kernel selection and allocator growth happen in the
    first steps); None when no finite value is there."""
    values = [r.get(key) for r in records if r.get("step", 0) > warmup]
    values = [v for v in values if _finite(v)]
    return statistics.median(values) if values else None


def last_value(records: Sequence[dict], key: str) -> Optional[float]:
    """The last finite value of `key` (e.g. the running max of max_memory_allocated_gib)."""
    for r in reversed(records):
        v = r.get(key)
        if _finite(v):
            return float(v)
    return None


@dataclass(frozen=True)
class RatioBand:
    """measured / estimated must lie in [low, high]."""

    low: float
    high: float
    why: str

    def contains(self, ratio: Optional[float]) -> bool:
        return ratio is not None and _finite(ratio) and self.low <= ratio <= self.high

    def as_dict(self) -> dict:
        return {"ratio_low": self.low, "ratio_high": self.high, "why": self.why}


def per_layer_delta(peak_small: float, peak_large: float, layers_small: int, layers_large: int) -> float:
    """Memory per layer from two runs that differ only in their number of layers."""
    return (peak_large - peak_small) / (layers_large - layers_small)
