"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for HF causal LMs: every decoder layer is one shard group
and the root holds embeddings, final norm and (tied or not) output layer. Works with NCCL and with gloo
on CPU. For generation the whole model is gathered once and kept gathered (no collective per token, so
ranks may generate different numbers of tokens), then sharded again for training."""

from __future__ import annotations

import torch
import torch.nn as nn


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks named by the HF model's `_no_split_modules` (Qwen3DecoderLayer, …)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:  # fall back to the usual `model.layers` container
        inner = getattr(model, "model", None)
        layers = list(getattr(inner, "layers", []))
    return layers


def shard(
    model: nn.Module, *, reshard_after_forward: bool, compute_dtype: torch.dtype, params_dtype: torch.dtype
) -> nn.Module:
    """Apply fully_shard in place (layers first, then the root). With bf16 compute and fp32 parameters,
    FSDP casts the gathered parameters to bf16 and reduces gradients in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy()
    if compute_dtype != params_dtype:
        mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=reshard_after_forward, mp_policy=mp)
    fully_shard(model, reshard_after_forward=reshard_after_forward, mp_policy=mp)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _fsdp_modules(model: nn.Module):
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def gather_for_inference(model: nn.Module) -> None:
    """All-gather every shard group once and keep the full parameters until `release_after_inference`."""
    for m in _fsdp_modules(model):
        m.set_reshard_after_forward(False)
    for m in _fsdp_modules(model):
        m.unshard()


def release_after_inference(model: nn.Module, reshard_after_forward: bool) -> None:
    for m in _fsdp_modules(model):
        m.reshard()
        m.set_reshard_after_forward(reshard_after_forward)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Skip the reduce-scatter on all but the last micro-batch of an accumulation (FSDP only)."""
    if is_sharded(model):
        model.set_requires_gradient_sync(enabled)


def full_state_dict(model: nn.Module) -> dict:
    """Full CPU state dict on rank 0 (empty elsewhere); collective for sharded models."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer) -> dict:
    """Optimizer state keyed by parameter names, unsharded, on rank 0 (collective when sharded)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    """Inverse of `full_optimizer_state`; rank 0's copy is broadcast, so other ranks may pass {}."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    sharded = is_sharded(model)
    set_optimizer_state_dict(
        model,
        optimizer,
        optim_state_dict=state,
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=sharded),
    )
