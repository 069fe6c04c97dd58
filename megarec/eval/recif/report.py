"""report.md and PNG plots (per-task headline bars, recall@k curves) from RecIF-Bench results."""

from __future__ import annotations

import os

from megarec.common.atomic import savefig_atomic
from megarec.common.tables import markdown_table


def headline(task_result: dict) -> tuple[str, float | None]:
    """(metric name, value) shown for a task in the bar chart."""
    m = task_result["metrics"]
    if task_result["kind"] == "rec":
        k = max(task_result["ks"])
        return f"pass@{k}", m[f"pass@{k}"]
    if task_result["kind"] == "label":
        return "AUC", m.get("auc")
    return ("judge score" if task_result.get("llm_judge") else "ROUGE-L F1 (fallback)"), m["judge_score"]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def write_plots(results: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["tasks"]
    paths = []
    if tasks:
        names = list(tasks)
        vals = [headline(tasks[t])[1] for t in names]
        labels = [f"{t}\n({headline(tasks[t])[0]})" for t in names]
        fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names)), 4))
        bars = ax.bar(range(len(names)), [v or 0.0 for v in vals], color="#4477aa")
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(), _fmt(v), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("score")
        ax.set_title("RecIF-Bench: headline metric per task")
        p = os.path.join(out_dir, "tasks.png")
        savefig_atomic(fig, p)
        plt.close(fig)
        paths.append(p)
    rec = {t: r for t, r in tasks.items() if r["kind"] == "rec"}
    if rec:
        fig, ax = plt.subplots(figsize=(6, 4))
        for t, r in rec.items():
            ks = sorted(r["ks"])
            ax.plot(ks, [r["metrics"][f"recall@{k}"] for k in ks], marker="o", label=t)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_ylabel("recall@k")
        ax.set_title("Recall@k (trie-constrained beam search)")
        ax.legend(fontsize=8)
        p = os.path.join(out_dir, "recall_at_k.png")
        savefig_atomic(fig, p)
        plt.close(fig)
        paths.append(p)
    return paths


def render_markdown(results: dict) -> str:
    tasks = results["tasks"]
    lines = [
        "# RecIF-Bench evaluation",
        "",
        f"- model: `{results['model']}`",
        f"- data: `{results['data']}` (split `{results['split']}`)",
        f"- recommendation decoding: trie-constrained beam search, beam {results['num_beams']} "
        "(every candidate is a real item of the sample's domain); item-level metrics map each code tuple "
        "to its most popular item",
        "",
    ]
    rec = {t: r for t, r in tasks.items() if r["kind"] == "rec"}
    if rec:
        ks = sorted(next(iter(rec.values()))["ks"])
        header = (
            ["task", "n"]
            + [f"pass@{k}" for k in ks]
            + [f"recall@{k}" for k in ks]
            + [f"ndcg@{max(ks)}", f"pos1_pass@{max(ks)}", f"sid_pass@{max(ks)}"]
        )
        rows = [
            [t, r["n"]]
            + [_fmt(r["metrics"][f"pass@{k}"]) for k in ks]
            + [_fmt(r["metrics"][f"recall@{k}"]) for k in ks]
            + [
                _fmt(r["metrics"][f"ndcg@{max(ks)}"]),
                _fmt(r["metrics"][f"position1_pass@{max(ks)}"]),
                _fmt(r["metrics"][f"sid_pass@{max(ks)}"]),
            ]
            for t, r in rec.items()
        ]
        lines += ["## Recommendation tasks", "", markdown_table(header, rows), ""]
    lab = {t: r for t, r in tasks.items() if r["kind"] == "label"}
    if lab:
        rows = [
            [
                t,
                r["n"],
                _fmt(r["metrics"].get("auc")),
                _fmt(r["metrics"]["accuracy"]),
                _fmt(r["metrics"]["logloss"]),
                _fmt(r["metrics"]["mean_yes_no_mass"]),
            ]
            for t, r in lab.items()
        ]
        lines += [
            "## Label prediction",
            "",
            "Score = p(yes) / (p(yes) + p(no)) of the first answer token.",
            "",
            markdown_table(["task", "n", "AUC", "accuracy@0.5", "log-loss", "mean p(yes)+p(no)"], rows),
            "",
        ]
    txt = {t: r for t, r in tasks.items() if r["kind"] == "text"}
    if txt:
        rows = [
            [
                t,
                r["n"],
                r["judge"],
                _fmt(r["metrics"]["judge_score"]),
                _fmt(r["metrics"]["rouge_l_f1"]),
                _fmt(r["metrics"]["unigram_f1"]),
            ]
            for t, r in txt.items()
        ]
        lines += ["## Text tasks", ""]
        if not all(r["llm_judge"] for r in txt.values()):
            lines += [
                "**Offline run: text tasks are scored by the lexical-overlap fallback (ROUGE-L F1 against the "
                "reference), not by an LLM judge. These numbers measure wording overlap only.**",
                "",
            ]
        lines += [markdown_table(["task", "n", "judge", "score", "ROUGE-L F1", "unigram F1"], rows), ""]
    gen = results.get("general") or {}
    if gen.get("perplexity"):
        p = gen["perplexity"]
        lines += [
            "## General domain",
            "",
            f"Held-out perplexity on `{p['file']}`: **{p['perplexity']:.3f}** "
            f"({p['tokens']} tokens, window {p['window']}).",
            "",
        ]
    if gen.get("lm_eval"):
        le = gen["lm_eval"]
        lines += ["## lm-evaluation-harness", "", le.get("skipped") or "```\n" + str(le.get("results")) + "\n```", ""]
    if results.get("plots"):
        lines += (
            ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in results["plots"]] + [""]
        )
    return "\n".join(lines)
