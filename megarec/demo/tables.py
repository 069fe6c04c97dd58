"""The demo report's comparison tables: the equal-budget table (generative model vs the baselines, every
neural model over several seeds, mean ± std, with training and evaluation wall times) and the ablation table
(extra evaluations of seed 0's checkpoints against the final model), as JSON and markdown lines."""

from __future__ import annotations

import json
import os
from typing import Optional

from megarec.eval.seed_stats import format_mean_std

TRAINING = ("stage1", "stage2", "sft", "grpo")
COLS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def training_seconds(stage_records: list[dict], seeds: int) -> dict:
    """Per training stage, the mean seconds over the seeds (stage `<name>` for seed 0, `<name>_seed<k>` after)."""
    by_name = {r["name"]: r.get("seconds", 0.0) for r in stage_records}
    out = {}
    for stage in TRAINING:
        vals = [by_name[n] for n in [stage] + [f"{stage}_seed{k}" for k in range(1, seeds)] if n in by_name]
        if vals:
            out[stage] = sum(vals) / len(vals)
    out["total"] = sum(v for k, v in out.items() if k in TRAINING)
    return out


def equal_budget_table(bench: dict, stage_records: list[dict]) -> dict:
    """Rows of the equal-budget table with per-model wall times, plus the generative model's training time."""
    models = bench.get("models", {})
    seeds = max([m.get("seeds", 1) for m in models.values()] or [1])
    gen = training_seconds(stage_records, models.get("megarec", {}).get("seeds", 1))
    rows = []
    for name, m in models.items():
        if name == "megarec":
            train = gen.get("total")
            evals = m.get("seconds", 0.0) / max(1, m.get("seeds", 1))
        else:
            train = m.get("train_seconds", m.get("seconds", 0.0) / max(1, m.get("seeds", 1)))
            evals = None
        rows.append(
            {
                "model": name,
                "seeds": m.get("seeds", 1),
                "test": m["test"],
                "test_std": m.get("test_std", {}),
                "train_seconds": train,
                "eval_seconds": evals,
                "best_epochs": [r.get("best_epoch") for r in m.get("runs", []) if r.get("best_epoch")],
                "epochs_run": [r.get("epochs_run") for r in m.get("runs", []) if r.get("epochs_run")],
            }
        )
    out = {
        "rows": rows,
        "generative_training_seconds": gen,
        "time_budget_s": bench.get("time_budget_s"),
        "seeds": seeds,
    }
    if "megarec" in models and "sasrec" in models:
        g, s = models["megarec"]["test"], models["sasrec"]["test"]
        out["megarec_vs_sasrec"] = {k: g[k] - s[k] for k in ("ndcg@10", "recall@10")}
    return out


def equal_budget_lines(table: dict) -> list[str]:
    gen = table["generative_training_seconds"]
    budget = table.get("time_budget_s")
    parts = " + ".join(f"{k} {v:.0f}s" for k, v in gen.items() if k in TRAINING)
    title = "Equal-budget comparison" if budget else "Comparison without a time cap"
    lines = [
        f"## {title} (MovieLens-100k, leave-one-out, full ranking, history excluded)",
        "",
        f"Every neural model trained with {table['seeds']} seed(s); cells are mean ± sample std over the seeds. "
        f"The generative model's training stages took {gen.get('total', 0):.0f}s per seed on average "
        f"({parts}); "
        + (
            f"each baseline run was capped at the same {budget:.0f}s on the same cores "
            "(early stopping on validation NDCG@10 may stop it sooner)."
            if budget
            else "the baselines trained to early stopping (no time cap)."
        ),
        "",
        "| model | seeds | " + " | ".join(COLS) + " | train s / run | eval s / run | best epoch (runs) |",
        "|---|---|" + "---|" * len(COLS) + "---|---|---|",
    ]
    for r in table["rows"]:
        m = {"test": r["test"], "test_std": r["test_std"], "seeds": r["seeds"]}
        cells = [format_mean_std(m, c) for c in COLS]
        train = f"{r['train_seconds']:.0f}" if r["train_seconds"] is not None else "–"
        evals = f"{r['eval_seconds']:.0f}" if r["eval_seconds"] is not None else "–"
        epochs = ", ".join(f"{b}/{e}" for b, e in zip(r["best_epochs"], r["epochs_run"])) or "–"
        lines.append(f"| {r['model']} | {r['seeds']} | " + " | ".join(cells) + f" | {train} | {evals} | {epochs} |")
    d = table.get("megarec_vs_sasrec")
    if d:
        verdict = "at least" if d["ndcg@10"] >= 0 else "below"
        lines += [
            "",
            f"megarec vs SASRec (means): NDCG@10 {d['ndcg@10']:+.4f}, Recall@10 {d['recall@10']:+.4f} — "
            f"the generative model is **{verdict}** SASRec on NDCG@10 "
            + ("at this budget." if table.get("time_budget_s") else "with every baseline trained to early stopping."),
        ]
    return lines + [""]


def ablation_table(out_dir: str, config: dict, bench: dict, stage_records: list[dict]) -> Optional[dict]:
    """Rows: the final model (seed 0, as in the benchmark) and every `bench.ablations` evaluation."""
    rows_cfg = (config.get("bench") or {}).get("ablations") or []
    gen = bench.get("models", {}).get("megarec")
    if not gen:
        return None
    by_name = {r["name"]: r.get("seconds", 0.0) for r in stage_records}
    train = {"stage2": sum(by_name.get(n, 0.0) for n in ("stage1", "stage2"))}
    train["sft"] = train["stage2"] + by_name.get("sft", 0.0)
    train["grpo"] = train["sft"] + by_name.get("grpo", 0.0)
    first = gen["runs"][0]
    ref = first["test"]
    rows = [
        {
            "name": "final",
            "what": f"GRPO checkpoint, beam {gen.get('num_beams')}, history {gen.get('max_history')} "
            "(seed 0 of the table above)",
            "checkpoint": "grpo",
            "test": ref,
            "train_seconds": train["grpo"],
            "eval_seconds": first.get("seconds"),
        }
    ]
    for row in rows_cfg:
        path = os.path.join(out_dir, "ablation", row["name"], "results.json")
        if not os.path.isfile(path):
            continue
        res = json.load(open(path))["models"]["megarec"]
        rows.append(
            {
                "name": row["name"],
                "what": row.get("what", ""),
                "checkpoint": row.get("checkpoint", "grpo"),
                "test": res["test"],
                "train_seconds": train.get(row.get("checkpoint", "grpo")),
                "eval_seconds": res.get("seconds"),
            }
        )
    for r in rows:
        r["delta_ndcg@10"] = r["test"]["ndcg@10"] - ref["ndcg@10"]
    return {"rows": rows}


def ablation_lines(table: Optional[dict]) -> list[str]:
    if not table:
        return []
    lines = [
        "## Ablation (seed 0; one change per row against the final model)",
        "",
        "| row | what changes | NDCG@10 | Recall@10 | Δ NDCG@10 | training s | eval s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table["rows"]:
        t = r["test"]
        train = f"{r['train_seconds']:.0f}" if r.get("train_seconds") is not None else "–"
        ev = f"{r['eval_seconds']:.0f}" if r.get("eval_seconds") is not None else "–"
        lines.append(
            f"| {r['name']} | {r['what']} | {t['ndcg@10']:.4f} | {t['recall@10']:.4f} | "
            f"{r['delta_ndcg@10']:+.4f} | {train} | {ev} |"
        )
    return lines + [""]


def gap_lines(ablation: Optional[dict], bench: dict) -> list[str]:
    """Where seed 0 stands against SASRec's mean at each checkpoint of the pipeline (the first ablation row of
    each checkpoint kind): what stage 2 reaches, and what SFT and GRPO add or take away."""
    sasrec = (bench.get("models") or {}).get("sasrec")
    if not ablation or not sasrec:
        return []
    target = sasrec["test"]["ndcg@10"]
    by_kind: dict = {}
    for r in ablation["rows"]:
        by_kind.setdefault(r["checkpoint"], r)
    steps = [(k, by_kind[k]) for k in ("stage2", "sft", "grpo") if k in by_kind]
    if len(steps) < 2:
        return []
    label = {"stage2": "after stage 2", "sft": "after SFT", "grpo": "after GRPO (the final model)"}
    parts = [
        f"{label[k]} {r['test']['ndcg@10']:.4f} ({r['test']['ndcg@10'] - target:+.4f}, row `{r['name']}`)"
        for k, r in steps
    ]
    changes = [
        f"{label[b].split(' (')[0].removeprefix('after ')} {rb['test']['ndcg@10'] - ra['test']['ndcg@10']:+.4f}"
        for (a, ra), (b, rb) in zip(steps, steps[1:])
    ]
    return [
        f"Where the gap is (seed 0 against SASRec's mean NDCG@10 {target:.4f}): " + "; ".join(parts) + ". "
        "Change per stage: " + ", ".join(changes) + ".",
        "",
    ]
