"""On-policy distillation: reverse KL to the teacher falls, itemic tokens disappear from general answers,
trajectories end at the first itemic token, think suffixes are randomised, mismatched teachers fail."""

from __future__ import annotations

import collections
import dataclasses
import random

import pytest
import torch

from megarec.common.errors import ConfigError

import posttrain_tiny as tiny
from conftest import run_cli

WORDS = ["film", "song", "video", "hello", "world", "topic3", "user2", "calm", "fun"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill")
    tiny.build_tokenizer(str(d / "tok"))
    # a peaked random teacher (the "original base model"), and a student expanded from it whose itemic
    # tokens are likely everywhere and whose other weights drifted (as after pre-training + SFT)
    tiny.build_model(str(d / "base"), str(d / "tok"), seed=0, init_std=0.2)
    tiny.expand(str(d / "base"), str(d / "student"), 2, 4, seed=0, itemic_logit_bias=3.0, weight_noise=0.5)
    tiny.build_model(str(d / "wide"), str(d / "tok"), seed=0, hidden=48)
    rng = random.Random(0)
    rows = [tiny.chat_row(" ".join(rng.choice(WORDS) for _ in range(4))) for _ in range(48)]
    tiny.write_jsonl(str(d / "train.jsonl"), rows[:32])
    tiny.write_jsonl(str(d / "valid.jsonl"), rows[32:])
    return d


def _overrides(d, run, *extra, teacher="base"):
    return [
        f"model.path={d}/student",
        f"teacher.path={d}/{teacher}",
        f"data.sources=[{{path: {d}/train.jsonl}}]",
        f"data.valid=[{{path: {d}/valid.jsonl}}]",
        f"logging.run_dir={d}/{run}",
        *extra,
    ]


RECIPE = "configs/posttrain/distill_tiny_cpu.yaml"


def test_reverse_kl_falls_and_itemic_tokens_disappear(assets):
    _, s = tiny.run_trainer(
        "distill",
        _overrides(
            assets,
            "learn",
            "train.steps=30",
            "train.eval_interval=15",
            "train.eval_at_start=true",
            "optimizer.lr=3e-3",
            "optimizer.min_lr=1e-5",
            "optimizer.lr_decay_style=cosine",
        ),
        recipe=RECIPE,
    )
    v = s.validations
    assert [x["step"] for x in v] == [0, 15, 30]
    assert v[0]["val_itemic_rate"] >= 0.9, v  # the student starts by emitting itemic tokens
    assert v[-1]["val_itemic_rate"] <= 0.1, v  # … and stops
    assert v[-1]["val_reverse_kl"] < 0.1 * v[0]["val_reverse_kl"], v
    rates = [h["itemic_rate"] for h in s.history]
    assert rates[0] >= 0.9 and sum(rates[-5:]) / 5 <= 0.1, rates
    assert s.output is not None


def test_itemic_token_ends_trajectory_with_minimal_teacher_logprob(assets):
    from megarec.posttrain.algorithms.rl_common import rollout_batch

    trainer, _ = tiny.run_trainer("distill", _overrides(assets, "probe", "train.steps=0"), recipe=RECIPE)
    rows = trainer.sources[0].rows
    prompts = [trainer._prompt(rows[i], random.Random(i)) for i in range(8)]
    r = trainer.policy.generate(prompts, trainer._spec(1.2), seed=0)
    unknown = trainer.unknown
    ended = 0
    for resp, done in zip(r.responses, r.finished):
        flags = [bool(unknown[t]) for t in resp]
        if any(flags):
            assert flags.index(True) == len(resp) - 1 and done  # stops right at the first itemic token
            ended += 1
    assert ended >= 4
    batch = rollout_batch(r, trainer.policy.tokenizer.pad_token_id)
    lp = trainer.teacher.get_logprobs(batch)
    itemic_targets = unknown[batch["input_ids"]] & batch["loss_mask"].bool()
    assert torch.all(lp[itemic_targets] == trainer.cfg.algorithm.itemic_teacher_logprob)
    assert torch.all(lp[~itemic_targets & batch["loss_mask"].bool()] > -25)


def test_prompt_suffixes_are_random_think_no_think_or_none(assets):
    trainer, _ = tiny.run_trainer(
        "distill",
        _overrides(assets, "suffix", "train.steps=0", "algorithm.think_suffix_probs=[0.5, 0.25, 0.25]"),
        recipe=RECIPE,
    )
    tok = trainer.policy.tokenizer
    counts = collections.Counter()
    for k in range(400):
        text = tok.decode(trainer._prompt(trainer.sources[0].rows[0], random.Random(k)))
        user = text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
        counts["/no_think" if user.endswith("/no_think") else "/think" if user.endswith("/think") else "none"] += 1
    assert abs(counts["/think"] / 400 - 0.5) < 0.08
    assert abs(counts["/no_think"] / 400 - 0.25) < 0.08 and abs(counts["none"] / 400 - 0.25) < 0.08


def test_teacher_architecture_mismatch_is_a_clear_error(assets):
    with pytest.raises(ConfigError, match=r"does not match the student .*hidden_size 32 vs 48"):
        tiny.run_trainer("distill", _overrides(assets, "bad", "train.steps=1", teacher="wide"), recipe=RECIPE)
    with pytest.raises(ConfigError, match="overlaps the student's itemic ids"):
        tiny.run_trainer(
            "distill",
            _overrides(assets, "bad2", "train.steps=1", "teacher.same_size=false", teacher="student"),
            recipe=RECIPE,
        )


def test_cli_teacher_mismatch_is_one_line(assets):
    proc = run_cli(["distill", "--config", RECIPE, *_overrides(assets, "cli_bad", teacher="wide")], timeout=300)
    lines = [x for x in proc.stderr.splitlines() if x.strip() and "Loading weights" not in x]
    assert proc.returncode == 2, proc.stderr
    assert lines[-1].startswith("megarec distill: error: teacher ") and "hidden_size 32 vs 48" in lines[-1]
    assert "Traceback" not in proc.stderr


def test_logprobs_are_taken_at_the_sampling_temperature(assets):
    """Samples drawn at T = 1.5: the student's recomputed log-probs equal the sampler's own, and the teacher's
    are log softmax(teacher logits / T) — the update is on-policy for KL(p_s^(T) ‖ p_t^(T))."""
    from megarec.posttrain.algorithms.grpo import sample_logprob_tensor
    from megarec.posttrain.algorithms.rl_common import rollout_batch
    from megarec.posttrain.models.logprobs import token_logprobs

    T = 1.5
    trainer, _ = tiny.run_trainer(
        "distill", _overrides(assets, "temp", "train.steps=0", f"rollout.temperature={T}"), recipe=RECIPE
    )
    rows = trainer.sources[0].rows
    prompts = [trainer._prompt(rows[i], random.Random(i)) for i in range(24)]
    r = trainer.policy.generate(prompts, dataclasses.replace(trainer._spec(T), record_logprobs=True), seed=0)
    batch = rollout_batch(r, trainer.policy.tokenizer.pad_token_id)
    mask = batch["loss_mask"].bool()
    sampled = sample_logprob_tensor(r, batch["input_ids"].shape)
    student = trainer.policy.get_logprobs(batch)
    assert mask.sum() > 20
    assert torch.allclose(student[mask], sampled[mask], atol=1e-4), (student[mask] - sampled[mask]).abs().max()
    teacher = trainer.teacher.get_logprobs(batch)
    plain = mask & ~trainer.unknown[batch["input_ids"]]
    t_in, _ = trainer.teacher.teacher_inputs(batch)
    logits = trainer.teacher.get_logits(t_in)
    want = token_logprobs(logits, t_in["input_ids"], temperature=T)
    assert torch.allclose(teacher[plain], want[plain], atol=1e-5)
    assert not torch.allclose(teacher[plain], token_logprobs(logits, t_in["input_ids"])[plain], atol=1e-2)
    # one training step logs the sampler/trainer gap
    _, s = tiny.run_trainer(
        "distill", _overrides(assets, "temp_step", "train.steps=1", f"rollout.temperature={T}"), recipe=RECIPE
    )
    assert s.history[0]["logprob_mismatch"] < 1e-4
