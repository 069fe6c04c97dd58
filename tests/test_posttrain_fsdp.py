"""FSDP2 (fully_shard, gloo on CPU) with two processes: SFT reproduces the single-process loss curve, a
checkpoint written by two ranks resumes on one, and distillation / GRPO run end to end (generation with
gathered parameters, sharded teacher / reference) without deadlocks.

Tolerance of the parity check: 1e-5 absolute on losses of about 5. Both runs compute the same fp32 sums;
only the order changes (two per-rank partial sums + a gloo all-reduce instead of one sum, FSDP's
reduce-scatter of gradients), which moves results by a few float32 ulps (observed ≤ 4e-7 over 8 AdamW
steps). A per-rank mean instead of the global token normalisation would be off by ~1e-2 here, because
the answers (and so the loss-token counts per rank) have different lengths.
"""

from __future__ import annotations

import json
import random

import pytest

import posttrain_tiny as tiny
from conftest import run_cli
from posttrain_helpers import write_rec_task

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]


def _metrics(run_dir):
    return [json.loads(x) for x in open(f"{run_dir}/metrics.jsonl")]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdp")
    tiny.build_tokenizer(str(d / "tok"))
    tiny.build_model(str(d / "base"), str(d / "tok"), seed=0)
    rng = random.Random(0)
    rows = []
    for i in range(40):
        u = rng.randrange(16)
        ans = " ".join([f"here is topic{u}"] + [f"because user{u} likes topic{u}"] * rng.randrange(0, 4))
        rows.append(tiny.chat_row(f"recommend a film for user{u}", ans, system="You are helpful" if i % 2 else None))
    tiny.write_jsonl(str(d / "train.jsonl"), rows[:32])
    tiny.write_jsonl(str(d / "valid.jsonl"), rows[32:])
    tiny.expand(str(d / "base"), str(d / "rec"), 2, 4, seed=0)
    tiny.expand(str(d / "base"), str(d / "student"), 2, 4, seed=0, itemic_logit_bias=3.0)
    write_rec_task(d, "rl.jsonl")
    tiny.write_jsonl(str(d / "prompts.jsonl"), [tiny.chat_row(f"hello world topic{k} film") for k in range(16)])
    return d


def _sft(d, run, *extra):
    return [
        "sft",
        "--config",
        "configs/posttrain/sft_tiny_cpu.yaml",
        f"model.path={d}/base",
        f"data.sources=[{{path: {d}/train.jsonl}}]",
        f"data.valid=[{{path: {d}/valid.jsonl}}]",
        f"logging.run_dir={d}/{run}",
        *extra,
    ]


def test_two_ranks_match_one_rank_and_resume_across_world_sizes(assets):
    from safetensors.torch import load_file

    tiny.run_trainer("sft", _sft(assets, "one")[3:], recipe="configs/posttrain/sft_tiny_cpu.yaml")  # in process
    two = run_cli(_sft(assets, "two"), nproc=2, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = ([x for x in _metrics(assets / run) if "checkpoint" not in x] for run in ("one", "two"))
    assert [x["step"] for x in a] == [x["step"] for x in b] and len(a) == 10  # 8 steps + 2 validations
    for x, y in zip(a, b):
        key = "loss" if "loss" in x else "val_loss"
        assert y[key] == pytest.approx(x[key], abs=1e-5), (x, y)
        assert y.get("loss_tokens") == x.get("loss_tokens")
    wa, wb = load_file(f"{assets}/one/hf/model.safetensors"), load_file(f"{assets}/two/hf/model.safetensors")
    assert sorted(wa) == sorted(wb) and max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    # two ranks stop after 4 steps (sharded optimizer state saved unsharded), one rank finishes the run
    part = run_cli(_sft(assets, "moved", "train.exit_interval=4"), nproc=2, timeout=300)
    assert part.returncode == 0, part.stderr[-3000:]
    _, rest = tiny.run_trainer("sft", _sft(assets, "moved")[3:], recipe="configs/posttrain/sft_tiny_cpu.yaml")
    assert rest.start_step == 4
    c = [x for x in _metrics(assets / "moved") if "loss" in x]
    assert [x["step"] for x in c] == list(range(1, 9))
    assert [x["loss"] for x in c] == pytest.approx([x["loss"] for x in a if "loss" in x], abs=1e-5)


def test_distill_and_grpo_run_sharded(assets):
    d = assets
    distill = run_cli(
        [
            "distill",
            "--config",
            "configs/posttrain/distill_tiny_cpu.yaml",
            f"model.path={d}/student",
            f"teacher.path={d}/base",
            f"data.sources=[{{path: {d}/prompts.jsonl}}]",
            f"data.valid=[{{path: {d}/prompts.jsonl}}]",
            f"logging.run_dir={d}/distill",
        ],
        nproc=2,
        timeout=300,
    )
    assert distill.returncode == 0, distill.stderr[-3000:]
    m = _metrics(d / "distill")
    assert any("val_reverse_kl" in x for x in m) and (d / "distill" / "hf" / "itemic.json").is_file()
    grpo = run_cli(
        [
            "grpo",
            "--config",
            "configs/posttrain/grpo_tiny_cpu.yaml",
            f"model.path={d}/distill/hf",
            f"data.sources=[{{path: {d}/rl.jsonl}}]",
            f"data.valid=[{{path: {d}/rl.jsonl}}]",
            f"data.codes={d}/codes.parquet",
            f"logging.run_dir={d}/grpo",
        ],
        nproc=2,
        timeout=300,
    )
    assert grpo.returncode == 0, grpo.stderr[-3000:]
    steps = [x for x in _metrics(d / "grpo") if "hit_rate" in x]
    assert len(steps) == 6 and all(x["invalid_items"] == 0 and x["no_item_frac"] == 0 for x in steps)
    assert max(x["logprob_mismatch"] for x in steps) < 1e-5
    assert (d / "grpo" / "hf" / "model.safetensors").is_file()
