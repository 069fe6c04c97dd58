"""Megatron-LM interoperability of megarec's dist checkpoints (Megatron-LM core_v0.16.1, torch_dist).

megarec already saves in Megatron-LM's layout: `<root>/iter_XXXXXXX/` (a torch_dist dist checkpoint),
`<root>/latest_checkpointed_iteration.txt`, the model under "model" ("model0", "model1", … with virtual
pipeline stages), the optimizer under "optimizer" keyed by parameter (so the moments follow the names,
whatever the parameter groups), and `iteration` in the common state. What Megatron-LM's `load_checkpoint`
reads on top of that is built here and written by `save_checkpoint` beside megarec's own keys, which
megarec itself never reads:

- `checkpoint_version` = 3.0. Without it Megatron-LM assumes version 0 and, when it checks the checkpoint
  args (every load without --finetune), asks them for the pre-3.0 `model_parallel_size`, which fails.
- `args`: an argparse.Namespace with Megatron-LM's argument names. Its values come from the saved model
  itself (its TransformerConfig and GPTModel attributes), the parallel layout of the save and the run's
  config; no size is fixed here. `no_save_rng` is true whenever megarec's RNG object is not in Megatron-LM's
  layout (a list of dicts with Megatron-LM's key names), so that Megatron-LM skips it instead of exiting on
  it; `no_save_optim` is true when the checkpoint holds no optimizer.
- `opt_param_scheduler`: megarec's LR-scheduler state with its step counts multiplied by the global batch
  size, because Megatron-LM's scheduler counts samples where megarec's counts iterations.

`megatron_lm_flags` turns a checkpoint's args into the Megatron-LM command-line flags that rebuild the same
model: Megatron-LM does not take --qk-layernorm, --norm-epsilon or the padded vocabulary from a checkpoint
(not even with --use-checkpoint-args), and a model built without them can load the checkpoint silently wrong.

The way back: a Megatron-LM checkpoint gives megarec its weights (`checkpoint.init_from`), with the padded
vocabulary read from its `args.padded_vocab_size`. Resuming a megarec run from one is refused in one line:
megarec would not find its scheduler state and data position in it.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

from megarec.common.errors import ConfigError

CHECKPOINT_VERSION = 3.0
CKPT_FORMAT = "torch_dist"

# What Megatron-LM core_v0.16.1 (megatron/training/checkpointing.py) reads from a torch_dist checkpoint.
# Common-state keys: `iteration` unless --finetune; `checkpoint_version` (default 0, see above);
# `opt_param_scheduler` (or `lr_scheduler`) and the sharded `optimizer` unless --finetune/--no-load-optim;
# the sharded `rng_state` unless --finetune/--no-load-rng/args.no_save_rng or a TP/PP change; optional:
# `num_floating_point_operations_so_far`, `rerun_state_machine`, dist_checkpointing's `content_metadata`.
COMMON_KEYS_READ = ("iteration", "checkpoint_version", "args", "opt_param_scheduler")
# args attributes load_checkpoint reads (with a default, except where check_checkpoint_args has none).
ARGS_READ_ON_LOAD = (
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",  # RNG / optimizer-reshard decisions
    "world_size",
    "data_parallel_size",  # rerun-state decision
    "no_save_rng",
    "no_save_optim",
    "num_layers",
    "hidden_size",
    "num_attention_heads",  # check_checkpoint_args: no default
    "add_position_embedding",
    "max_position_embeddings",
    "make_vocab_size_divisible_by",
    "tokenizer_type",  # compared with --vocab-file
    "consumed_train_samples",
    "skipped_train_samples",
    "consumed_valid_samples",
)
# args attributes `--use-checkpoint-args` copies into the run (load_args_from_checkpoint); MoE, Mamba,
# heterogeneous-layer and tokenizer-model ones are left out (None there means "not set").
ARGS_FOR_USE_CHECKPOINT_ARGS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "seq_length",
    "num_attention_heads",
    "num_query_groups",
    "group_query_attention",
    "kv_channels",
    "max_position_embeddings",
    "position_embedding_type",
    "add_position_embedding",
    "use_rotary_position_embeddings",
    "rotary_base",
    "rotary_percent",
    "rotary_interleaved",
    "add_bias_linear",
    "add_qkv_bias",
    "squared_relu",
    "swiglu",
    "untie_embeddings_and_output_weights",
    "apply_layernorm_1p",
    "normalization",
    "apply_query_key_layer_scaling",
    "attention_dropout",
    "hidden_dropout",
    "padded_vocab_size",
    "ckpt_format",
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "virtual_pipeline_model_parallel_size",
    "expert_model_parallel_size",
)
# Megatron-LM's per-rank RNG dict (megatron/training/checkpointing.py get_rng_state).
MEGATRON_LM_RNG_KEYS = ("random_rng_state", "np_rng_state", "torch_rng_state", "cuda_rng_state", "rng_tracker_states")


def rng_state_readable(data: Any) -> bool:
    """True when an rng_state object has Megatron-LM's layout: a list of per-DP-rank dicts with its keys."""
    return (
        isinstance(data, (list, tuple))
        and len(data) > 0
        and isinstance(data[0], dict)
        and all(k in data[0] for k in MEGATRON_LM_RNG_KEYS)
    )


def run_settings(extra: Optional[dict]) -> dict:
    """The settings Megatron-LM keeps in its args that only the run's config knows (absent ones are None):
    from a pre-training run's config (`extra["config"]`) or a conversion's record (`extra["convert"]`)."""
    extra = extra or {}
    cfg, conv = extra.get("config") or {}, extra.get("convert") or {}
    train, model = cfg.get("train") or {}, cfg.get("model") or {}
    data, parallel = cfg.get("data") or {}, cfg.get("parallel") or {}
    return {
        "make_vocab_size_divisible_by": model.get(
            "make_vocab_size_divisible_by", conv.get("make_vocab_size_divisible_by")
        ),
        "seq_length": train.get("seq_length"),
        "micro_batch_size": train.get("micro_batch_size"),
        "global_batch_size": train.get("global_batch_size"),
        "train_iters": train.get("steps"),
        "tokenizer_model": data.get("tokenizer"),
        "use_distributed_optimizer": bool(parallel.get("use_distributed_optimizer", False)),
        "context_parallel_size": parallel.get("context_parallel_size", 1),
    }


def checkpoint_args(
    model,
    *,
    padded_vocab_size: int,
    tp: int,
    pp: int,
    vp: Optional[int],
    world_size: int,
    data_parallel_size: int,
    consumed_samples: int,
    saved_optimizer: bool,
    saved_rng: bool,
    settings: Optional[dict] = None,
) -> argparse.Namespace:
    """Megatron-LM's checkpoint `args` for a megarec GPTModel chunk (its TransformerConfig and attributes)."""
    import torch

    c = model.config
    s = dict(settings or {})
    if c.num_moe_experts or int(model.vocab_size) != int(padded_vocab_size):
        raise RuntimeError(
            f"internal: Megatron-LM args are written for dense models whose vocabulary is the "
            f"checkpoint's ({model.vocab_size} rows vs padded_vocab_size={padded_vocab_size})"
        )
    activation = getattr(c.activation_func, "__name__", "")
    kv_heads = c.num_query_groups or c.num_attention_heads
    tokenizer = s.get("tokenizer_model")
    return argparse.Namespace(
        # architecture (megatron/training/arguments.py names)
        num_layers=c.num_layers,
        hidden_size=c.hidden_size,
        ffn_hidden_size=c.ffn_hidden_size,
        num_attention_heads=c.num_attention_heads,
        group_query_attention=kv_heads != c.num_attention_heads,
        num_query_groups=kv_heads,
        kv_channels=c.kv_channels,
        qk_layernorm=bool(c.qk_layernorm),
        normalization=c.normalization,
        layernorm_epsilon=c.layernorm_epsilon,  # the dest of --norm-epsilon
        apply_layernorm_1p=bool(c.layernorm_zero_centered_gamma),
        swiglu=bool(c.gated_linear_unit) and activation == "silu",
        squared_relu=False,
        add_bias_linear=bool(c.add_bias_linear),
        add_qkv_bias=bool(c.add_qkv_bias),
        apply_query_key_layer_scaling=bool(c.apply_query_key_layer_scaling),
        attention_dropout=c.attention_dropout,
        hidden_dropout=c.hidden_dropout,
        init_method_std=c.init_method_std,
        position_embedding_type=model.position_embedding_type,
        # Megatron-LM keeps its default True under RoPE (the GPTModel ignores it then); a False here
        # would fail check_checkpoint_args against a run that does not pass --no-position-embedding.
        add_position_embedding=True,
        use_rotary_position_embeddings=False,
        rotary_base=int(model.rotary_base),
        rotary_percent=float(model.rotary_percent),
        rotary_interleaved=bool(c.rotary_interleaved),
        use_rope_scaling=bool(model.rotary_scaling),
        max_position_embeddings=int(model.max_sequence_length),
        untie_embeddings_and_output_weights=not model.share_embeddings_and_output_weights,
        padded_vocab_size=int(padded_vocab_size),
        make_vocab_size_divisible_by=s.get("make_vocab_size_divisible_by"),
        tokenizer_type="HuggingFaceTokenizer" if tokenizer else None,
        tokenizer_model=tokenizer,
        num_experts=None,
        bf16=c.params_dtype == torch.bfloat16,
        fp16=c.params_dtype == torch.float16,
        # layout of this save
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vp,
        num_layers_per_virtual_pipeline_stage=None,
        context_parallel_size=s.get("context_parallel_size") or 1,
        expert_model_parallel_size=1,
        world_size=world_size,
        data_parallel_size=data_parallel_size,
        use_distributed_optimizer=bool(s.get("use_distributed_optimizer")),
        ckpt_format=CKPT_FORMAT,
        # training position (Megatron-LM counts data in samples, like megarec)
        seq_length=s.get("seq_length"),
        micro_batch_size=s.get("micro_batch_size"),
        global_batch_size=s.get("global_batch_size"),
        train_iters=s.get("train_iters"),
        consumed_train_samples=int(consumed_samples),
        skipped_train_samples=0,
        consumed_valid_samples=0,
        no_save_optim=not saved_optimizer,
        no_save_rng=not saved_rng,
    )


# OptimizerParamScheduler fields that count steps: megarec steps the scheduler once per iteration,
# Megatron-LM once per iteration by the global batch size (it counts samples).
SCHEDULER_STEP_FIELDS = ("num_steps", "lr_warmup_steps", "lr_decay_steps", "wd_incr_steps")


def scheduler_state_in_samples(state: dict, global_batch_size: int) -> dict:
    """megarec's OptimizerParamScheduler state (steps = iterations) in Megatron-LM's units (samples)."""
    if global_batch_size < 1:
        raise ConfigError(f"global_batch_size must be >= 1, got {global_batch_size}")
    missing = [k for k in SCHEDULER_STEP_FIELDS if k not in state]
    if missing:
        raise ConfigError(f"internal: scheduler state lacks {missing[0]}")
    return {**state, **{k: state[k] * global_batch_size for k in SCHEDULER_STEP_FIELDS}}


def common_state_fields(
    chunks: list,
    padded_vocab_size: int,
    consumed_samples: int,
    optimizer_saved: bool,
    scheduler_state: Optional[dict],
    rng_data: Any,
    extra: Optional[dict],
    vp: Optional[int],
) -> dict:
    """The keys save_checkpoint adds to the common state for Megatron-LM (needs Megatron's groups):
    checkpoint_version, args, and opt_param_scheduler when the run's global batch size is known."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    settings = run_settings(extra)
    args = checkpoint_args(
        chunks[0],
        padded_vocab_size=padded_vocab_size,
        tp=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        vp=vp,
        world_size=dist.get_world_size(),
        data_parallel_size=ps.get_data_parallel_world_size(),
        consumed_samples=consumed_samples,
        saved_optimizer=optimizer_saved,
        saved_rng=rng_state_readable(rng_data),
        settings=settings,
    )
    fields = {"checkpoint_version": CHECKPOINT_VERSION, "args": args}
    if scheduler_state and settings["global_batch_size"]:
        fields["opt_param_scheduler"] = scheduler_state_in_samples(scheduler_state, settings["global_batch_size"])
    return fields


# ---------------------------------------------------------------- Megatron-LM checkpoints in megarec


def is_megatron_lm_checkpoint(common: dict) -> bool:
    """A checkpoint Megatron-LM wrote (its args, none of megarec's own bookkeeping)."""
    return "args" in common and "format_version" not in common


def padded_vocab_size(common: dict) -> Optional[int]:
    """Padded vocabulary of a megarec or Megatron-LM checkpoint's common state (None if it does not say)."""
    value = common.get("padded_vocab_size")
    if value is None:
        value = getattr(common.get("args"), "padded_vocab_size", None)
    return int(value) if value is not None else None


def refuse_resume(common: dict, path: str) -> None:
    """One-line refusal to resume a megarec run from a Megatron-LM checkpoint (weights only)."""
    if is_megatron_lm_checkpoint(common):
        raise ConfigError(
            f"{path} is a Megatron-LM checkpoint: start from its weights with "
            "checkpoint.init_from=<it> (its optimizer, LR scheduler and data position do not carry "
            "over to megarec)"
        )


# ---------------------------------------------------------------- Megatron-LM command line


def _num(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def megatron_lm_flags(
    args: argparse.Namespace, scheduler: Optional[dict] = None, load: Optional[str] = None, mode: str = "weights"
) -> list[str]:
    """Megatron-LM (core_v0.16.1) flags for the model, vocabulary and checkpoint described by a checkpoint's
    `args`. mode="weights": --finetune (weights only, iteration 0). mode="resume": the iteration, consumed
    samples, optimizer and, given the checkpoint's opt_param_scheduler, the LR-schedule flags its values need."""
    if mode not in ("weights", "resume"):
        raise ConfigError(f"mode must be 'weights' or 'resume', got '{mode}'")
    a = args
    if a.position_embedding_type != "rope" or a.normalization != "RMSNorm" or not a.swiglu or a.add_bias_linear:
        raise ConfigError("these flags are for Qwen3-style checkpoints (RoPE, RMSNorm, SwiGLU, no biases)")
    flags = [
        "--num-layers",
        _num(a.num_layers),
        "--hidden-size",
        _num(a.hidden_size),
        "--ffn-hidden-size",
        _num(a.ffn_hidden_size),
        "--num-attention-heads",
        _num(a.num_attention_heads),
    ]
    if a.group_query_attention:
        flags += ["--group-query-attention", "--num-query-groups", _num(a.num_query_groups)]
    flags += ["--kv-channels", _num(a.kv_channels)]
    if a.qk_layernorm:
        flags.append("--qk-layernorm")
    flags += [
        "--normalization",
        a.normalization,
        "--norm-epsilon",
        _num(a.layernorm_epsilon),
        "--swiglu",
        "--disable-bias-linear",
        "--position-embedding-type",
        "rope",
        "--rotary-base",
        _num(a.rotary_base),
    ]
    if a.rotary_percent != 1.0:
        flags += ["--rotary-percent", _num(a.rotary_percent)]
    if a.untie_embeddings_and_output_weights:
        flags.append("--untie-embeddings-and-output-weights")
    flags += [
        "--max-position-embeddings",
        _num(a.max_position_embeddings),
        "--attention-dropout",
        _num(a.attention_dropout),
        "--hidden-dropout",
        _num(a.hidden_dropout),
    ]
    if a.make_vocab_size_divisible_by:
        flags += ["--make-vocab-size-divisible-by", _num(a.make_vocab_size_divisible_by)]
    flags += ["--padded-vocab-size", _num(a.padded_vocab_size)]
    if a.tokenizer_model:
        flags += ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", a.tokenizer_model]
    if a.bf16:
        flags.append("--bf16")
    flags += ["--ckpt-format", CKPT_FORMAT]
    if load:
        flags += ["--load", load]
    if mode == "weights":
        return flags + ["--finetune"]
    for name in ("seq_length", "micro_batch_size", "global_batch_size"):
        if getattr(a, name, None):
            flags += ["--" + name.replace("_", "-"), _num(getattr(a, name))]
    if a.use_distributed_optimizer:
        flags.append("--use-distributed-optimizer")
    if a.no_save_optim:
        flags.append("--no-load-optim")
    elif scheduler:
        gbs = a.global_batch_size
        if not gbs:
            raise ConfigError("the checkpoint args have no global_batch_size to convert the LR schedule with")
        flags += [
            "--train-iters",
            _num(scheduler["lr_decay_steps"] // gbs),
            "--lr-warmup-iters",
            _num(scheduler["lr_warmup_steps"] // gbs),
            "--lr",
            _num(scheduler["max_lr"]),
            "--min-lr",
            _num(scheduler["min_lr"]),
            "--lr-decay-style",
            scheduler["lr_decay_style"],
            "--weight-decay",
            _num(scheduler["start_wd"]),
            "--weight-decay-incr-style",
            scheduler["wd_incr_style"],
        ]
    return flags
