"""One micro-batch as this rank feeds it to the model: device placement, the attention mask the layer
spec needs (or, for packed sequences under Transformer Engine, the THD layout), and the context-parallel
slice.

Context parallelism follows Megatron-LM's `pretrain_gpt.get_batch`: every CP rank of a data-parallel
replica reads the same samples, then keeps 2 of 2·CP sequence chunks (r and 2·CP−1−r, so causal
attention work is balanced) of tokens, labels, loss mask, position ids and the query rows of an explicit
attention mask alike — through Megatron-Core's own `get_batch_on_this_cp_rank`.
"""

from __future__ import annotations

from typing import Callable

import torch

from megarec.common.errors import ConfigError
from megarec.runtime.config import ParallelConfig

BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def seq_length_multiple(parallel: ParallelConfig) -> int:
    """Sequence lengths must split into 2·CP load-balanced chunks, each divisible by TP under sequence
    parallelism (its activations are split along the sequence over TP ranks)."""
    multiple = 2 * parallel.context_parallel_size if parallel.context_parallel_size > 1 else 1
    if parallel.sequence_parallel:
        multiple *= parallel.tensor_model_parallel_size
    return multiple


def check_seq_length(seq_length: int, parallel: ParallelConfig) -> None:
    multiple = seq_length_multiple(parallel)
    if seq_length % multiple:
        raise ConfigError(
            f"train.seq_length={seq_length} must be a multiple of {multiple} = 2 × context_parallel_size"
            f"{' × tensor_model_parallel_size (sequence_parallel)' if parallel.sequence_parallel else ''}"
            if parallel.context_parallel_size > 1
            else f"train.seq_length={seq_length} must be a multiple of tensor_model_parallel_size={multiple} "
            "with sequence_parallel"
        )


def causal_mask(seq_len: int) -> torch.Tensor:
    """[1, 1, s, s] boolean, Megatron convention: True = masked out."""
    return torch.triu(torch.ones(1, 1, seq_len, seq_len, dtype=torch.bool), diagonal=1)


def slice_for_context_parallel(batch: dict) -> dict:
    """This CP rank's share of every sequence tensor (a no-op at CP=1)."""
    from megatron.core import parallel_state as ps
    from megatron.core.utils import get_batch_on_this_cp_rank

    if ps.get_context_parallel_world_size() == 1:
        return batch
    return get_batch_on_this_cp_rank(dict(batch))


def to_thd(batch: dict) -> dict:
    """Packed sequences in Transformer Engine's THD layout, as Megatron-Core's packed-sequence path takes them:
    the [b, s] packs become one [1, b·s] token stream, and `PackedSeqParams` carries the start of every
    packed document (`cu_seqlens`, where the position ids restart at 0; the padding tail of a pack is one
    more segment, which carries no loss) and the longest one. TE's fused attention then keeps documents apart
    and RoPE restarts per document — no s×s mask is built."""
    from megatron.core.packed_seq_params import PackedSeqParams

    positions = batch["position_ids"]
    total = positions.numel()
    starts = torch.nonzero(positions.reshape(-1) == 0).reshape(-1)
    cu_seqlens = torch.cat([starts, starts.new_tensor([total])]).to(torch.int32)
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    out = {k: batch[k].reshape(1, total) for k in BATCH_KEYS}
    out["attention_mask"] = None
    out["packed_seq_params"] = PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu_seqlens,
        cu_seqlens_kv=cu_seqlens,
        cu_seqlens_q_padded=cu_seqlens,
        cu_seqlens_kv_padded=cu_seqlens,
        max_seqlen_q=max_seqlen,
        max_seqlen_kv=max_seqlen,
    )
    return out


def make_batch_preparer(device: torch.device, explicit_causal_mask: bool, thd: bool = False) -> Callable[[dict], dict]:
    """batch (from the DataLoader) → the tensors of this rank's forward pass, on `device`."""
    masks: dict[int, torch.Tensor] = {}

    def prepare(batch: dict) -> dict:
        out = {k: batch[k].to(device, non_blocking=True) for k in BATCH_KEYS}
        if thd:
            return to_thd(out)
        attention_mask = batch.get("attention_mask")
        if attention_mask is not None:
            attention_mask = attention_mask.to(device, non_blocking=True)
            if attention_mask.dim() == 3:
                attention_mask = attention_mask.unsqueeze(1)
        elif explicit_causal_mask:
            seq_len = out["tokens"].shape[1]
            if seq_len not in masks:
                masks[seq_len] = causal_mask(seq_len).to(device)
            attention_mask = masks[seq_len]
        out["attention_mask"] = attention_mask
        return slice_for_context_parallel(out)

    return prepare
