"""Several training runs of one model (seeds) summarised as mean ± std, and the equal-CPU-time budget of
`megarec bench seqrec --time-budget-from` (the generative pipeline's measured training seconds)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from megarec.common.errors import ConfigError

METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    if not n:
        raise ValueError("no values")
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, sd


def aggregate_runs(runs: list[dict], seconds: float) -> dict:
    """{"test": mean per metric, "test_std": std per metric, "runs": runs, "seeds": n, "seconds": total}
    (also "valid"/"valid_std" when every run has validation metrics)."""
    out = {"runs": runs, "seeds": len(runs), "seconds": seconds}
    for split in ("test", "valid"):
        if all(split in r for r in runs):
            stats = {m: mean_std([r[split][m] for r in runs]) for m in METRICS}
            out[split] = {m: v[0] for m, v in stats.items()}
            out[f"{split}_std"] = {m: v[1] for m, v in stats.items()}
    train = [r.get("train_seconds") for r in runs if r.get("train_seconds") is not None]
    if train:
        out["train_seconds"] = sum(train) / len(train)
    return out


def format_mean_std(result: dict, metric: str, digits: int = 4) -> str:
    """`0.0923 ± 0.0012` with several runs, `0.0923` with one."""
    v = result["test"][metric]
    if result.get("seeds", 1) > 1:
        return f"{v:.{digits}f} ± {result['test_std'][metric]:.{digits}f}"
    return f"{v:.{digits}f}"


def budget_from_files(paths: Sequence[str], runs: int) -> float:
    """Sum of the 'seconds' fields of JSON files, divided by the number of runs they cover."""
    total = 0.0
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                total += float(json.load(f)["seconds"])
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise ConfigError(f"--time-budget-from: cannot read 'seconds' from {p} ({e})") from None
    if total <= 0:
        raise ConfigError("--time-budget-from: the files record no training time")
    return total / max(1, runs)
