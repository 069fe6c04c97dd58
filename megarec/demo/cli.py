"""`megarec demo`: MovieLens-100k through every stage of megarec on a CPU, then report.md / report.json."""

from __future__ import annotations

import os

from megarec.common.errors import ConfigError
from megarec.common.outdir import check_out_dir, has_entry

PROFILES = ("full", "ci", "quality")
OWN_OUTPUT = has_entry(".stages")  # the stage markers: written before the first stage runs


def recipes_dir() -> str:
    """configs/demo of the repository this package runs from."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "demo")


def register(sub) -> None:
    from megarec.common.config import describe
    from megarec.demo.config import DemoConfig
    from megarec.demo.stages import STAGES

    p = sub.add_parser(
        "demo",
        help="Run the whole pipeline on MovieLens-100k (CPU, ~30 min) and write a report.",
        description="Fetch MovieLens-100k, embed item text with MiniLM, train the RQ-KMeans itemic tokenizer, build "
        "a small Qwen3 with the Qwen3-layout tokenizer expanded by itemic tokens, build task samples, "
        "preprocess them, run stage 1 and stage 2 on Megatron-Core with tensor parallelism, convert to "
        "HF, SFT, GRPO, benchmark against Pop and SASRec, and write report.md / report.json with plots. "
        "Each stage is one `megarec` command (listed in the report) with its log in <out>/logs; rerunning "
        "skips finished stages, a stage whose settings changed is redone with everything after it. "
        f"Stages: {', '.join(s.name for s in STAGES)}, then per extra seed of bench.seeds its seeded stages "
        "(suffix _seed<k>), bench, and ablation_<name> per row of bench.ablations.",
        epilog="config keys (KEY=VALUE):\n" + describe(DemoConfig),
    )
    p.add_argument(
        "--out",
        default="runs/demo",
        help="Output directory (default runs/demo): missing, empty, or an earlier demo's, which is "
        "resumed; see --force.",
    )
    p.add_argument(
        "--profile",
        choices=PROFILES,
        default="full",
        help="full: the ~30-minute demo (equal-budget comparison, three seeds); ci: the same stages at "
        "smaller sizes (CI's end-to-end check); quality: longer training, baselines to early stopping.",
    )
    p.add_argument(
        "--config",
        default=None,
        help="Demo recipe YAML instead of --profile (stage recipes named in it resolve relative to it).",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="Redo every stage, even finished ones. Also runs in a non-empty --out that holds no "
        "earlier demo: the paths the stages write are replaced there, other files are kept.",
    )
    p.add_argument("--until", default=None, metavar="STAGE", help="Stop after this stage (no report).")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Dotted overrides of the demo config.")
    p.set_defaults(func=run_demo)


def _resolve_recipes(cfg, recipe_path: str) -> None:
    base = os.path.dirname(os.path.abspath(recipe_path))
    s = cfg.stages
    for name in ("stage1_recipe", "stage2_recipe", "sft_recipe", "grpo_recipe"):
        path = getattr(s, name)
        path = path if os.path.isabs(path) else os.path.join(base, path)
        if not os.path.isfile(path):
            raise ConfigError(f"stages.{name}: {path} not found")
        setattr(s, name, path)


def run_demo(args) -> int:
    check_out_dir(
        args.out,
        force=args.force,
        inputs=[("--config", args.config)],
        own=OWN_OUTPUT,
        hint="pass --force to run the demo in it anyway",
    )
    import time

    from megarec.common.config import load_config, to_dict
    from megarec.common.tables import format_table
    from megarec.demo.config import DemoConfig
    from megarec.demo.report import build_report
    from megarec.demo.runner import run_stages
    from megarec.demo.stages import DemoPaths

    recipe = args.config or os.path.join(recipes_dir(), f"{args.profile}.yaml")
    cfg = load_config(DemoConfig, recipe, args.overrides)
    _resolve_recipes(cfg, recipe)
    if cfg.stages.nproc % cfg.stages.tensor_parallel:
        raise ConfigError(f"stages.nproc ({cfg.stages.nproc}) must be a multiple of stages.tensor_parallel")
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    paths = DemoPaths(out)
    print(f"megarec demo ({os.path.basename(recipe)}) -> {out}", flush=True)
    t0 = time.perf_counter()
    records = run_stages(cfg, paths, force=args.force, until=args.until, print_fn=lambda s: print(s, flush=True))
    if args.until:
        return 0
    samples = _samples(cfg, paths, force=args.force or any(r["status"] == "ran" for r in records))
    report = build_report(out, records, to_dict(cfg), samples)
    print()
    print(
        format_table(["stage", "status", "seconds"], [[r["name"], r["status"], f"{r['seconds']:.1f}"] for r in records])
    )
    models = report["bench"]["models"]
    if models:
        print()
        print(
            format_table(
                ["model", "recall@10", "ndcg@10"],
                [[n, f"{m['test']['recall@10']:.4f}", f"{m['test']['ndcg@10']:.4f}"] for n, m in models.items()],
            )
        )
    print(f"\nfinished in {(time.perf_counter() - t0) / 60:.1f} min; report: {os.path.join(out, 'report.md')}")
    return 0


def _samples(cfg, paths, force: bool) -> dict:
    """Free generations of the final model, cached in samples.json until a stage reruns."""
    import json

    from megarec.common.atomic import write_json
    from megarec.demo.samples import free_generations

    if os.path.isfile(paths.samples) and not force:
        return json.load(open(paths.samples))
    print("[  ] samples       free generations of the final model", flush=True)
    res = free_generations(
        paths.grpo_hf,
        paths.codes,
        os.path.join(paths.data, "items.jsonl"),
        cfg.data.source,
        users=cfg.bench.sample_users,
        max_history=cfg.data.max_history,
        seed=cfg.data.seed,
    )
    write_json(paths.samples, res)
    return res
