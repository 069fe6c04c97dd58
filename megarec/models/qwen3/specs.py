"""Choice of Megatron-Core layer spec: Transformer Engine (fused kernels, FP8, sequence/context
parallel) when TE imports and CUDA is present, otherwise the portable local spec."""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import torch

from megarec.common.errors import ConfigError


@lru_cache(maxsize=1)
def transformer_engine_available() -> bool:
    """True only when CUDA is present and transformer_engine.pytorch imports. TE is never imported
    without CUDA: a half-installed TE can break the import of megatron.core itself."""
    if not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def resolve_transformer_impl(requested: str, te_available: bool | None = None) -> str:
    """'auto' | 'local' | 'transformer_engine' → the implementation to use (or a clear error)."""
    te = transformer_engine_available() if te_available is None else te_available
    if requested == "auto":
        return "transformer_engine" if te else "local"
    if requested == "transformer_engine" and not te:
        raise ConfigError(
            "model.transformer_impl=transformer_engine needs CUDA and an importable "
            "transformer_engine (pip install 'megarec[gpu]'); use local or auto here"
        )
    if requested not in ("local", "transformer_engine"):
        raise ConfigError(f"unknown transformer_impl '{requested}'")
    return requested


def get_layer_spec(impl: str, local_attention: str = "sdpa"):
    """Layer spec for `impl`; the local spec's core attention is PyTorch SDPA unless
    local_attention="unfused" (Megatron's DotProductAttention with an explicit mask)."""
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if impl == "transformer_engine":
        return specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    spec = specs.get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    if local_attention == "sdpa":
        from megarec.models.sdpa_attention import SDPACoreAttention

        spec.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    elif local_attention != "unfused":
        raise ConfigError(f"unknown model.local_attention '{local_attention}' (sdpa or unfused)")
    return spec


def needs_explicit_causal_mask(impl: str, local_attention: str) -> bool:
    """Megatron's unfused attention builds its default causal mask on "cuda"; pass one on CPU."""
    return impl == "local" and local_attention == "unfused" and not torch.cuda.is_available()
