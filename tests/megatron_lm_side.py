"""The Megatron-LM side of the interop tests, with Megatron-Core only (megatron.training is not in the wheel).

It reproduces, for the flags megarec documents, what Megatron-LM core_v0.16.1 does with them: its argument
names and defaults for those flags (`parse_flags`), the TransformerConfig `core_transformer_config_from_args`
makes of them (`transformer_config`), the GPTModel `gpt_builders.gpt_builder` builds with
`--transformer-impl local` (`build_model`), its optimizer parameter groups (Megatron-Core's standard
overrides: no weight decay on 1-D parameters and biases only) and its LR scheduler counted in samples, its
wrapping (Float16Module with --bf16, then DDP), its torch_dist load (content metadata from the checkpoint,
model under "model") and the layout its
`save_checkpoint` writes. Written from reading Megatron-LM, not copied; the optional real-Megatron-LM test
in test_megatron_lm_interop.py checks the flag names and defaults against Megatron-LM's own parser.

Run as a script (the CPU shims patch torch for the whole process):
  python tests/megatron_lm_side.py load <out.pt> <flags…>    load --load like Megatron-LM; dump tensors
  python tests/megatron_lm_side.py save <src> <iteration> <flags…>  start from src's weights, one Adam step,
                                                                     save at <iteration> to --save
"""

from __future__ import annotations

import argparse
import os
import random
import sys

import numpy as np
import torch


def flag_parser() -> argparse.ArgumentParser:
    """The Megatron-LM flags of docs/convert.md with Megatron-LM's dest names and defaults."""
    p = argparse.ArgumentParser(allow_abbrev=False)
    add = p.add_argument
    for name in (
        "num-layers",
        "hidden-size",
        "ffn-hidden-size",
        "num-attention-heads",
        "kv-channels",
        "max-position-embeddings",
        "padded-vocab-size",
        "seq-length",
        "micro-batch-size",
        "global-batch-size",
        "train-iters",
        "ckpt-step",
        "save-interval",
    ):
        add("--" + name, type=int, default=None)
    add("--num-query-groups", type=int, default=1)
    add("--group-query-attention", action="store_true")
    add("--qk-layernorm", action="store_true")
    add("--normalization", default="LayerNorm")
    add("--norm-epsilon", dest="layernorm_epsilon", type=float, default=1e-5)
    add("--swiglu", action="store_true")
    add("--disable-bias-linear", dest="add_bias_linear", action="store_false")
    add("--position-embedding-type", default="learned_absolute")
    add("--rotary-base", type=int, default=10000)
    add("--rotary-percent", type=float, default=1.0)
    add("--untie-embeddings-and-output-weights", action="store_true")
    add("--attention-dropout", type=float, default=0.1)
    add("--hidden-dropout", type=float, default=0.1)
    add("--make-vocab-size-divisible-by", type=int, default=128)
    add("--tokenizer-type", default=None)
    add("--tokenizer-model", default=None)
    add("--bf16", action="store_true")
    add("--transformer-impl", default="transformer_engine")
    add("--ckpt-format", default="torch_dist")
    add("--load", default=None)
    add("--save", default=None)
    add("--finetune", action="store_true")
    add("--no-load-optim", action="store_true", default=None)
    add("--no-load-rng", action="store_true", default=None)
    add("--use-distributed-optimizer", action="store_true")
    add("--lr", type=float, default=None)
    add("--min-lr", type=float, default=0.0)
    add("--lr-warmup-iters", type=int, default=0)
    add("--lr-decay-style", default="linear")
    add("--weight-decay", type=float, default=0.01)
    add("--weight-decay-incr-style", default="constant")
    add("--adam-beta1", type=float, default=0.9)
    add("--adam-beta2", type=float, default=0.999)
    add("--adam-eps", type=float, default=1e-8)
    add("--clip-grad", type=float, default=1.0)
    return p


def parse_flags(flags: list[str]) -> argparse.Namespace:
    ns = flag_parser().parse_args(flags)
    if not ns.group_query_attention:  # Megatron-LM's validate_args: one query group per head
        ns.num_query_groups = ns.num_attention_heads
    if ns.kv_channels is None:
        ns.kv_channels = ns.hidden_size // ns.num_attention_heads
    return ns


def transformer_config(ns: argparse.Namespace):
    """What core_transformer_config_from_args gives for these flags (fusions off: CPU)."""
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    dtype = torch.bfloat16 if ns.bf16 else torch.float32
    return TransformerConfig(
        num_layers=ns.num_layers,
        hidden_size=ns.hidden_size,
        ffn_hidden_size=ns.ffn_hidden_size,
        num_attention_heads=ns.num_attention_heads,
        num_query_groups=ns.num_query_groups,
        kv_channels=ns.kv_channels,
        normalization=ns.normalization,
        layernorm_epsilon=ns.layernorm_epsilon,
        qk_layernorm=ns.qk_layernorm,
        add_bias_linear=ns.add_bias_linear,
        gated_linear_unit=ns.swiglu,
        activation_func=F.silu if ns.swiglu else F.gelu,
        hidden_dropout=ns.hidden_dropout,
        attention_dropout=ns.attention_dropout,
        bf16=ns.bf16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        deallocate_pipeline_outputs=True,
        attention_softmax_in_fp32=False,
        transformer_impl=ns.transformer_impl,
        use_cpu_initialization=True,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
    )


def build_model(ns: argparse.Namespace):
    """gpt_builder with --transformer-impl local and no MoE/MLA/heterogeneous layers."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    assert ns.transformer_impl == "local", "on CPU only the local spec builds"
    spec = get_gpt_layer_local_spec(
        num_experts=None,
        moe_grouped_gemm=False,
        qk_layernorm=ns.qk_layernorm,
        multi_latent_attention=False,
        normalization=ns.normalization,
    )
    return GPTModel(
        config=transformer_config(ns),
        transformer_layer_spec=spec,
        vocab_size=ns.padded_vocab_size,
        max_sequence_length=ns.max_position_embeddings,
        pre_process=True,
        post_process=True,
        fp16_lm_cross_entropy=False,
        parallel_output=True,
        share_embeddings_and_output_weights=not ns.untie_embeddings_and_output_weights,
        position_embedding_type=ns.position_embedding_type,
        rotary_percent=ns.rotary_percent,
        rotary_base=ns.rotary_base,
        rope_scaling=False,
    )


def build_optimizer(ddp_model, ns: argparse.Namespace):
    """Megatron-LM's optimizer (standard weight-decay overrides) and its sample-counted LR scheduler."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer, get_standard_config_overrides
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    cfg = OptimizerConfig(
        optimizer="adam",
        lr=ns.lr,
        min_lr=ns.min_lr,
        weight_decay=ns.weight_decay,
        adam_beta1=ns.adam_beta1,
        adam_beta2=ns.adam_beta2,
        adam_eps=ns.adam_eps,
        clip_grad=ns.clip_grad,
        bf16=ns.bf16,
        params_dtype=torch.bfloat16 if ns.bf16 else torch.float32,
        use_distributed_optimizer=ns.use_distributed_optimizer,
    )
    opt = get_megatron_optimizer(cfg, [ddp_model], config_overrides=get_standard_config_overrides(cfg))
    gbs = ns.global_batch_size
    sched = OptimizerParamScheduler(
        opt,
        init_lr=0.0,
        max_lr=ns.lr,
        min_lr=ns.min_lr,
        lr_warmup_steps=ns.lr_warmup_iters * gbs,
        lr_decay_steps=ns.train_iters * gbs,
        lr_decay_style=ns.lr_decay_style,
        start_wd=ns.weight_decay,
        end_wd=ns.weight_decay,
        wd_incr_steps=ns.train_iters * gbs,
        wd_incr_style=ns.weight_decay_incr_style,
    )
    return opt, sched


def checkpoint_dir(root: str, step=None) -> tuple[str, int]:
    """Megatron-LM's choice of directory: --ckpt-step, else the tracker file's iteration."""
    if step is None:
        step = int(open(os.path.join(root, "latest_checkpointed_iteration.txt")).read().strip())
    return os.path.join(root, f"iter_{step:07d}"), step


def load(ns: argparse.Namespace, model, ddp=None):
    """A torch_dist load in Megatron-LM's way; returns (iteration, consumed samples, optimizer, scheduler)."""
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    ckpt, _ = checkpoint_dir(ns.load, ns.ckpt_step)
    common = dist_checkpointing.load_common_state_dict(ckpt)
    ckpt_args = common.get("args", argparse.Namespace())
    metadata = dict(dist_checkpointing.load_content_metadata(preloaded_state_dict=common) or {})
    metadata["dp_cp_group"] = ps.get_data_parallel_group(with_context_parallel=True)
    state = {"model": model.sharded_state_dict(metadata=metadata)}
    opt = sched = None
    with_optim = not ns.finetune and not ns.no_load_optim and not getattr(ckpt_args, "no_save_optim", False)
    if with_optim:
        opt, sched = build_optimizer(ddp, ns)
        state["optimizer"] = opt.sharded_state_dict(state, is_loading=True, metadata=metadata)
    loaded = dist_checkpointing.load(state, ckpt, strict="assume_ok_unexpected")
    model.load_state_dict(loaded["model"], strict=True)
    if with_optim:
        opt.load_state_dict(loaded["optimizer"])
        sched.load_state_dict(loaded["opt_param_scheduler"])
    if ns.finetune:
        return 0, 0, opt, sched
    return int(loaded["iteration"]), int(getattr(ckpt_args, "consumed_train_samples", 0)), opt, sched


def _init(ns):
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megarec.runtime import cpu_shims

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    cpu_shims.enable()
    ps.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(1234)


def _wrap(model, ns):
    """get_model's wrapping: Float16Module with --bf16 (every parameter, norms too, becomes bf16), then DDP."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.module import Float16Module

    module = Float16Module(model.config, model) if ns.bf16 else model
    return DistributedDataParallel(
        config=model.config,
        ddp_config=DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, use_distributed_optimizer=ns.use_distributed_optimizer
        ),
        module=module,
    )


def _param_names(model) -> dict:
    return {id(p): n for n, p in model.named_parameters()}


def _optimizer_dump(model, opt) -> dict:
    """Adam state per model parameter name, and the group settings (plain optimizer: on CPU without TE or
    Apex, Megatron-Core's DistributedOptimizer cannot build a sharded state dict to load into)."""
    inner = opt.chained_optimizers[0] if hasattr(opt, "chained_optimizers") else opt
    groups = inner.optimizer.param_groups
    names = _param_names(model)
    return {
        "moments": {
            names[id(p)]: {k: v.clone() for k, v in inner.optimizer.state[p].items()}
            for g in groups
            for p in g["params"]
        },
        "weight_decay": {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]},
        "lr": sorted({g["lr"] for g in groups}),
        "betas": sorted({tuple(g["betas"]) for g in groups}),
    }


def cmd_load(out: str, flags: list[str]) -> None:
    ns = parse_flags(flags)
    _init(ns)
    model = build_model(ns)
    ddp = _wrap(model, ns)
    iteration, consumed, opt, sched = load(ns, model, ddp)
    dump = {
        "iteration": iteration,
        "consumed_train_samples": consumed,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)},
    }
    if opt is not None:
        dump.update(_optimizer_dump(model, opt))
        dump["scheduler"] = sched.state_dict()
    torch.save(dump, out)


def cmd_save(src: str, iteration: int, flags: list[str]) -> None:
    """A Megatron-LM run that starts from the weights of `src` (zero rows up to its padded vocabulary), takes
    one Adam step (so that the optimizer state is not empty) and saves at `iteration` to --save."""
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    ns = parse_flags(flags)
    _init(ns)
    model = build_model(ns)
    ddp = _wrap(model, ns)
    src_dir, _ = checkpoint_dir(src)
    plain = dist_checkpointing.load_plain_tensors(src_dir)
    with torch.no_grad():  # the source's rows, zero rows up to this run's padded vocabulary
        for key, sh in model.sharded_state_dict().items():
            if not hasattr(sh, "key") or sh.key not in plain:
                continue
            t = plain[sh.key]
            if getattr(sh, "prepend_axis_num", 0):
                t = t[sh.global_offset[0]]
            elif t.dim() == sh.data.dim() + 1:  # a factory (SwiGLU fc1) keeps the stacked layer axis
                t = t[int(key.split(".")[2])]
            target = model.state_dict(keep_vars=True)[key]
            target.zero_()
            target[tuple(slice(0, n) for n in t.shape)].copy_(t.to(target.dtype))
    opt, sched = build_optimizer(ddp, ns)
    for p in model.parameters():  # Megatron DDP keeps the gradients in main_grad
        p.main_grad.copy_(torch.full_like(p, 1e-3, dtype=p.main_grad.dtype))
    opt.step()
    sched.step(increment=iteration * ns.global_batch_size)
    root = ns.save
    ckpt = os.path.join(root, f"iter_{iteration:07d}")
    os.makedirs(ckpt, exist_ok=True)
    args = argparse.Namespace(
        **vars(ns),
        consumed_train_samples=iteration * ns.global_batch_size,
        skipped_train_samples=0,
        consumed_valid_samples=0,
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1,
        world_size=1,
        data_parallel_size=1,
        no_save_optim=None,
        no_save_rng=None,
    )
    metadata = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}  # content metadata
    sd_metadata = dict(metadata, dp_cp_group=ps.get_data_parallel_group(with_context_parallel=True))
    state = {
        "args": args,
        "checkpoint_version": 3.0,
        "iteration": iteration,
        "model": model.sharded_state_dict(metadata=sd_metadata),
        "num_floating_point_operations_so_far": 0,
    }
    state["optimizer"] = opt.sharded_state_dict(state, metadata=sd_metadata)
    state["opt_param_scheduler"] = sched.state_dict()
    rng = {
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.get_rng_state(),  # no CUDA here
        "rng_tracker_states": get_cuda_rng_tracker().get_states(),
    }
    state["rng_state"] = ShardedObject("rng_state", [rng], (1, 1), (0, 0), replica_id=0)
    dist_checkpointing.save(state, ckpt, content_metadata=metadata)
    with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write(str(iteration))


if __name__ == "__main__":
    action = sys.argv[1]
    if action == "load":
        cmd_load(sys.argv[2], sys.argv[3:])
    elif action == "save":
        cmd_save(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        raise SystemExit(f"unknown action {action}")
