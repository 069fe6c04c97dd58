"""Fitting L(N, D) = E + A/N^α + B/D^β to (N, D, loss) runs, as in Hoffmann et al. (2022), approach 3:
minimise Σ Huber_δ(LSE(a − α log N, b − β log D, e) − log L) over (a, b, e, α, β) with A = e^a,
B = e^b, E = e^e, by L-BFGS-B (scipy) from every point of a grid of initialisations, keeping the best."""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass

import numpy as np

from megarec.common.errors import ConfigError, DataError
from megarec.scaling.law import ScalingLaw

COLUMN_ALIASES = {
    "N": ("params", "n", "n_params", "num_params", "parameters"),
    "D": ("tokens", "d", "n_tokens", "num_tokens", "data"),
    "L": ("loss", "l", "final_loss", "eval_loss", "val_loss"),
}

DEFAULT_GRID = {
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}
SMALL_GRID = {
    "alpha": (0.25, 0.75),
    "beta": (0.25, 0.75),
    "e": (-1.0, 0.0, 1.0),
    "a": (0.0, 5.0, 10.0, 20.0),
    "b": (0.0, 5.0, 10.0, 20.0),
}


@dataclass
class FitResult:
    law: ScalingLaw
    objective: float
    num_runs: int
    num_inits: int
    huber_delta: float
    rmse_log: float  # RMS of log-space residuals at the optimum

    def to_dict(self) -> dict:
        return {
            **self.law.to_dict(),
            "objective": self.objective,
            "num_runs": self.num_runs,
            "num_inits": self.num_inits,
            "huber_delta": self.huber_delta,
            "rmse_log": self.rmse_log,
            "form": "L(N, D) = E + A / N^alpha + B / D^beta; C = 6 N D",
        }


def read_runs(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, L) from a CSV with a header naming parameters, tokens and loss (aliases accepted)."""
    try:
        f = open(path, newline="", encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: runs file not found") from None
    with f:
        reader = csv.DictReader(f)
        header = {h.strip().lower(): h for h in (reader.fieldnames or [])}
        cols = {}
        for key, aliases in COLUMN_ALIASES.items():
            found = [header[a] for a in aliases if a in header]
            if not found:
                raise DataError(f"{path}: no column for {key} (accepted names: {', '.join(aliases)})")
            cols[key] = found[0]
        rows = []
        for i, rec in enumerate(reader, start=2):
            try:
                vals = [float(rec[cols[k]]) for k in ("N", "D", "L")]
            except (TypeError, ValueError):
                raise DataError(f"{path}: row {i}: N, D and loss must be numbers") from None
            if not all(math.isfinite(v) and v > 0 for v in vals):
                raise DataError(f"{path}: row {i}: N, D and loss must be positive and finite")
            rows.append(vals)
    if len(rows) < 5:
        raise DataError(f"{path}: {len(rows)} runs; fitting 5 parameters needs at least 5")
    arr = np.asarray(rows)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def _objective(theta: np.ndarray, logn: np.ndarray, logd: np.ndarray, logl: np.ndarray, delta: float):
    """Huber loss of log-space residuals and its gradient w.r.t. (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * logn, b - beta * logd, np.full_like(logn, e)])
    m = terms.max(axis=0)
    w = np.exp(terms - m)
    s = w.sum(axis=0)
    lse = m + np.log(s)
    w /= s
    r = lse - logl
    absr = np.abs(r)
    loss = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta)).sum()
    g = np.clip(r, -delta, delta)
    grad = np.array(
        [(g * w[0]).sum(), (g * w[1]).sum(), (g * w[2]).sum(), -(g * w[0] * logn).sum(), -(g * w[1] * logd).sum()]
    )
    return float(loss), grad


def _single_threaded_blas():
    """L-BFGS-B makes many tiny BLAS calls; a multi-threaded BLAS makes them ~20x slower (measured on 2
    cores). Limit BLAS to one thread while fitting when threadpoolctl is available."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def fit_scaling_law(
    n, d, loss, *, delta: float = 1e-3, grid: dict | None = None, maxiter: int = 1000, progress: bool = False
) -> FitResult:
    """Best Huber fit over a grid of L-BFGS initialisations (default: Hoffmann et al.'s 4,500-point grid)."""
    from scipy.optimize import minimize

    n, d, loss = (np.asarray(x, dtype=np.float64) for x in (n, d, loss))
    if not (n.shape == d.shape == loss.shape) or n.ndim != 1 or len(n) < 5:
        raise DataError("need at least 5 runs with matching N, D and loss")
    if np.any(n <= 0) or np.any(d <= 0) or np.any(loss <= 0):
        raise DataError("N, D and loss must be positive")
    grid = grid or DEFAULT_GRID
    missing = {"alpha", "beta", "e", "a", "b"} - set(grid)
    if missing:
        raise ConfigError(f"initialisation grid lacks {sorted(missing)}")
    logn, logd, logl = np.log(n), np.log(d), np.log(loss)
    inits = list(itertools.product(grid["a"], grid["b"], grid["e"], grid["alpha"], grid["beta"]))
    num_inits = len(inits)
    if progress:
        from tqdm import tqdm

        inits = tqdm(inits, desc="scaling fit", unit="init")
    # exponents stay non-negative; everything else is free
    bounds = [(None, None), (None, None), (None, None), (0.0, 5.0), (0.0, 5.0)]
    best = None
    with _single_threaded_blas():
        for x0 in inits:
            res = minimize(
                _objective,
                np.asarray(x0, dtype=np.float64),
                args=(logn, logd, logl, delta),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": maxiter},
            )
            if np.all(np.isfinite(res.x)) and (best is None or res.fun < best.fun):
                best = res
    if best is None:
        raise DataError("scaling-law fit failed from every initialisation")
    a, b, e, alpha, beta = best.x
    if alpha <= 0 or beta <= 0:
        raise DataError(f"degenerate fit (alpha={alpha:.3g}, beta={beta:.3g}): the runs do not vary N and D enough")
    law = ScalingLaw(E=float(np.exp(e)), A=float(np.exp(a)), alpha=float(alpha), B=float(np.exp(b)), beta=float(beta))
    rmse = float(np.sqrt(np.mean((np.log(law.loss(n, d)) - logl) ** 2)))
    return FitResult(law, float(best.fun), len(n), num_inits, delta, rmse)
