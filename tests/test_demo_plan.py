"""The demo's stage plan: every seed of `bench.seeds` gets its own initialisation and training stages under
seeds/seed<k>/, the benchmark evaluates every seed's final model and gives the baselines the generative
model's measured training time, and each ablation row is one more evaluation stage."""

from __future__ import annotations

import json
import os

import pytest

from megarec.common.config import load_config
from megarec.common.errors import ConfigError
from megarec.demo.cli import recipes_dir
from megarec.demo.config import DemoConfig
from megarec.demo.plan import SEEDED, TRAINING, demo_stages
from megarec.demo.stages import STAGES, DemoPaths
from megarec.demo.tables import equal_budget_lines, equal_budget_table, training_seconds
from megarec.eval.seed_stats import aggregate_runs, budget_from_files, format_mean_std, mean_std


def _cfg(*overrides):
    return load_config(DemoConfig, os.path.join(recipes_dir(), "full.yaml"), list(overrides))


def test_seeds_repeat_the_seeded_stages_with_their_own_paths_and_seeds():
    cfg = _cfg("bench.seeds=[0,5,7]")
    stages = demo_stages(cfg)
    names = [s.name for s in stages]
    base = [s.name for s in STAGES]
    assert names[: len(base)] == base
    assert names[len(base) : len(base) + 2 * len(SEEDED)] == [f"{n}_seed{k}" for k in (1, 2) for n in SEEDED]
    assert names[-5:] == [
        "bench",
        "ablation_stage2_sequence",
        "ablation_sft_only",
        "ablation_beam50",
        "ablation_history50",
    ]
    p = DemoPaths("/o")
    cmd = {s.name: s.command(cfg, p) for s in stages}
    assert cmd["base_model"][cmd["base_model"].index("--seed") + 1] == "0"
    assert cmd["base_model_seed1"][cmd["base_model_seed1"].index("--seed") + 1] == "5"
    assert "/o/seeds/seed2/assets/base_model" in cmd["base_model_seed2"]
    assert "train.seed=1241" in cmd["sft_seed2"] and "model.path=/o/seeds/seed2/stage2/hf" in cmd["sft_seed2"]
    assert "train.seed=1234" in cmd["grpo"] and "model.path=/o/sft/hf" in cmd["grpo"]
    # shared data: every seed reads the same codes, samples and indexed dataset
    assert "data.data_path=[/o/datasets/pretrain_text_document]" in cmd["stage1_seed1"]
    assert "data.codes=/o/itemic/codes.csv" in cmd["grpo_seed1"]
    b = cmd["bench"]
    assert [b[i + 1] for i, a in enumerate(b) if a == "--hf-dir"] == [
        "/o/grpo/hf",
        "/o/seeds/seed1/grpo/hf",
        "/o/seeds/seed2/grpo/hf",
    ]
    assert b[b.index("--seeds") + 1] == "0,5,7"
    budget = b[b.index("--time-budget-from") + 1].split(",")
    assert budget == [f"/o/.stages/{n}{'_seed%d' % k if k else ''}.json" for k in range(3) for n in TRAINING]
    assert "--time-budget" not in b
    assert cmd["ablation_sft_only"][cmd["ablation_sft_only"].index("--hf-dir") + 1] == "/o/sft/hf"
    assert cmd["ablation_sft_only"][cmd["ablation_sft_only"].index("--baselines") + 1] == ""
    assert cmd["ablation_sft_only"][cmd["ablation_sft_only"].index("--prompt") + 1] == "chat"
    s2 = cmd["ablation_stage2_sequence"]
    assert s2[s2.index("--hf-dir") + 1] == "/o/stage2/hf" and s2[s2.index("--prompt") + 1] == "sequence"
    assert s2[s2.index("--max-history") + 1] == "100"
    beam50, history50 = cmd["ablation_beam50"], cmd["ablation_history50"]
    assert beam50[beam50.index("--num-beams") + 1] == "50" and beam50[beam50.index("--hf-dir") + 1] == "/o/grpo/hf"
    assert history50[history50.index("--max-history") + 1] == "50"
    assert history50[history50.index("--num-beams") + 1] == str(cfg.bench.num_beams)
    assert history50[history50.index("--out") + 1] == "/o/ablation/history50"


def test_sequence_windows_reach_the_data_build_only_when_asked():
    p = DemoPaths("/o")
    build = {s.name: s for s in demo_stages(_cfg())}["data_build"]
    assert "--sequence-windows" not in build.command(_cfg(), p)
    argv = build.command(_cfg("data.sequence_windows=all"), p)
    assert argv[argv.index("--sequence-windows") + 1] == "all"


def test_one_seed_and_fixed_budget():
    cfg = _cfg("bench.seeds=[0]", "bench.equal_budget=false", "bench.sasrec_time_budget=30", "bench.ablations=[]")
    stages = demo_stages(cfg)
    assert [s.name for s in stages] == [s.name for s in STAGES] + ["bench"]
    b = stages[-1].command(cfg, DemoPaths("/o"))
    assert b[b.index("--time-budget") + 1] == "30.0" and "--time-budget-from" not in b
    with pytest.raises(ConfigError, match="checkpoint 'stage9'"):
        demo_stages(_cfg("bench.ablations=[{name: x, checkpoint: stage9}]"))
    with pytest.raises(ConfigError, match="data.sequence_windows must be last or all"):
        demo_stages(_cfg("data.sequence_windows=every"))
    with pytest.raises(ConfigError, match="prompt 'text'"):
        demo_stages(_cfg("bench.ablations=[{name: x, checkpoint: stage2, prompt: text}]"))


def test_seed_statistics_and_budget(tmp_path):
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_std([4.0]) == (4.0, 0.0)
    runs = [
        {"test": {m: v for m in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")}, "train_seconds": t}
        for v, t in ((0.1, 10.0), (0.3, 30.0))
    ]
    agg = aggregate_runs(runs, seconds=41.0)
    assert agg["seeds"] == 2 and agg["test"]["ndcg@10"] == pytest.approx(0.2)
    assert agg["test_std"]["ndcg@10"] == pytest.approx(0.1414213562) and agg["train_seconds"] == 20.0
    assert format_mean_std(agg, "ndcg@10") == "0.2000 ± 0.1414"
    for i, s in enumerate((100.0, 50.0, 30.0)):
        (tmp_path / f"{i}.json").write_text(json.dumps({"seconds": s}))
    assert budget_from_files([str(tmp_path / f"{i}.json") for i in range(3)], runs=2) == 90.0
    with pytest.raises(ConfigError, match="seconds"):
        budget_from_files([str(tmp_path / "missing.json")], 1)
    records = [
        {"name": "stage1", "seconds": 10.0},
        {"name": "stage2", "seconds": 20.0},
        {"name": "stage1_seed1", "seconds": 30.0},
        {"name": "sft", "seconds": 5.0},
    ]
    assert training_seconds(records, 2) == {"stage1": 20.0, "stage2": 20.0, "sft": 5.0, "total": 45.0}
    table = equal_budget_table(
        {
            "models": {"megarec": {**agg, "seconds": 8.0}, "sasrec": {**agg, "test": {**agg["test"], "ndcg@10": 0.25}}},
            "time_budget_s": 45.0,
        },
        records,
    )
    assert table["megarec_vs_sasrec"]["ndcg@10"] == pytest.approx(-0.05)
    assert table["rows"][0]["train_seconds"] == 45.0 and table["rows"][0]["eval_seconds"] == 4.0
    capped = "\n".join(equal_budget_lines(table))
    assert "## Equal-budget comparison" in capped and "capped at the same 45s" in capped
    assert "**below** SASRec on NDCG@10 at this budget." in capped
    # The quality profile trains the baselines to early stopping: the table must not claim an equal budget.
    uncapped = "\n".join(equal_budget_lines({**table, "time_budget_s": None}))
    assert "## Comparison without a time cap" in uncapped and "Equal-budget" not in uncapped
    assert "the baselines trained to early stopping (no time cap)" in uncapped


def _rerun(cfg, changed: set[str]) -> list[str]:
    """The stages a rerun redoes when the fingerprints of `changed` differ (the runner's rule, no processes)."""
    from megarec.demo.runner import StaleOutputs

    after, redone = StaleOutputs(), []
    for stage in demo_stages(cfg):
        if stage.name in changed or after.stale(stage):
            redone.append(stage.name)
            after.ran(stage)
    return redone


def test_a_changed_stage_redoes_what_reads_its_outputs_not_other_seeds_training():
    cfg = _cfg()
    names = [s.name for s in demo_stages(cfg)]
    evaluation = ["bench", "ablation_stage2_sequence", "ablation_sft_only", "ablation_beam50", "ablation_history50"]
    # new SFT settings change sft of every seed: SFT and GRPO rerun per seed, stage 2 stays
    sft = {"sft", "sft_seed1", "sft_seed2"}
    assert _rerun(cfg, sft) == ["sft", "grpo", "sft_seed1", "grpo_seed1", "sft_seed2", "grpo_seed2", *evaluation]
    # one seed's stage 2 changed: only that seed's chain and the evaluation
    assert _rerun(cfg, {"stage2_seed1"}) == ["stage2_seed1", "convert_out_seed1", "sft_seed1", "grpo_seed1"] + (
        evaluation
    )
    # a shared stage (the item codes) feeds everything after it, every seed included
    assert _rerun(cfg, {"itemic"}) == names[names.index("itemic") :]
    # seed 0's expanded model is the tokenizer of the shared dataset: the shared stages after it rerun too
    assert _rerun(cfg, {"expand_vocab"}) == names[names.index("expand_vocab") :]
    assert _rerun(cfg, {"bench"}) == evaluation


def test_gap_paragraph_follows_the_checkpoints_of_seed_0():
    """The report says where seed 0 stands against SASRec's mean after each stage, from the ablation rows."""
    from megarec.demo.tables import gap_lines

    def row(name, kind, ndcg):
        return {"name": name, "checkpoint": kind, "test": {"ndcg@10": ndcg}}

    ablation = {
        "rows": [row("final", "grpo", 0.0928), row("stage2_sequence", "stage2", 0.0931), row("sft_only", "sft", 0.0898)]
    }
    bench = {"models": {"sasrec": {"test": {"ndcg@10": 0.0941}}}}
    assert gap_lines(ablation, bench) == [
        "Where the gap is (seed 0 against SASRec's mean NDCG@10 0.0941): after stage 2 0.0931 (-0.0010, row "
        "`stage2_sequence`); after SFT 0.0898 (-0.0043, row `sft_only`); after GRPO (the final model) 0.0928 "
        "(-0.0013, row `final`). Change per stage: SFT -0.0033, GRPO +0.0030.",
        "",
    ]
    # without the stage-2 and SFT rows, or without SASRec, there is nothing to say
    assert gap_lines({"rows": ablation["rows"][:1]}, bench) == [] and gap_lines(ablation, {"models": {}}) == []
