"""Model FLOPs of Qwen3 training, counted as Megatron-LM counts them (for throughput and MFU)."""

from __future__ import annotations

from megarec.models.qwen3.presets import Qwen3Arch


def flops_per_token(arch: Qwen3Arch, seq_length: int, padded_vocab: int) -> float:
    """Training FLOPs per token as Megatron-LM counts them (`num_floating_point_operations`): forward +
    backward = 3 × forward, 2 FLOPs per multiply-add; per layer the QKV, output and SwiGLU projections and
    causal attention, whose QK^T and PV products cover half of the S×S scores on average; plus the logits."""
    h, layers, d = arch.hidden_size, arch.num_layers, arch.head_dim
    q, kv, f = arch.num_attention_heads, arch.num_query_groups, arch.ffn_hidden_size
    projections = h * (q + 2 * kv) * d + q * d * h + 3 * h * f
    causal_attention = 2 * (q * d) * seq_length / 2  # QK^T and PV, half the scores under the causal mask
    return 3 * 2 * (layers * (projections + causal_attention) + h * padded_vocab)
