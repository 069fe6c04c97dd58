"""Post-training building blocks: log-probs under constraints, losses, KL estimator, advantages, rewards,
mixture sampler, LR schedule, rollout batches."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from megarec.posttrain.algorithms.rl_common import rollout_batch
from megarec.posttrain.batching import pad_batch, select_rows
from megarec.posttrain.config import OptimizerSection
from megarec.posttrain.datasets import MixtureSampler
from megarec.posttrain.models.logprobs import token_logprobs
from megarec.posttrain.models.losses import ClippedPolicyGradientLoss, k3_kl
from megarec.posttrain.rewards import group_advantages, item_reward
from megarec.posttrain.rollout import Rollout
from megarec.runtime.schedule import lr_at


def test_token_logprobs_alignment_temperature_and_masks():
    torch.manual_seed(0)
    B, T, V = 2, 5, 7
    logits = torch.randn(B, T, V)
    ids = torch.randint(0, V, (B, T))
    lp = token_logprobs(logits, ids, temperature=2.0)
    assert lp.shape == (B, T) and torch.all(lp[:, 0] == 0)
    ref = torch.log_softmax(logits[:, :-1] / 2.0, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(lp[:, 1:], ref)
    # constrain token 3 of row 1 to {ids[1,3], 0, 1}: renormalised over the allowed set only
    masks = torch.zeros(1, V, dtype=torch.bool)
    masks[0, [int(ids[1, 3]), 0, 1]] = True
    mask_ids = torch.full((B, T), -1)
    mask_ids[1, 3] = 0
    lpc = token_logprobs(logits, ids, temperature=2.0, mask_ids=mask_ids, masks=masks)
    allowed = (logits[1, 2] / 2.0).masked_fill(~masks[0], float("-inf"))
    torch.testing.assert_close(lpc[1, 3], torch.log_softmax(allowed, -1)[ids[1, 3]])
    other = torch.ones(B, T, dtype=torch.bool)
    other[1, 3] = False
    torch.testing.assert_close(lpc[other], lp[other])


def test_k3_is_nonnegative_and_unbiased_for_kl():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    k3 = k3_kl(p.log(), q.log())
    assert torch.all(k3 >= 0)
    assert float((p * k3).sum()) == pytest.approx(float((p * (p / q).log()).sum()), abs=1e-6)
    assert torch.all(k3_kl(p.log(), p.log()) == 0)


def test_clipped_policy_gradient_has_no_gradient_outside_the_trust_region():
    loss_fn = ClippedPolicyGradientLoss(clip_eps=0.2, kl_coef=0.0)
    old = torch.zeros(1, 4)
    # ratios 1.5 (A>0: clipped), 0.5 (A<0: clipped), 1.1 (inside), 0.5 (A>0: unclipped side, keeps gradient)
    lp = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.1), math.log(0.5)]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    loss, metrics = loss_fn(lp, {"advantages": adv, "old_logprobs": old})
    loss.sum().backward()
    g = lp.grad[0]
    assert g[0] == 0 and g[1] == 0 and g[2] != 0 and g[3] != 0
    assert metrics["clip_frac"][0].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_kl_penalty_is_added_with_its_coefficient():
    lp = torch.tensor([[0.0, -1.0]])
    batch = {"advantages": torch.zeros(1, 2), "old_logprobs": lp.clone(), "ref_logprobs": torch.tensor([[0.0, -2.0]])}
    loss, metrics = ClippedPolicyGradientLoss(0.2, kl_coef=0.5)(lp, batch)
    torch.testing.assert_close(loss, 0.5 * k3_kl(lp, batch["ref_logprobs"]))
    assert float(metrics["kl"][0, 1]) > 0


def test_group_advantages_and_zero_reward_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv, stats = group_advantages(rewards, 4, scale_by_std=True)
    assert stats == {"groups": 3.0, "zero_reward_groups": 1.0, "uniform_groups": 2.0}
    torch.testing.assert_close(adv[:4], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5, rtol=0)
    assert torch.all(adv[4:] == 0)
    adv2, _ = group_advantages(rewards, 4, scale_by_std=False)
    torch.testing.assert_close(adv2[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_item_rewards():
    targets = {(1, 2, 3), (4, 5, 6)}
    assert item_reward([(4, 5, 6)], targets) == 1.0
    assert item_reward([(4, 5, 7)], targets) == 0.0
    assert item_reward([], targets) == 0.0
    assert item_reward([(4, 5, 7)], targets, "prefix", 0.5, 3) == pytest.approx(0.5 * 2 / 3)
    assert item_reward([(9, 9, 9), (1, 2, 3)], targets, "prefix", 0.5, 3) == 1.0


def test_mixture_sampler_proportions_and_resume():
    s = MixtureSampler([5, 3], [0.6498, 0.3502], seed=3)
    draws = s.take(1000)
    frac = sum(1 for src, _ in draws if src == 0) / 1000
    assert abs(frac - 0.6498) < 0.002
    # each epoch of a source is a permutation of its rows
    rows0 = [i for src, i in draws if src == 0][:5]
    assert sorted(rows0) == list(range(5))
    a = MixtureSampler([5, 3], [2, 1], seed=9)
    a.take(17)
    state = a.state_dict()
    expected = a.take(10)
    b = MixtureSampler([5, 3], [2, 1], seed=9)
    b.load_state_dict(state)
    assert b.take(10) == expected


def test_lr_schedule_warmup_cosine_and_no_zero_first_step():
    def at(k, total, **kw):
        c = OptimizerSection(**kw)
        return lr_at(k, total, c.lr, c.min_lr, c.warmup_fraction, c.lr_decay_style)

    cosine = dict(lr=2e-5, min_lr=5e-6, warmup_fraction=0.1, lr_decay_style="cosine")
    assert at(1, 100, **cosine) == pytest.approx(2e-6)
    assert at(10, 100, **cosine) == pytest.approx(2e-5)
    assert at(100, 100, **cosine) == pytest.approx(5e-6)
    assert at(55, 100, **cosine) == pytest.approx((2e-5 + 5e-6) / 2)
    const = dict(lr=1e-6, min_lr=1e-6, warmup_fraction=0.0, lr_decay_style="constant")
    assert at(1, 10, **const) == at(10, 10, **const) == 1e-6


def test_rollout_batch_masks_forced_tokens_and_compacts_constraints():
    V = 10
    table = [
        np.packbits(np.eye(V, dtype=bool)[3]),  # exactly one allowed: forced
        np.packbits(np.isin(np.arange(V), [1, 2, 5])),
    ]
    r = Rollout(
        prompts=[[7, 8], [7]],
        responses=[[3, 5, 9], [3, 2]],
        finished=[True, True],
        mask_ids=[[0, 1, -1], [0, 1]],
        mask_table=table,
        vocab_size=V,
    )
    b = rollout_batch(r, pad_id=0)
    assert b["loss_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 0, 0]]
    assert b["mask_ids"].tolist() == [[-1, -1, 0, 1, -1], [-1, 0, 1, -1, -1]]
    assert b["masks"].shape == (2, V) and b["masks"][1].nonzero().view(-1).tolist() == [1, 2, 5]
    part = select_rows(b, slice(1, 2))
    assert part["input_ids"].shape == (1, 3) and part["masks"].shape == (2, V)
    only = select_rows(b, slice(0, 1))  # a micro-batch keeps only the masks it uses, renumbered
    assert only["masks"].shape == (2, V) and only["mask_ids"].tolist() == b["mask_ids"][:1].tolist()
    r2 = Rollout(prompts=[[7]], responses=[[5]], finished=[True], mask_ids=[[1]], mask_table=table, vocab_size=V)
    one = select_rows(rollout_batch(r2, 0), slice(0, 1))
    assert one["masks"].shape == (1, V) and one["mask_ids"].tolist() == [[-1, 0]]


def test_pad_batch_right_pads():
    b = pad_batch([[1, 2, 3], [4]], 0, {"loss_mask": [[0, 1, 1], [1]]})
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["loss_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]


def test_best_policy_pointer_survives_only_what_the_resumed_run_has_trained(tmp_path):
    """best.json names a complete step directory; a run resumed from an earlier step forgets a best recorded
    after it (that stretch is trained again), a pointer for another metric or to a missing directory is
    ignored, and NaN never counts as better."""
    from megarec.posttrain.best import BestPolicy, step_name

    (tmp_path / step_name(6)).mkdir()
    (tmp_path / "best.json").write_text(json.dumps({"step": 6, "metric": "val_reward", "value": 0.05}))
    kept = BestPolicy(str(tmp_path), "val_reward", "max", resumed_step=8)
    assert kept.path == str(tmp_path / "step_0000006")
    assert kept.better(0.06) and not kept.better(0.05) and not kept.better(float("nan"))
    assert BestPolicy(str(tmp_path), "val_reward", "max", resumed_step=4).path is None
    assert BestPolicy(str(tmp_path), "val_loss", "min", resumed_step=8).path is None
    lower = BestPolicy(str(tmp_path), "val_reward", "min", resumed_step=None)
    assert lower.better(0.04) and not lower.better(0.06)
    (tmp_path / step_name(6)).rmdir()
    assert BestPolicy(str(tmp_path), "val_reward", "max", resumed_step=None).path is None
