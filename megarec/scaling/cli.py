"""`megarec scaling fit` (fit L(N, D) to training runs) and `megarec scaling plan` (compute-optimal N, D)."""

from __future__ import annotations

from megarec.common.outdir import FORCE_HELP, check_out_dir, staged_dir


def register(sub) -> None:
    p = sub.add_parser(
        "scaling",
        help="Scaling laws: fit L(N,D)=E+A/N^a+B/D^b to runs; plan N, D for a FLOP budget.",
        description="Scaling-law fitting (Hoffmann et al. 2022, approach 3) and compute-optimal planning.",
    )
    verbs = p.add_subparsers(dest="scaling_verb", metavar="<action>", required=True)
    f = verbs.add_parser(
        "fit",
        help="Fit the law to a CSV of runs; write fit.json and scaling.png.",
        description="Fit L(N, D) = E + A/N^alpha + B/D^beta by a Huber loss on log-space residuals "
        "(log-sum-exp form), L-BFGS-B from a grid of initialisations, best fit kept.",
    )
    f.add_argument(
        "--runs",
        required=True,
        help="CSV with a header: parameters (params|N), training tokens (tokens|D), final loss (loss|L).",
    )
    f.add_argument(
        "--out",
        required=True,
        help="Output directory for fit.json and scaling.png (must be missing or empty unless --force).",
    )
    f.add_argument("--huber-delta", type=float, default=1e-3, help="Huber loss threshold on log residuals.")
    f.add_argument(
        "--grid",
        choices=("full", "small"),
        default="full",
        help="Initialisation grid: full = Hoffmann et al.'s 4,500 points, small = 192 points.",
    )
    f.add_argument("--force", action="store_true", help=FORCE_HELP)
    f.set_defaults(func=run_fit)
    pl = verbs.add_parser(
        "plan",
        help="Compute-optimal parameters and tokens for a FLOP budget.",
        description="N_opt = G (C/6)^a, D_opt = (C/6)^b / G with a = beta/(alpha+beta), "
        "b = alpha/(alpha+beta), from a fitted law (or the built-in reference law).",
    )
    pl.add_argument(
        "--flops",
        type=float,
        required=True,
        action="append",
        help="Training FLOP budget C (e.g. 1e21); repeat for several budgets.",
    )
    pl.add_argument("--fit", default=None, help="fit.json from `megarec scaling fit` (default: the reference law).")
    pl.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    pl.set_defaults(func=run_plan)


def run_fit(args) -> int:
    import json
    import os

    check_out_dir(args.out, force=args.force, inputs=[("--runs", args.runs)])
    from megarec.common.atomic import atomic_write_text
    from megarec.scaling.fit import DEFAULT_GRID, SMALL_GRID, fit_scaling_law, read_runs
    from megarec.scaling.plot import plot_scaling_law

    n, d, loss = read_runs(args.runs)
    res = fit_scaling_law(
        n, d, loss, delta=args.huber_delta, grid=DEFAULT_GRID if args.grid == "full" else SMALL_GRID, progress=True
    )
    out = res.to_dict()
    out["runs"] = os.path.abspath(args.runs)
    with staged_dir(args.out, force=args.force, inputs=[("--runs", args.runs)]) as stage:
        atomic_write_text(os.path.join(stage, "fit.json"), json.dumps(out, indent=2) + "\n")
        plot_scaling_law(res.law, os.path.join(stage, "scaling.png"), runs=(n, d, loss))
    png = os.path.join(args.out, "scaling.png")
    law = res.law
    print(f"L(N, D) = {law.E:.4f} + {law.A:.4g} / N^{law.alpha:.4f} + {law.B:.4g} / D^{law.beta:.4f}")
    print(
        f"N_opt ∝ C^{law.a:.4f}, D_opt ∝ C^{law.b:.4f}  ({res.num_runs} runs, {res.num_inits} initialisations, "
        f"RMS log residual {res.rmse_log:.2e})"
    )
    print(f"wrote {os.path.join(args.out, 'fit.json')} and {png}")
    return 0


def run_plan(args) -> int:
    import json

    from megarec.common.errors import ConfigError
    from megarec.common.tables import format_table
    from megarec.scaling.law import REFERENCE_LAW, ScalingLaw

    if args.fit:
        try:
            with open(args.fit, encoding="utf-8") as f:
                law = ScalingLaw.from_dict(json.load(f))
        except FileNotFoundError:
            raise ConfigError(f"{args.fit}: fit file not found") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{args.fit}: invalid JSON ({e})") from None
        source = args.fit
    else:
        law, source = REFERENCE_LAW, "built-in reference law (fit your own runs for real planning)"
    plans = [law.optimal(c) for c in args.flops]
    if args.json:
        print(json.dumps({"law": law.to_dict(), "source": source, "plans": plans}, indent=2))
        return 0
    print(
        f"law: E={law.E:.4g} A={law.A:.4g} alpha={law.alpha:.4f} B={law.B:.4g} beta={law.beta:.4f} "
        f"(a={law.a:.4f}, b={law.b:.4f}) from {source}"
    )
    rows = [
        [
            f"{p['flops']:.3g}",
            f"{p['params']:.4g}",
            f"{p['tokens']:.4g}",
            f"{p['tokens_per_param']:.3g}",
            f"{p['loss']:.4f}",
        ]
        for p in plans
    ]
    print(format_table(["FLOPs", "params N", "tokens D", "tokens/param", "pred. loss"], rows))
    return 0
