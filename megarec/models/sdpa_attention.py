"""Core attention for the local (non Transformer Engine) layer spec through PyTorch's fused
`scaled_dot_product_attention`: flash / memory-efficient kernels on CPU and on GPUs without TE,
grouped-query attention without repeating KV heads, and no materialised causal mask.

Drop-in for megatron.core's DotProductAttention: same constructor and forward signature,
query [sq, b, heads, d], key/value [sk, b, groups, d] → output [sq, b, heads × d]. A boolean
`attention_mask` (Megatron convention, True = masked) is honoured for per-document masking;
without one, attention is causal.

Context parallelism: Transformer Engine's ring attention is the production path. Without TE this
module gathers K and V over the context-parallel group (an "all-gather" CP, as TE's `cp_comm_type=
"all_gather"` does) and masks causally by global position. Each CP rank holds Megatron's
load-balanced pair of sequence chunks (r, 2·CP−1−r) — the slice `get_batch_on_this_cp_rank` makes —
so the local queries sit at two separate ranges of global positions.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.module import MegatronModule


def cp_global_positions(local_len: int, cp_size: int, cp_rank: int) -> torch.Tensor:
    """Global sequence positions of the `local_len` tokens CP rank `cp_rank` holds (chunks r and 2·CP−1−r)."""
    chunk = local_len // 2
    first = torch.arange(cp_rank * chunk, (cp_rank + 1) * chunk)
    second_start = (2 * cp_size - cp_rank - 1) * chunk
    return torch.cat([first, torch.arange(second_start, second_start + chunk)])


@lru_cache(maxsize=8)
def _gathered_to_global_order(local_len: int, cp_size: int) -> torch.Tensor:
    """Index that reorders [rank0 tokens, rank1 tokens, ...] (all-gather order) into global order."""
    positions = torch.cat([cp_global_positions(local_len, cp_size, r) for r in range(cp_size)])
    return torch.argsort(positions)


class _GatherSequence(torch.autograd.Function):
    """All-gather along dim 0 over a process group; the backward sums the gradients of every rank's
    copy and keeps this rank's slice (all-reduce + slice: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        n = grad.shape[0] // dist.get_world_size(ctx.group)
        rank = dist.get_rank(ctx.group)
        return grad[rank * n : (rank + 1) * n], None


class SDPACoreAttention(MegatronModule):
    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.current_max_attn_logits = None
        self.cp_size = config.context_parallel_size

    def _gather_context(self, key, value, attention_mask):
        """K/V of the whole sequence in global order, and the boolean mask (True = may attend) of the
        local queries against it."""
        group = parallel_state.get_context_parallel_group()
        cp_rank = parallel_state.get_context_parallel_rank()
        local_len = key.shape[0]
        order = _gathered_to_global_order(local_len, self.cp_size).to(key.device)
        key = _GatherSequence.apply(key, group).index_select(0, order)
        value = _GatherSequence.apply(value, group).index_select(0, order)
        if attention_mask is not None:  # rows already sliced per CP rank, columns global
            return key, value, ~attention_mask.to(torch.bool)
        q_pos = cp_global_positions(local_len, self.cp_size, cp_rank).to(key.device)
        k_pos = torch.arange(key.shape[0], device=key.device)
        return key, value, (k_pos[None, :] <= q_pos[:, None])[None, None]

    def forward(
        self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None, packed_seq_params=None
    ):
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPACoreAttention supports neither packed_seq_params nor attention_bias")
        sq, b, heads, d = query.shape
        mask = None
        if self.cp_size > 1:
            key, value, mask = self._gather_context(key, value, attention_mask)
        elif attention_mask is not None:
            mask = ~attention_mask.to(torch.bool)  # SDPA: True = may attend
        q = query.permute(1, 2, 0, 3)
        k = key.permute(1, 2, 0, 3)
        v = value.permute(1, 2, 0, 3)
        dropout = self.dropout_p if self.training else 0.0
        kwargs = dict(
            attn_mask=mask,
            dropout_p=dropout,
            is_causal=mask is None,
            scale=self.softmax_scale,
            enable_gqa=k.shape[1] != heads,
        )
        if dropout > 0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        else:
            out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        return out.permute(2, 0, 1, 3).reshape(sq, b, heads * d)
