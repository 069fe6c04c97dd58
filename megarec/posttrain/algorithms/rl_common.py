"""Pieces shared by the on-policy algorithms (distillation, GRPO): their common config checks, the
`OnPolicyTrainer` base (policy with the clipped loss, prompt mixture, PPO update count, data position),
turning a rollout into a training batch and the clipped policy-gradient update over it."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from megarec.common.errors import ConfigError
from megarec.posttrain.algorithms.base import Trainer
from megarec.posttrain.batching import pad_batch, select_rows
from megarec.posttrain.config import check_common, check_ppo, check_rollout, check_sources
from megarec.posttrain.datasets import MixtureSampler, load_sources
from megarec.posttrain.models.losses import ClippedPolicyGradientLoss
from megarec.posttrain.models.policy import PolicyModel

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def rollout_batch(rollout, pad_id: int, sample_mask: Optional[Sequence[bool]] = None) -> dict:
    """Batch of prompt + response rows. `loss_mask` covers response tokens, except positions where the
    constraint left exactly one choice (a forced token has log-prob 0 under the sampled distribution and
    carries no learning signal) and rows whose `sample_mask` is False. Constraint masks, when recorded,
    are compacted into a per-batch table."""
    seqs, loss_masks, mask_ids = [], [], []
    forced = [int(_POPCOUNT[m].sum()) == 1 for m in rollout.mask_table]
    remap: dict[int, int] = {}
    for i, (p, r) in enumerate(zip(rollout.prompts, rollout.responses)):
        seqs.append(p + r)
        keep = sample_mask is None or bool(sample_mask[i])
        ids = rollout.mask_ids[i] if rollout.mask_ids is not None else [-1] * len(r)
        lm = [0.0] * len(p) + [0.0 if (not keep or (m >= 0 and forced[m])) else 1.0 for m in ids]
        loss_masks.append(lm)
        if rollout.mask_ids is not None:
            mask_ids.append([-1] * len(p) + [remap.setdefault(m, len(remap)) if m >= 0 else -1 for m in ids])
    batch = pad_batch(
        seqs, pad_id, {"loss_mask": loss_masks}, mask_ids=mask_ids if rollout.mask_ids is not None else None
    )
    if rollout.mask_ids is not None:
        batch["masks"] = rollout.masks_tensor(sorted(remap, key=remap.get))
    return batch


def check_on_policy_config(cfg, world_size: int) -> None:
    """Checks distillation and GRPO share: common keys, prompt sources, rollout and PPO settings."""
    check_common(cfg, world_size, "prompts")
    check_sources(cfg.data.sources, "data.sources", required=True)
    check_sources(cfg.data.valid, "data.valid", required=False)
    check_rollout(cfg.rollout)
    check_ppo(cfg.algorithm.ppo, "algorithm.ppo")


def check_mini_batches(cfg, world_size: int) -> None:
    """algorithm.ppo.mini_batches must divide the samples one rank draws per step."""
    rows_per_rank = cfg.train.global_batch_size // world_size * cfg.rollout.samples_per_prompt
    mini_batches = cfg.algorithm.ppo.mini_batches
    if rows_per_rank % mini_batches:
        raise ConfigError(
            f"algorithm.ppo.mini_batches={mini_batches} must divide the samples per rank per step ({rows_per_rank})"
        )


class OnPolicyTrainer(Trainer):
    """Base of the on-policy trainers: prompts from a mixture of sources, `algorithm.ppo` updates."""

    def build_policy(self, kl_coef: float, **kwargs) -> PolicyModel:
        """The trained policy (model.*, parallel.* settings) with the PPO-clipped loss; sampling is limited
        to the tokenizer's ids. `kwargs` go to PolicyModel."""
        cfg = self.cfg
        policy = PolicyModel(
            self.policy_path,
            self.env,
            tokenizer_path=None if self.resume_from else cfg.model.tokenizer,
            dtype=cfg.model.dtype,
            attn_implementation=cfg.model.attn_implementation,
            gradient_checkpointing=cfg.model.gradient_checkpointing,
            reshard_after_forward=cfg.parallel.reshard_after_forward,
            micro_batch_size=cfg.train.micro_batch_size,
            loss_fn=ClippedPolicyGradientLoss(cfg.algorithm.ppo.clip_eps, kl_coef),
            asset_dirs=[cfg.model.path, cfg.model.tokenizer],
            **kwargs,
        )
        policy.vocab_limit = len(policy.tokenizer)
        return policy

    def load_prompts(self, prepare) -> None:
        """Training and validation prompt sources (rows made by `prepare(rec, where)`) and the mixture
        sampler over the training ones."""
        data = self.cfg.data
        self.sources = load_sources(data.sources, prepare, data.overlong)
        self.valid = load_sources(data.valid, prepare, data.overlong, limit=data.valid_samples) if data.valid else []
        self.sampler = MixtureSampler(
            [len(s.rows) for s in self.sources], [s.weight for s in self.sources], self.cfg.train.seed
        )

    def updates_per_step(self) -> int:
        ppo = self.cfg.algorithm.ppo
        return ppo.epochs * ppo.mini_batches

    def has_validation(self) -> bool:
        return bool(self.valid)

    def data_state(self) -> dict:
        return self.sampler.state_dict()

    def load_data_state(self, state: dict) -> None:
        if state:
            self.sampler.load_state_dict(state)


def ppo_update(policy, batch: dict, epochs: int, mini_batches: int) -> dict:
    """`epochs` passes over the batch, each split into `mini_batches` optimizer steps; returns metrics
    averaged over the optimizer steps (grad_norm, lr: of the last step)."""
    n = batch["input_ids"].shape[0]
    size = n // mini_batches
    sums: dict[str, float] = {}
    last: dict = {}
    updates = 0
    for _ in range(epochs):
        for k in range(mini_batches):
            part = select_rows(batch, slice(k * size, (k + 1) * size))
            policy.prepare_for_training_step()
            m = policy.get_loss_and_metrics(part)
            last = policy.finish_training_step()
            for key, v in m.items():
                sums[key] = sums.get(key, 0.0) + float(v)
            updates += 1
    out = {k: v / updates for k, v in sums.items()}
    out.update(last)
    return out
