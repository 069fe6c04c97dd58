"""`megarec demo`: the reduced (CI) demo runs every stage end to end on MovieLens-100k and its report holds
what a user is promised; reruns skip finished stages and redo only what changed."""

from __future__ import annotations

import json
import math
import os

import pytest

from megarec.common.config import load_config
from megarec.demo.cli import recipes_dir
from megarec.demo.config import DemoConfig
from megarec.demo.plan import demo_stages
from megarec.demo.report import curve_summary

from conftest import run_cli

STAGE_NAMES = [s.name for s in demo_stages(load_config(DemoConfig, os.path.join(recipes_dir(), "ci.yaml"), []))]
THREADS = {"OMP_NUM_THREADS": "2"}  # the demo's single-process stages use both cores, as `make demo` does


def test_curve_summary_exact():
    pts = [(i, v) for i, v in enumerate([5.0, 4.0, 3.0, 2.0, 1.0, 1.5, 1.0, 0.5, 0.5, 0.5])]
    s = curve_summary(pts)
    assert (s["first"], s["last"], s["min"], s["points"]) == (5.0, 0.5, 0.5, 10)
    assert s["head_mean"] == 4.5 and s["tail_mean"] == 0.5 and s["falling"] and s["finite"]
    assert curve_summary([(1, 1.0), (2, float("nan"))])["finite"] is False
    assert curve_summary([]) == {"points": 0, "finite": False, "falling": False}


def test_bad_override_is_one_clear_line(tmp_path):
    res = run_cli(["demo", "--profile", "ci", "--out", str(tmp_path), "model.hidden=3"])
    assert res.returncode == 2 and "unknown config key 'model.hidden'" in res.stderr
    res = run_cli(["demo", "--profile", "ci", "--out", str(tmp_path), "--until", "nope"])
    assert res.returncode == 2 and "unknown stage 'nope'" in res.stderr


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_ci_demo_end_to_end_and_resume(tmp_path):
    out = tmp_path / "demo"
    res = run_cli(["demo", "--profile", "ci", "--out", str(out)], timeout=2400, env=THREADS)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.load(open(out / "report.json"))

    assert [r["name"] for r in report["stages"]] == STAGE_NAMES
    assert all(r["status"] == "ran" and r["command"].split()[0] in ("megarec", "torchrun") for r in report["stages"])
    for stage in ("stage1", "stage2", "sft"):
        c = report["curves"][stage]
        assert c["points"] >= 3 and c["finite"] and c["falling"], (stage, c)
    assert report["curves"]["grpo"]["finite"]
    assert all(0.0 <= v <= 1.0 for _, v in report["curves"]["grpo"]["values"])

    models = report["bench"]["models"]
    assert set(models) == {"pop", "sasrec", "megarec"}
    for name, m in models.items():
        for metric, v in m["test"].items():
            assert math.isfinite(v) and 0.0 <= v <= 1.0, (name, metric, v)
        assert m["test"]["recall@10"] >= m["test"]["recall@5"] and m["test"]["ndcg@10"] >= m["test"]["ndcg@5"]
    assert models["pop"]["test"]["ndcg@10"] > 0.0

    # trie-constrained beams: every user gets a full list of real, unseen items
    assert models["megarec"]["mean_ranked_items"] == 12.0
    # the comparison and ablation tables, and GRPO's held-out reward curve (at the start, every 2 steps, at the last)
    rows = {r["model"]: r for r in report["equal_budget"]["rows"]}
    assert set(rows) == {"pop", "sasrec", "megarec"} and rows["megarec"]["train_seconds"] > 0
    assert [r["name"] for r in report["ablation"]["rows"]] == ["final", "sft"]
    assert report["ablation"]["rows"][0]["delta_ndcg@10"] == 0.0
    assert [s for s, _ in report["curves"]["grpo_valid_reward"]["values"]] == [0, 2, 3]
    md = open(out / "report.md").read()
    assert "## Equal-budget comparison" in md and "## Ablation" in md and "## GRPO on held-out prompts" in md
    # GRPO exports its best held-out reward (the first step reaching the maximum; step 0 = the SFT model)
    rewards = report["curves"]["grpo_valid_reward"]["values"]
    best = json.load(open(out / "grpo" / "best" / "best.json"))
    assert best["value"] == max(v for _, v in rewards)
    assert best["step"] == next(s for s, v in rewards if v == best["value"])
    assert f"seed 0: step {best['step']}" in md and "Where the gap is (seed 0 against SASRec's mean" in md
    # free (unconstrained) generations are checked and reported; the CI-sized model is too small to be
    # expected to write real items on its own (the full demo's did for 32 of 32 users)
    gen = report["generations"]
    assert gen["users"] == 16 and len(gen["examples"]) == 16
    assert 0.0 <= gen["valid_item_fraction"] <= gen["well_formed_fraction"] <= 1.0
    for f in ("report.md", "losses.png", "bench.png", "grpo/hf/config.json", "stage2/hf/itemic.json"):
        assert (out / f).is_file(), f

    # a rerun skips every stage; changing one stage's settings redoes that stage (and those after it) only
    res = run_cli(["demo", "--profile", "ci", "--out", str(out), "bench.sasrec_epochs=3"], timeout=1200, env=THREADS)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    status = {r["name"]: r["status"] for r in json.load(open(out / "report.json"))["stages"]}
    assert status == {**{n: "cached" for n in STAGE_NAMES}, "bench": "ran", "ablation_sft": "ran"}
