"""The GPU the doctor runs on, and the pure rules that depend on it.

`probe()` describes the visible CUDA devices from a subprocess (`python -m megarec.doctor.device`), so the
doctor process itself never creates a CUDA context or imports Transformer Engine: on GPUs in exclusive-process
mode a context held by the parent would lock its own children out. Everything else here is a pure function of
a `DeviceInfo`, which is how the tests exercise the skip rules without a GPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional

from megarec.common.errors import MegarecError

FP8_MIN_CAPABILITY = (8, 9)  # Ada (8.9) and Hopper (9.0) onwards have FP8 tensor cores
MFU_FLOOR = 0.15  # lowest acceptable MFU on a GPU whose peak is known (see GPU_TABLE)


@dataclass(frozen=True)
class GpuSpec:
    """Dense (no sparsity) per-GPU peaks the MFU is measured against, and the MFU floor applied there."""

    label: str
    bf16_tflops: float
    fp8_tflops: Optional[float]
    mfu_floor: float = MFU_FLOOR


# Matched in order against the lower-cased torch.cuda.get_device_name(); dense peaks from NVIDIA's datasheets
# (half of the "with sparsity" figures).
GPU_TABLE: tuple[tuple[str, GpuSpec], ...] = (
    (r"h100.*pcie", GpuSpec("H100 PCIe", 756.0, 1513.0)),
    (r"h800.*pcie", GpuSpec("H800 PCIe", 756.0, 1513.0)),
    (r"h[12]00.*nvl", GpuSpec("H100/H200 NVL", 835.0, 1671.0)),
    (r"gh200", GpuSpec("GH200", 989.0, 1979.0)),
    (r"h100|h200|h800", GpuSpec("H100/H200 SXM", 989.0, 1979.0)),
    (r"a100", GpuSpec("A100", 312.0, None)),
)


@dataclass(frozen=True)
class DeviceInfo:
    """What the checks need to know about the node: the first visible GPU and how many there are."""

    name: str
    capability: tuple[int, int]
    total_memory_gib: float
    count: int
    torch_version: str = ""
    cuda_version: Optional[str] = None
    te_version: Optional[str] = None
    te_error: Optional[str] = None  # why transformer_engine.pytorch does not import (None = it does)
    te_fp8: Optional[tuple[bool, str]] = None  # Transformer Engine's own FP8 verdict, when it could say
    visible: list[str] = field(default_factory=list)  # device ids to hand to CUDA_VISIBLE_DEVICES

    def as_dict(self) -> dict:
        d = asdict(self)
        d["capability"] = f"{self.capability[0]}.{self.capability[1]}"
        spec = gpu_spec(self.name)
        d["peak_table_entry"] = spec.label if spec else None
        return d


def gpu_spec(name: str) -> Optional[GpuSpec]:
    low = name.lower()
    for pattern, spec in GPU_TABLE:
        if re.search(pattern, low):
            return spec
    return None


def peak_tflops(dev: DeviceInfo, override: Optional[float] = None) -> tuple[Optional[float], str]:
    """(dense bf16 peak, where it came from): --peak-tflops, else the GPU table, else unknown (None)."""
    if override is not None:
        return override, "--peak-tflops"
    spec = gpu_spec(dev.name)
    if spec is not None:
        return spec.bf16_tflops, f"table ({spec.label})"
    return None, "unknown GPU"


def mfu_floor(dev: DeviceInfo, peak_override: Optional[float] = None) -> Optional[float]:
    """The MFU floor, or None when the peak is unknown: an MFU against a guessed peak says nothing."""
    spec = gpu_spec(dev.name)
    if spec is not None:
        return spec.mfu_floor
    return MFU_FLOOR if peak_override is not None else None


def te_missing_reason(dev: DeviceInfo) -> Optional[str]:
    if dev.te_error is None:
        return None
    return f"Transformer Engine does not import ({dev.te_error}); install it with pip install -e '.[gpu]'"


def fp8_skip_reason(dev: DeviceInfo) -> Optional[str]:
    """Why FP8 cannot run here (None = it can): compute capability below 8.9, or Transformer Engine's own
    check says no (e.g. an Ada GPU with too old a CUDA / cuBLASLt)."""
    if tuple(dev.capability) < FP8_MIN_CAPABILITY:
        return (
            f"{dev.name} has compute capability {dev.capability[0]}.{dev.capability[1]} < "
            f"{FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]}: no FP8 tensor cores"
        )
    if dev.te_fp8 is not None and not dev.te_fp8[0]:
        return f"Transformer Engine reports no FP8 support: {dev.te_fp8[1] or 'no reason given'}"
    return None


def multi_gpu_skip_reason(dev: DeviceInfo, needed: int = 2) -> Optional[str]:
    if dev.count < needed:
        return f"needs {needed} GPUs, {dev.count} visible"
    return None


def fits(estimate_bytes: float, dev: DeviceInfo, fraction: float) -> bool:
    """Whether an estimated footprint stays within `fraction` of the GPU's memory."""
    return estimate_bytes <= fraction * dev.total_memory_gib * (1 << 30)


def visible_devices(count: int, environ: Optional[dict] = None) -> list[str]:
    """The device ids CUDA shows this process, as CUDA_VISIBLE_DEVICES entries (so a run on "the first GPU"
    stays on the GPU the caller was given)."""
    env = os.environ if environ is None else environ
    given = env.get("CUDA_VISIBLE_DEVICES")
    if given is not None and given.strip():
        return [d.strip() for d in given.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


def cuda_available() -> bool:
    """torch.cuda.is_available(), which creates no CUDA context."""
    import torch

    return torch.cuda.is_available()


def no_cuda_message() -> str:
    import torch

    built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (
        f"no CUDA device visible (torch {torch.__version__}, {built}); run `megarec doctor gpu` on a GPU "
        "node with the cluster's CUDA torch and Transformer Engine (pip install -e '.[gpu]')"
    )


def _describe_here() -> dict:
    """Runs in the probe subprocess: device properties, TE import and TE's FP8 verdict."""
    import torch

    props = torch.cuda.get_device_properties(0)
    info = {
        "name": torch.cuda.get_device_name(0),
        "capability": [props.major, props.minor],
        "total_memory_gib": props.total_memory / (1 << 30),
        "count": torch.cuda.device_count(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "te_version": None,
        "te_error": None,
        "te_fp8": None,
    }
    try:
        import transformer_engine
        import transformer_engine.pytorch  # noqa: F401

        info["te_version"] = getattr(transformer_engine, "__version__", "unknown")
    except Exception as e:  # any import failure means the TE checks cannot run
        info["te_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        return info
    info["te_fp8"] = _te_fp8_verdict()
    return info


def _te_fp8_verdict() -> Optional[list]:
    """Transformer Engine's check_fp8_support() -> (bool, reason), where this TE version has it."""
    try:
        from transformer_engine.pytorch import fp8 as te_fp8

        ok, reason = te_fp8.check_fp8_support()
        return [bool(ok), str(reason)]
    except Exception:
        return None


def parse_probe(payload: dict, environ: Optional[dict] = None) -> DeviceInfo:
    te_fp8 = payload.get("te_fp8")
    count = int(payload["count"])
    return DeviceInfo(
        name=payload["name"],
        capability=tuple(payload["capability"]),
        total_memory_gib=float(payload["total_memory_gib"]),
        count=count,
        torch_version=payload.get("torch_version", ""),
        cuda_version=payload.get("cuda_version"),
        te_version=payload.get("te_version"),
        te_error=payload.get("te_error"),
        te_fp8=tuple(te_fp8) if te_fp8 else None,
        visible=visible_devices(count, environ),
    )


def probe(timeout: float = 180.0) -> DeviceInfo:
    """Describe the GPUs from a subprocess (see the module docstring)."""
    cmd = [sys.executable, "-m", "megarec.doctor.device"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MegarecError(f"the device probe ({' '.join(cmd[1:])}) did not finish in {timeout:.0f}s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
        raise MegarecError(f"the device probe failed (exit {proc.returncode}): {tail or 'no output'}")
    return parse_probe(json.loads(lines[-1]))


if __name__ == "__main__":
    print(json.dumps(_describe_here()), flush=True)
