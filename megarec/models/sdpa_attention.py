"""Core attention for the local (non Transformer Engine) layer spec through PyTorch's fused
`scaled_dot_product_attention`: flash / memory-efficient kernels on CPU and on GPUs without TE,
grouped-query attention without repeating KV heads, and no materialised causal mask.

Drop-in for megatron.core's DotProductAttention: same constructor and forward signature,
query [sq, b, heads, d], key/value [sk, b, groups, d] → output [sq, b, heads × d]. A boolean
`attention_mask` (Megatron convention, True = masked) is honoured for per-document masking;
without one, attention is causal.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.module import MegatronModule


class SDPACoreAttention(MegatronModule):
    def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str,
                 attention_dropout: Optional[float] = None, softmax_scale: Optional[float] = None,
                 cp_comm_type: Optional[str] = None, pg_collection=None):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPACoreAttention does not support context parallelism; use the TE spec")
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.current_max_attn_logits = None

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPACoreAttention supports neither packed_seq_params nor attention_bias")
        sq, b, heads, d = query.shape
        q = query.permute(1, 2, 0, 3)
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        mask = None
        if attention_mask is not None:
            mask = ~attention_mask.to(torch.bool)  # SDPA: True = may attend
        dropout = self.dropout_p if self.training else 0.0
        kwargs = dict(attn_mask=mask, dropout_p=dropout, is_causal=mask is None, scale=self.softmax_scale,
                      enable_gqa=k.shape[1] != heads)
        if dropout > 0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        else:
            out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        return out.permute(2, 0, 1, 3).reshape(sq, b, heads * d)
