"""Config sections that describe the model and its parallel layout (shared by training and conversion)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from megarec.common.config import help_field


@dataclass
class ModelConfig:
    preset: str = help_field(
        "qwen3-tiny",
        "Architecture preset: qwen3-0.6b|1.7b|4b|8b|14b, or CPU presets "
        "qwen3-tiny|qwen3-tiny-tied|qwen3-small. Ignored when hf_config is set.",
    )
    hf_config: Optional[str] = help_field(
        None,
        "HF config.json (or checkpoint dir) to read the architecture "
        "from; every value (RoPE theta, context, vocab) is taken from it.",
    )
    num_layers: Optional[int] = help_field(None, "Override the number of decoder layers.")
    hidden_size: Optional[int] = help_field(None, "Override the hidden size.")
    ffn_hidden_size: Optional[int] = help_field(None, "Override the SwiGLU intermediate size.")
    num_attention_heads: Optional[int] = help_field(None, "Override the number of query heads.")
    num_query_groups: Optional[int] = help_field(None, "Override the number of KV heads (query groups).")
    head_dim: Optional[int] = help_field(
        None,
        "Override the head dimension (kv_channels); Qwen3-4B has "
        "head_dim != hidden/heads, so it is always set explicitly.",
    )
    vocab_size: Optional[int] = help_field(
        None, "Override the (unpadded) vocabulary size, e.g. after itemic vocabulary expansion."
    )
    tie_word_embeddings: Optional[bool] = help_field(
        None, "Override tied input/output embeddings (Qwen3 <= 4B tie them)."
    )
    rope_theta: Optional[float] = help_field(None, "Override the RoPE base.")
    make_vocab_size_divisible_by: int = help_field(128, "Pad the vocabulary to a multiple of this times TP.")
    dtype: Literal["auto", "fp32", "bf16"] = help_field(
        "auto", "Parameter/compute dtype: auto = bf16 with CUDA, fp32 on CPU."
    )
    transformer_impl: Literal["auto", "local", "transformer_engine"] = help_field(
        "auto", "Layer spec: transformer_engine when TE imports and CUDA is present (auto), else local."
    )
    local_attention: Literal["sdpa", "unfused"] = help_field(
        "sdpa",
        "Core attention of the local spec: PyTorch fused SDPA (flash/efficient kernels, GQA without "
        "repeating KV) or Megatron's unfused DotProductAttention.",
    )
    fp8: Optional[Literal["hybrid", "e4m3"]] = help_field(
        None, "FP8 format (needs Transformer Engine on Hopper or newer); hybrid = E4M3 fwd / E5M2 bwd."
    )
    fp8_amax_history_len: int = help_field(1024, "FP8 delayed-scaling amax history length.")
    fp8_amax_compute_algo: Literal["max", "most_recent"] = help_field("max", "FP8 amax reduction over history.")
    init_method_std: float = help_field(0.02, "Std of the normal weight initialisation.")
    hidden_dropout: float = help_field(
        0.0,
        "Dropout on each attention and MLP output before the residual add (Megatron's --hidden-dropout); "
        "Qwen3 pre-trains without it, a small model on a small corpus needs it against memorisation.",
    )
    attention_dropout: float = help_field(0.0, "Dropout on the attention probabilities (--attention-dropout).")
    recompute_activations: bool = help_field(False, "Selective activation recomputation (core attention).")
