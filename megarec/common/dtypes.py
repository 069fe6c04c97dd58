"""The one table of dtype names: what configs and flags accept (`auto`, `fp32`, `bf16`), what HF
`config.json` and safetensors headers write (`float32`, `bfloat16`, `F32`, ...), and the `auto` rule."""

from __future__ import annotations

from typing import Optional

import torch

from megarec.common.cli import DTYPE_CHOICES
from megarec.common.errors import ConfigError

# Names users write in configs and flags.
CONFIG_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Names HF config.json uses (dtype / torch_dtype), and their inverse.
HF_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
    torch.float64: "float64",
}
HF_NAME_DTYPES = {name: dtype for dtype, name in HF_DTYPE_NAMES.items()}
# Element types in safetensors headers.
SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def resolve_dtype(name: str, on_gpu: Optional[bool] = None) -> torch.dtype:
    """auto → bf16 with CUDA (fp32 master weights kept by the optimizer), fp32 on CPU; fp32 / bf16 as named."""
    if name == "auto":
        on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
        return torch.bfloat16 if on_gpu else torch.float32
    try:
        return CONFIG_DTYPES[name]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}: choose from {', '.join(DTYPE_CHOICES)}") from None


def dtype_from_name(name: str) -> torch.dtype:
    """A config name (fp32, bf16) or an HF name (float32, bfloat16, float16)."""
    dtype = CONFIG_DTYPES.get(name) or HF_NAME_DTYPES.get(name)
    if dtype is None:
        raise ConfigError(f"unknown dtype {name!r}: choose from {', '.join([*CONFIG_DTYPES, *HF_NAME_DTYPES])}")
    return dtype
