"""AdamW through Megatron-Core's optimizer (DDP buffers, distributed optimizer, grad clipping) and the
warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import torch

from megarec.pretrain.config import TrainConfig
from megarec.runtime.config import OptimizerConfig
from megarec.runtime.schedule import warmup_updates


def _no_weight_decay(row_frozen: set[str]):
    """Norm weights, biases and embeddings get no weight decay; neither do row-frozen weights, whose
    frozen rows must not drift."""

    def predicate(param: torch.nn.Parameter, name: str) -> bool:
        return (
            param.dim() == 1
            or name.endswith(".bias")
            or "word_embeddings" in name
            or name.removeprefix("module.") in row_frozen
        )

    return predicate


def build_optimizer(
    chunks: list, opt: OptimizerConfig, dtype: torch.dtype, distributed: bool, row_frozen: set[str] = frozenset()
):
    from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
    from megatron.core.optimizer import get_megatron_optimizer
    from megatron.core.optimizer.optimizer_config import ParamKey, ParamWithNamePredicate
    from megatron.core.optimizer_param_scheduler import ParamGroupOverride

    cfg = MegatronOptimizerConfig(
        optimizer="adam",
        lr=opt.lr,
        min_lr=opt.min_lr,
        weight_decay=opt.weight_decay,
        decoupled_weight_decay=True,
        adam_beta1=opt.adam_beta1,
        adam_beta2=opt.adam_beta2,
        adam_eps=opt.adam_eps,
        clip_grad=opt.clip_grad,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
        use_distributed_optimizer=distributed,
    )
    overrides = {
        ParamKey(
            with_name_predicate=ParamWithNamePredicate(name="megarec_no_wd", fn=_no_weight_decay(row_frozen))
        ): ParamGroupOverride(wd_mult=0.0),
    }
    return get_megatron_optimizer(cfg, chunks, config_overrides=overrides)


def build_scheduler(optimizer, opt: OptimizerConfig, train: TrainConfig):
    """Megatron-Core's scheduler set up to give `megarec.runtime.schedule.lr_at` (linear warm-up from 0 over
    `warmup_fraction` of the steps, then decay to `min_lr` at the end) when stepped before each optimizer step;
    its state is what Megatron-LM's checkpoints carry."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=opt.lr,
        min_lr=opt.min_lr,
        lr_warmup_steps=warmup_updates(opt.warmup_fraction, train.steps),
        lr_decay_steps=max(1, train.steps),
        lr_decay_style=opt.lr_decay_style,
        start_wd=opt.weight_decay,
        end_wd=opt.weight_decay,
        wd_incr_steps=max(1, train.steps),
        wd_incr_style="constant",
    )
