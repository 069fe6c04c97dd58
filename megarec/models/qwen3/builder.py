"""Qwen3 on Megatron-Core: architecture resolution, layout validation, TransformerConfig and the
GPTModel chunks of this pipeline rank."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import torch
import torch.nn.functional as F

from megarec.common.dtypes import resolve_dtype
from megarec.common.errors import ConfigError
from megarec.models.config import ModelConfig
from megarec.models.qwen3.hf_config import arch_from_hf_config
from megarec.models.qwen3.presets import Qwen3Arch, get_preset
from megarec.models.qwen3.specs import get_layer_spec, resolve_transformer_impl
from megarec.runtime.config import ParallelConfig


def resolve_arch(cfg: ModelConfig) -> Qwen3Arch:
    """Preset or HF config.json, then explicit overrides."""
    arch = arch_from_hf_config(cfg.hf_config) if cfg.hf_config else get_preset(cfg.preset)
    return arch.replace(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        head_dim=cfg.head_dim,
        vocab_size=cfg.vocab_size,
        tie_word_embeddings=cfg.tie_word_embeddings,
        rope_theta=cfg.rope_theta,
    )


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Megatron's rule: round up to a multiple of make_vocab_size_divisible_by × TP."""
    multiple = divisible_by * tp
    return int(math.ceil(vocab_size / multiple) * multiple)


def validate_layout(
    arch: Qwen3Arch,
    parallel: ParallelConfig,
    impl: str,
    world_size: int | None = None,
    fp8: str | None = None,
    local_attention: str = "sdpa",
) -> None:
    """Reject layouts Megatron-Core cannot run, with one clear sentence each."""
    arch.check()
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    vp, cp = parallel.virtual_pipeline_model_parallel_size, parallel.context_parallel_size
    for name, value in [
        ("tensor_model_parallel_size", tp),
        ("pipeline_model_parallel_size", pp),
        ("context_parallel_size", cp),
        ("distributed_timeout_minutes", parallel.distributed_timeout_minutes),
    ]:
        if value < 1:
            raise ConfigError(f"parallel.{name} must be >= 1, got {value}")
    if arch.num_attention_heads % tp:
        raise ConfigError(
            f"num_attention_heads={arch.num_attention_heads} is not divisible by tensor_model_parallel_size={tp}"
        )
    if arch.num_query_groups % tp:
        raise ConfigError(
            f"num_query_groups (KV heads)={arch.num_query_groups} is not divisible by tensor_model_parallel_size={tp}"
        )
    if arch.ffn_hidden_size % tp:
        raise ConfigError(f"ffn_hidden_size={arch.ffn_hidden_size} is not divisible by TP={tp}")
    chunks = pp * (vp or 1)
    if arch.num_layers % chunks:
        raise ConfigError(
            f"num_layers={arch.num_layers} is not divisible by pipeline stages × virtual chunks = {pp}×{vp or 1}"
        )
    if vp and pp < 2:
        raise ConfigError("virtual_pipeline_model_parallel_size needs pipeline_model_parallel_size > 1")
    if parallel.sequence_parallel and impl != "transformer_engine":
        raise ConfigError(
            "sequence_parallel needs the Transformer Engine layer spec (CUDA + "
            "transformer_engine); the local spec does not support it"
        )
    if parallel.sequence_parallel and tp < 2:
        raise ConfigError("sequence_parallel needs tensor_model_parallel_size > 1")
    if cp > 1 and impl != "transformer_engine" and local_attention != "sdpa":
        raise ConfigError(
            "context_parallel_size > 1 needs the Transformer Engine layer spec (ring attention) "
            "or model.local_attention=sdpa (all-gather attention, the fallback without TE)"
        )
    if fp8 and impl != "transformer_engine":
        raise ConfigError("model.fp8 needs the Transformer Engine layer spec on a CUDA GPU")
    if world_size is not None and world_size % parallel.model_parallel_size:
        raise ConfigError(f"world size {world_size} is not divisible by TP×PP×CP = {tp}×{pp}×{cp}")


def fused_wgrad_kernel_available() -> bool:
    """apex's fused weight-gradient GEMM (`fused_weight_gradient_mlp_cuda`), not installed by `.[gpu]`."""
    return importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None


def transformer_config_kwargs(
    arch: Qwen3Arch, model: ModelConfig, parallel: ParallelConfig, impl: str, on_gpu: bool | None = None
) -> dict[str, Any]:
    """Keyword arguments for megatron.core TransformerConfig (kept separate so the GPU/FP8 plumbing
    can be checked without constructing GPU-only objects)."""
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    dtype = resolve_dtype(model.dtype, on_gpu)
    fused = on_gpu and impl == "transformer_engine"
    kwargs: dict[str, Any] = dict(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_norm_eps,
        qk_layernorm=True,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=model.hidden_dropout,
        attention_dropout=model.attention_dropout,
        init_method_std=model.init_method_std,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        # Loss is a sum over tokens; gradients are divided by the global token count in
        # finalize_model_grads (all micro-batches, all DP ranks), not averaged per rank.
        calculate_per_token_loss=True,
        use_cpu_initialization=not on_gpu,
        bias_activation_fusion=fused,
        bias_dropout_fusion=fused,
        masked_softmax_fusion=fused,
        apply_rope_fusion=fused,
        persist_layer_norm=fused,
        # TE's linears fuse the weight-gradient accumulation themselves, but the output layer is Megatron's
        # own ColumnParallelLinear, which needs apex's fused_weight_gradient_mlp_cuda kernel for it.
        gradient_accumulation_fusion=fused and fused_wgrad_kernel_available(),
        # gloo cannot run batched isend/irecv reliably for the interleaved schedule.
        batch_p2p_comm=on_gpu,
        # Megatron-Core's default ("full") is deprecated and warns on every run; [] is the same whole-layer scope.
        cuda_graph_scope=[],
    )
    if model.recompute_activations:
        kwargs.update(recompute_granularity="selective")
    if model.fp8:
        kwargs.update(
            fp8=model.fp8,
            fp8_recipe="delayed",
            fp8_margin=0,
            fp8_amax_history_len=model.fp8_amax_history_len,
            fp8_amax_compute_algo=model.fp8_amax_compute_algo,
        )
    return kwargs


def build_transformer_config(arch: Qwen3Arch, model: ModelConfig, parallel: ParallelConfig, impl: str):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(**transformer_config_kwargs(arch, model, parallel, impl))


def build_model_chunks(
    arch: Qwen3Arch, tconfig, impl: str, vocab_size_padded: int, seq_length: int, local_attention: str = "sdpa"
) -> list:
    """GPTModel chunk(s) held by this pipeline rank (one per virtual stage)."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel

    spec = get_layer_spec(impl, local_attention)
    vp = tconfig.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vp or 1):
        stage_kw = {"vp_stage": vp_stage} if vp else {}
        model = GPTModel(
            config=tconfig,
            transformer_layer_spec=spec,
            vocab_size=vocab_size_padded,
            max_sequence_length=max(seq_length, arch.max_position_embeddings),
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, **stage_kw),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, **stage_kw),
            share_embeddings_and_output_weights=arch.tie_word_embeddings,
            position_embedding_type="rope",
            rotary_base=int(arch.rope_theta),
            parallel_output=True,
            **stage_kw,
        )
        _cast_parameters(model, tconfig.params_dtype)
        chunks.append(model)
    return chunks


def _cast_parameters(model, dtype: torch.dtype) -> None:
    """Every parameter in the model's dtype, as Megatron-LM's Float16Module leaves a bf16 model. The local
    spec's torch-norm fallback (no apex) creates fp32 norm weights whatever params_dtype says; the mixed
    precision optimizer would then track them apart and cannot checkpoint them."""
    for param in model.parameters():
        if param.dtype != dtype and param.is_floating_point():
            param.data = param.data.to(dtype)


def setup(model_cfg: ModelConfig, parallel: ParallelConfig, world_size: int | None = None):
    """Resolve (arch, impl) and validate the layout before any process group exists."""
    arch = resolve_arch(model_cfg)
    impl = resolve_transformer_impl(model_cfg.transformer_impl)
    validate_layout(arch, parallel, impl, world_size, model_cfg.fp8, model_cfg.local_attention)
    return arch, impl
