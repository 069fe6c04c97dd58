"""Iso-loss contours of a fitted scaling law over (FLOPs, parameters), with the efficient frontier
N_opt(C) and the fitted runs; written as a PNG with matplotlib's Agg backend."""

from __future__ import annotations

import numpy as np

from megarec.scaling.law import ScalingLaw


def plot_scaling_law(law: ScalingLaw, path: str, runs: tuple | None = None, flops_range: tuple | None = None) -> str:
    """Save the plot to `path` (atomically) and return it. `runs` = (N, D, loss) arrays to overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megarec.common.atomic import savefig_atomic

    if flops_range is None:
        if runs is not None:
            c = 6.0 * np.asarray(runs[0]) * np.asarray(runs[1])
            flops_range = (c.min() / 10, c.max() * 100)
        else:
            flops_range = (1e18, 1e25)
    lo, hi = np.log10(flops_range[0]), np.log10(flops_range[1])
    logc = np.linspace(lo, hi, 200)
    c_opt = 10**logc
    n_opt = np.array([law.optimal(c)["params"] for c in c_opt])
    n_lo, n_hi = np.log10(n_opt.min()) - 2, np.log10(n_opt.max()) + 2
    if runs is not None:
        n_lo = min(n_lo, np.log10(np.min(runs[0])) - 0.5)
        n_hi = max(n_hi, np.log10(np.max(runs[0])) + 0.5)
    logn = np.linspace(n_lo, n_hi, 200)
    CC, NN = np.meshgrid(logc, logn)
    DD = 10**CC / (6.0 * 10**NN)
    LL = law.loss(10**NN, DD)
    fig, ax = plt.subplots(figsize=(7, 5))
    levels = np.quantile(LL, np.linspace(0.02, 0.9, 14))
    cs = ax.contour(CC, NN, LL, levels=np.unique(levels), cmap="viridis", linewidths=0.8)
    ax.clabel(cs, fmt="%.3f", fontsize=7)
    ax.plot(
        logc,
        np.log10(n_opt),
        color="crimson",
        lw=2,
        label=f"efficient frontier N_opt ∝ C^{law.a:.3f} (D_opt ∝ C^{law.b:.3f})",
    )
    if runs is not None:
        n, d, loss = (np.asarray(x) for x in runs)
        sc = ax.scatter(np.log10(6 * n * d), np.log10(n), c=loss, cmap="viridis", edgecolor="k", s=25, zorder=3)
        fig.colorbar(sc, ax=ax, label="observed loss")
    ax.set_xlabel("log10 training FLOPs (C = 6ND)")
    ax.set_ylabel("log10 parameters N")
    ax.set_title(f"L = {law.E:.3f} + {law.A:.3g}/N^{law.alpha:.3f} + {law.B:.3g}/D^{law.beta:.3f}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    savefig_atomic(fig, path)
    plt.close(fig)
    return path
