"""GRPO on a synthetic next-item task: hit rate rises, every item is real (trie), samples are true policy
samples whose log-probs training reproduces, the KL to the reference stays bounded, the stage chain loads
into evaluation's constrained beam search, and bad prompts fail clearly."""

from __future__ import annotations

import json

import pytest

from megarec.common.errors import DataError

import posttrain_tiny as tiny
from conftest import run_cli
from posttrain_helpers import REC_ITEMS as ITEMS
from posttrain_helpers import write_rec_task

RECIPE = "configs/posttrain/grpo_tiny_cpu.yaml"
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("grpo")
    tiny.build_tokenizer(str(d / "tok"))
    tiny.build_model(str(d / "base"), str(d / "tok"), seed=0)
    tiny.expand(str(d / "base"), str(d / "model"), 2, 4, seed=0)  # 2 code layers × 4 codes, 6 real items
    write_rec_task(d, "train.jsonl")  # user u's next item is it{u % 6}
    tiny.write_jsonl(str(d / "empty.jsonl"), [tiny.chat_row("recommend next item for user1", target_item_ids=[])])
    tiny.write_jsonl(str(d / "long.jsonl"), [tiny.chat_row("film " * 80, target_item_ids=["it1"])])
    return d


def _overrides(d, run, *extra, data="train.jsonl"):
    return [
        f"model.path={d}/model",
        f"data.sources=[{{path: {d}/{data}}}]",
        f"data.valid=[{{path: {d}/train.jsonl}}]",
        f"data.codes={d}/codes.parquet",
        f"logging.run_dir={d}/{run}",
        *extra,
    ]


@pytest.fixture(scope="module")
def learned(assets):
    return tiny.run_trainer(
        "grpo",
        _overrides(
            assets,
            "learn",
            "train.steps=30",
            "train.eval_interval=15",
            "train.eval_at_start=true",
            "algorithm.kl_coef=0.05",
        ),
        recipe=RECIPE,
    )


def test_hit_rate_rises_with_only_real_items(learned):
    _, s = learned
    hits = [h["hit_rate"] for h in s.history]
    first, last = sum(hits[:5]) / 5, sum(hits[-5:]) / 5
    assert first < 0.35 and last > first + 0.25, hits  # chance is 1/6
    assert s.validations[-1]["val_hit_rate"] > s.validations[0]["val_hit_rate"]
    assert all(h["invalid_items"] == 0 and h["items_per_answer"] == 1 and h["no_item_frac"] == 0 for h in s.history)
    assert all(v["val_invalid_items"] == 0 for v in s.validations)
    # the old log-probs recomputed by training equal the constrained sampling distribution
    assert max(h["logprob_mismatch"] for h in s.history) < 1e-5
    assert "zero_reward_groups" in s.history[0] and "zero_reward_group_frac" in s.history[0]


def test_kl_to_reference_stays_bounded(learned, assets):
    _, s = learned
    kl = [h["kl"] for h in s.history]
    assert kl[0] == pytest.approx(0.0, abs=1e-6)  # the reference is the start policy
    assert max(kl) < 2.0 and sum(kl[-5:]) / 5 < 1.5, kl
    # without the penalty (reference still tracked) the policy drifts further from the reference
    _, free = tiny.run_trainer(
        "grpo",
        _overrides(
            assets, "nokl", "train.steps=30", "algorithm.kl_coef=0.0", f"reference.path={assets}/model", "data.valid=[]"
        ),
        recipe=RECIPE,
    )
    free_kl = [h["kl"] for h in free.history]
    assert sum(free_kl[-10:]) > sum(kl[-10:]), (free_kl, kl)


def test_samples_are_policy_samples_of_real_items(learned):
    trainer, _ = learned
    ids, targets = trainer.sources[0].rows[0]
    r = trainer.policy.generate([ids] * 64, trainer.spec(1.0), seed=5)
    decoded = [tuple(trainer.layout.parse_items(resp)[0]) for resp in r.responses]
    assert set(decoded) <= set(ITEMS.values())  # every item is real
    assert len(set(decoded)) > 1  # samples, not one beam
    assert all(resp[-1] == trainer.eos_ids[0] and len(resp) == 5 for resp in r.responses)  # item + <|im_end|>


def test_reasoning_then_item(assets):
    trainer, s = tiny.run_trainer(
        "grpo",
        _overrides(
            assets,
            "reason",
            "train.steps=2",
            "rollout.reasoning=true",
            "rollout.max_think_tokens=4",
            "rollout.max_new_tokens=16",
            "rollout.temperature=1.5",
            "data.valid=[]",
        ),
        recipe=RECIPE,
    )
    assert all(h["invalid_items"] == 0 and h["no_item_frac"] == 0 for h in s.history)
    assert max(h["logprob_mismatch"] for h in s.history) < 1e-5
    ids, _ = trainer.sources[0].rows[0]
    tok = trainer.policy.tokenizer
    for resp in trainer.policy.generate([ids] * 8, trainer.spec(1.5), seed=1).responses:
        text = tok.decode(resp)
        assert text.startswith("<think>") and "</think>\n\n<|sid_begin|>" in text and text.endswith("<|im_end|>")
        answer = text.split("</think>\n\n")[1]
        assert len(trainer.layout.parse_items(tok(answer, add_special_tokens=False)["input_ids"])) == 1


def test_output_loads_into_constrained_beam_search(learned):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megarec.decoding.beam_search import constrained_beam_search

    trainer, s = learned
    model = AutoModelForCausalLM.from_pretrained(s.output)
    tok = AutoTokenizer.from_pretrained(s.output)
    assert json.load(open(f"{s.output}/itemic.json"))["num_layers"] == 2
    ids, _ = trainer.sources[0].rows[0]
    cands = constrained_beam_search(model, tok, [ids], trainer.trie, num_beams=3)[0]
    assert len(cands) == 3 and all(c.codes in set(ITEMS.values()) for c in cands)


@pytest.mark.parametrize(
    "data,message",
    [
        ("empty.jsonl", "empty.jsonl: row 1: empty target set"),
        ("long.jsonl", r"long.jsonl: row 1: prompt has \d+ tokens, more than data.max_prompt_length=64"),
    ],
)
def test_bad_prompts_are_clear_errors(assets, data, message):
    with pytest.raises(DataError, match=message):
        tiny.run_trainer("grpo", _overrides(assets, "bad", "train.steps=1", data=data), recipe=RECIPE)


def test_cli_bad_prompt_is_one_line(assets):
    proc = run_cli(["grpo", "--config", RECIPE, *_overrides(assets, "cli_bad", data="long.jsonl")], timeout=300)
    lines = [x for x in proc.stderr.splitlines() if x.strip() and "Loading weights" not in x]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"megarec grpo: error: {assets}/long.jsonl: row 1: prompt has ")
    assert lines[0].endswith("tokens, more than data.max_prompt_length=64")


def test_stage_chain_sft_distill_grpo_then_evaluation(assets):
    """Each stage's HF output is the next stage's model.path (itemic.json travels along)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megarec.decoding.beam_search import constrained_beam_search

    d = assets
    tiny.write_jsonl(
        str(d / "chat.jsonl"),
        [tiny.chat_row(f"recommend next item for user{u}", f"here is topic{u}") for u in range(8)],
    )
    common = ["train.steps=2", "data.valid=[]"]
    _, sft = tiny.run_trainer(
        "sft",
        [
            f"model.path={d}/model",
            f"data.sources=[{{path: {d}/chat.jsonl}}]",
            f"logging.run_dir={d}/chain_sft",
            *common,
        ],
        recipe="configs/posttrain/sft_tiny_cpu.yaml",
    )
    _, dis = tiny.run_trainer(
        "distill",
        [
            f"model.path={sft.output}",
            f"teacher.path={d}/base",
            f"data.sources=[{{path: {d}/chat.jsonl}}]",
            f"logging.run_dir={d}/chain_distill",
            *common,
        ],
        recipe="configs/posttrain/distill_tiny_cpu.yaml",
    )
    trainer, rl = tiny.run_trainer(
        "grpo", _overrides(d, "chain_grpo", *common, f"model.path={dis.output}"), recipe=RECIPE
    )
    for out in (sft.output, dis.output, rl.output):
        assert json.load(open(f"{out}/itemic.json")) == json.load(open(f"{d}/model/itemic.json"))
    model, tok = AutoModelForCausalLM.from_pretrained(rl.output), AutoTokenizer.from_pretrained(rl.output)
    ids, _ = trainer.sources[0].rows[0]
    cands = constrained_beam_search(model, tok, [ids], trainer.trie, num_beams=6)[0]
    assert sorted(c.codes for c in cands) == sorted(ITEMS.values())
