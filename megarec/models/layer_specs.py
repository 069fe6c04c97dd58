"""Choice of Megatron-Core layer spec: Transformer Engine (fused kernels, FP8, sequence/context
parallel) when TE imports and CUDA is present, otherwise the portable local spec."""
from __future__ import annotations

import importlib.util
from functools import lru_cache

import torch

from megarec.errors import ConfigError


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
        raise ConfigError("model.transformer_impl=transformer_engine needs CUDA and an importable "
                          "transformer_engine (pip install 'megarec[gpu]'); use local or auto here")
    if requested not in ("local", "transformer_engine"):
        raise ConfigError(f"unknown transformer_impl '{requested}'")
    return requested


def get_layer_spec(impl: str):
    from megatron.core.models.gpt import gpt_layer_specs as specs

    if impl == "transformer_engine":
        return specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    return specs.get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
