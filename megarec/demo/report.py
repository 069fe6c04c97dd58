"""The demo's report: loss curves of every training stage, benchmark bars, free generations and the
stage table, written as report.json (machine-checked in CI), report.md and two PNG plots."""

from __future__ import annotations

import json
import math
import os
from typing import Optional

# (stage, curve key in metrics.jsonl) of the curves the report plots
CURVES = (("stage1", "loss"), ("stage2", "loss"), ("sft", "loss"), ("grpo", "reward_mean"))
# (curve name, stage, key) of validation curves: GRPO's reward and hit rate on held-out prompts
VALID_CURVES = (("grpo_valid_reward", "grpo", "val_reward"), ("grpo_valid_hit_rate", "grpo", "val_hit_rate"))
BENCH_METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def read_curve(metrics_path: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric from a metrics.jsonl (training rows only: eval rows carry other keys)."""
    points = []
    if not os.path.isfile(metrics_path):
        return points
    with open(metrics_path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            if key in rec and "step" in rec and isinstance(rec[key], (int, float)):
                points.append((int(rec["step"]), float(rec[key])))
    return points


def curve_summary(points: list[tuple[int, float]]) -> dict:
    """First/last/min of a curve; `falling` compares the mean of the first and last fifth of the points."""
    if not points:
        return {"points": 0, "finite": False, "falling": False}
    values = [v for _, v in points]
    k = max(1, len(values) // 5)
    head, tail = sum(values[:k]) / k, sum(values[-k:]) / k
    return {
        "points": len(values),
        "first": values[0],
        "last": values[-1],
        "min": min(values),
        "head_mean": head,
        "tail_mean": tail,
        "finite": all(math.isfinite(v) for v in values),
        "falling": tail < head,
    }


def _plot_curves(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(stage, stage, key) for stage, key in CURVES] + [
        v for v in VALID_CURVES if curves.get(v[0], {}).get("points")
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (name, stage, key) in zip(axes, panels):
        pts = curves.get(name, {}).get("values", [])
        if pts:
            ax.plot([s for s, _ in pts], [v for _, v in pts], lw=1.2)
        ax.set_title(f"{stage}: {key}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_bench(models: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(models)
    x = np.arange(len(BENCH_METRICS))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, name in enumerate(names):
        vals = [models[name]["test"][m] for m in BENCH_METRICS]
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=name)
    ax.set_xticks(x, BENCH_METRICS)
    ax.set_ylabel("test (leave-one-out, full ranking)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _code_purity(out_dir: str, config: dict) -> Optional[dict]:
    """Code-prefix purity of the demo's codes against the training split's consecutive items."""
    codes_path = os.path.join(out_dir, "itemic", "codes.csv")
    source = (config.get("data") or {}).get("source")
    if not (source and os.path.isfile(codes_path)):
        return None
    from megarec.common.itemic import read_codes_table
    from megarec.eval.seqrec_data import load_seqrec
    from megarec.itemic.collab import prefix_purity

    data = load_seqrec(source)
    seqs = [[data.item_ids[i - 1] for i in s] for s in data.train_sequences()]
    return prefix_purity(read_codes_table(codes_path).as_dict(), seqs)


def _grpo_exports(out_dir: str, seeds: list) -> list[str]:
    """Which GRPO step each seed exported, from the run's best.json (absent when the recipe exports the last)."""
    from megarec.demo.plan import SeedPaths

    out = []
    for i, seed in enumerate(seeds):
        path = os.path.join(SeedPaths(out_dir, i).grpo, "best", "best.json")
        if os.path.isfile(path):
            r = json.load(open(path))
            what = " (the SFT model)" if r["step"] == 0 else ""
            out.append(f"seed {seed}: step {r['step']}{what}, {r['metric']} {r['value']:.4f}")
    return out


def build_report(out_dir: str, stage_records: list[dict], config: dict, samples: Optional[dict] = None) -> dict:
    """Collect everything under `out_dir` into report.json / report.md / losses.png / bench.png."""
    from megarec.common.atomic import atomic_write_text
    from megarec.common.tables import format_table

    curves = {}
    for stage, key in CURVES:
        pts = read_curve(os.path.join(out_dir, stage, "metrics.jsonl"), key)
        curves[stage] = {"key": key, **curve_summary(pts), "values": pts}
    for name, stage, key in VALID_CURVES:
        pts = read_curve(os.path.join(out_dir, stage, "metrics.jsonl"), key)
        if pts:
            curves[name] = {
                "key": key,
                **curve_summary(pts),
                "values": pts,
                "rising": curve_summary(pts)["tail_mean"] > curve_summary(pts)["head_mean"],
            }
    bench_path = os.path.join(out_dir, "bench", "results.json")
    bench = json.load(open(bench_path)) if os.path.isfile(bench_path) else {}
    models = {
        name: {
            "test": {m: r["test"][m] for m in BENCH_METRICS},
            "seeds": r.get("seeds", 1),
            **({"test_std": r["test_std"]} if "test_std" in r else {}),
            **({"mean_ranked_items": r["test"]["mean_ranked_items"]} if "mean_ranked_items" in r["test"] else {}),
        }
        for name, r in bench.get("models", {}).items()
    }
    if curves:
        _plot_curves(curves, os.path.join(out_dir, "losses.png"))
    if models:
        _plot_bench(models, os.path.join(out_dir, "bench.png"))
    from megarec.demo.tables import ablation_lines, ablation_table, equal_budget_lines, equal_budget_table, gap_lines

    equal = equal_budget_table(bench, stage_records) if models else None
    purity = _code_purity(out_dir, config)
    ablation = ablation_table(out_dir, config, bench, stage_records) if models else None
    report = {
        "stages": stage_records,
        "curves": curves,
        "bench": {"dataset": bench.get("dataset"), "protocol": bench.get("protocol"), "models": models},
        "equal_budget": equal,
        "ablation": ablation,
        "code_purity": purity,
        "generations": samples or {},
        "config": config,
        "total_seconds": sum(r.get("seconds", 0.0) for r in stage_records),
    }
    atomic_write_text(os.path.join(out_dir, "report.json"), json.dumps(report, indent=2, default=float) + "\n")

    lines = [
        "# megarec demo report",
        "",
        f"Total time of the stages run: {report['total_seconds'] / 60:.1f} min.",
        "",
        "## Stages",
        "",
        "| # | stage | what | status | seconds |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {i} | {r['name']} | {r.get('title', '')} | {r['status']} | {r.get('seconds', 0):.1f} |"
        for i, r in enumerate(stage_records, 1)
    ]
    lines += ["", "Commands, in order (each can be rerun by hand):", "", "```bash"]
    lines += [r["command"] for r in stage_records] + [
        "```",
        "",
        "## Training curves",
        "",
        "![losses](losses.png)",
        "",
        "```",
        format_table(
            ["stage", "metric", "first", "last", "min", "falling"],
            [
                [
                    s,
                    c["key"],
                    f"{c.get('first', float('nan')):.4f}",
                    f"{c.get('last', float('nan')):.4f}",
                    f"{c.get('min', float('nan')):.4f}",
                    str(c["falling"]),
                ]
                for s, c in curves.items()
            ],
        ),
        "```",
        "",
    ]
    if models:
        lines += (
            equal_budget_lines(equal)
            + ["![bench](bench.png)", ""]
            + ablation_lines(ablation)
            + gap_lines(ablation, bench)
        )
    if purity:
        w = (config.get("data") or {}).get("collab_weight", 0.0)
        embeddings = f"text (MiniLM) + collaborative, weight {w}" if w else "text (MiniLM) only"
        lines += [
            "## Item codes vs behaviour",
            "",
            f"Item embeddings clustered by RQ-KMeans: {embeddings}. "
            f"Consecutive items of the training sequences ({purity['pairs']} pairs) share their first code "
            f"{purity['prefix1_cooccur']:.1%} of the time "
            f"(random pairs by popularity: {purity['prefix1_random']:.1%}) "
            f"and their first two codes {purity['prefix2_cooccur']:.1%} (random: {purity['prefix2_random']:.1%}).",
            "",
        ]
    grpo_valid = curves.get("grpo_valid_reward")
    if grpo_valid:
        hit = curves.get("grpo_valid_hit_rate", {})
        lines += [
            "## GRPO on held-out prompts",
            "",
            f"Validation reward ({grpo_valid['points']} evaluations, held-out validation targets): "
            f"{grpo_valid['first']:.4f} at the start → {grpo_valid['last']:.4f} at the end "
            f"(rising: {grpo_valid['rising']}); hit rate {hit.get('first', float('nan')):.4f} → "
            f"{hit.get('last', float('nan')):.4f}. The curve is the last panel of losses.png.",
            "",
        ]
        exports = _grpo_exports(out_dir, (config.get("bench") or {}).get("seeds") or [0])
        if exports:
            lines += [
                "Exported policy (best held-out reward, `checkpoint.export=best`): " + "; ".join(exports) + ".",
                "",
            ]
    if samples:
        lines += [
            "## Free generations (greedy, no trie)",
            "",
            f"{samples['users']} test users: {samples['valid_item_fraction']:.0%} of answers decode to a real "
            f"movie, greedy hit rate {samples['greedy_hit_rate']:.1%}.",
            "",
            "| last watched | model's next movie | actual next movie |",
            "|---|---|---|",
        ]
        for ex in samples["examples"][:8]:
            cells = [" / ".join(ex["history_tail"]), ex["generated"], ex["target"]]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    atomic_write_text(os.path.join(out_dir, "report.md"), "\n".join(lines))
    return report
