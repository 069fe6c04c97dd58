"""Hugging Face checkpoint directories: lazy weight reading, sharded safetensors writing, the
non-weight files (config, tokenizer, generation config, itemic.json). Output directories are written through
`megarec.common.outdir.staged_dir` (all or nothing)."""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Iterable, Optional

import torch

from megarec.common.dtypes import HF_NAME_DTYPES, SAFETENSORS_DTYPES
from megarec.common.errors import ConfigError

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
WEIGHT_INDEXES = (SAFE_INDEX, BIN_INDEX)


class HFWeights:
    """The tensors of an HF checkpoint directory, read one at a time (safetensors, sharded or not;
    or pytorch_model*.bin). Shapes and dtypes are known without reading the data for safetensors."""

    def __init__(self, hf_dir: str):
        self.dir = hf_dir
        self._file_of: dict[str, str] = {}
        self._bin_cache: dict[str, dict] = {}
        files = self._weight_files()
        self._safetensors = files[0].endswith(".safetensors")
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for path in files:
            if self._safetensors:
                from safetensors import safe_open

                try:
                    with safe_open(path, "pt") as f:
                        for name in f.keys():
                            sl = f.get_slice(name)
                            self._add(name, path)
                            self._meta[name] = (tuple(sl.get_shape()), SAFETENSORS_DTYPES.get(sl.get_dtype()))
                except Exception as e:  # safetensors raises its own error types
                    raise ConfigError(f"{path}: not a readable safetensors file ({e})") from None
            else:
                for name, t in self._load_bin(path).items():
                    self._add(name, path)
                    self._meta[name] = (tuple(t.shape), t.dtype)

    def _add(self, name: str, path: str) -> None:
        if name in self._file_of:
            raise ConfigError(f"tensor {name} appears in both {self._file_of[name]} and {path}")
        self._file_of[name] = path

    def _weight_files(self) -> list[str]:
        d = self.dir
        for index, single in ((SAFE_INDEX, "model.safetensors"), (BIN_INDEX, "pytorch_model.bin")):
            ipath = os.path.join(d, index)
            if os.path.isfile(ipath):
                try:
                    weight_map = json.load(open(ipath))["weight_map"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ConfigError(f"{ipath}: not a valid weight index ({e})") from None
                files = [os.path.join(d, f) for f in sorted(set(weight_map.values()))]
                missing = [f for f in files if not os.path.isfile(f)]
                if missing:
                    raise ConfigError(f"{ipath} names {missing[0]}, which does not exist")
                return files
            if os.path.isfile(os.path.join(d, single)):
                return [os.path.join(d, single)]
        raise ConfigError(f"{d}: no model.safetensors, {SAFE_INDEX}, pytorch_model.bin or {BIN_INDEX}")

    def _load_bin(self, path: str) -> dict:
        if path not in self._bin_cache:
            self._bin_cache[path] = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        return self._bin_cache[path]

    def names(self) -> list[str]:
        return list(self._file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def dtype(self, name: str) -> Optional[torch.dtype]:
        return self._meta[name][1]

    def get(self, name: str) -> torch.Tensor:
        if name not in self._file_of:
            raise ConfigError(f"{self.dir}: the checkpoint has no tensor {name}")
        path = self._file_of[name]
        if self._safetensors:
            from safetensors import safe_open

            with safe_open(path, "pt") as f:
                return f.get_tensor(name)
        return self._load_bin(path)[name]


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str) -> int:
    """'5GB' → 5·10⁹ bytes, '2GiB' → 2·2³⁰, '1000' → 1000."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ConfigError(f"cannot read size '{text}' (examples: 5GB, 500MB, 2GiB, 1000000)")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "B").upper()]
    if value < 1:
        raise ConfigError(f"size '{text}' must be at least one byte")
    return int(value)


def plan_shards(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Greedy in order: a new shard starts when the next tensor would overflow the current one
    (a single tensor larger than max_bytes gets a shard of its own)."""
    shards: list[list[str]] = []
    current, used = [], 0
    for name, nbytes in sizes:
        if current and used + nbytes > max_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += nbytes
    if current:
        shards.append(current)
    return shards


def write_safetensors(out_dir: str, tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> list[str]:
    """`model.safetensors`, or `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`
    when the weights exceed one shard. Tensors are copied one shard at a time (views of stacked
    checkpoint tensors share storage, which safetensors refuses)."""
    from safetensors.torch import save_file

    sizes = [(n, t.numel() * t.element_size()) for n, t in tensors.items()]
    shards = plan_shards(sizes, max_shard_bytes)
    written = []
    if len(shards) == 1:
        files = ["model.safetensors"]
    else:
        files = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    weight_map = {}
    for fname, names in zip(files, shards):
        part = {n: tensors[n].contiguous().clone() for n in names}
        save_file(part, os.path.join(out_dir, fname), metadata={"format": "pt"})
        del part
        weight_map.update({n: fname for n in names})
        written.append(fname)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(s for _, s in sizes)}, "weight_map": weight_map}
        with open(os.path.join(out_dir, SAFE_INDEX), "w") as f:
            json.dump(index, f, indent=2)
        written.append(SAFE_INDEX)
    return written


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES) or name in WEIGHT_INDEXES


def asset_files(hf_dir: str) -> list[str]:
    """Top-level non-weight files of an HF dir: config.json, generation_config.json, tokenizer files,
    chat template, itemic.json, README…"""
    return sorted(
        n
        for n in os.listdir(hf_dir)
        if os.path.isfile(os.path.join(hf_dir, n)) and not is_weight_file(n) and not n.startswith(".")
    )


def copy_assets(src_dir: str, dst_dir: str, skip: Iterable[str] = ()) -> list[str]:
    skip = set(skip)
    copied = []
    for name in asset_files(src_dir):
        if name in skip:
            continue
        shutil.copy2(os.path.join(src_dir, name), os.path.join(dst_dir, name))
        copied.append(name)
    return copied


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def source_dtype(path: str) -> torch.dtype:
    """dtype recorded in an HF directory's config.json (`dtype` or `torch_dtype`; fp32 when absent)."""
    cfg = read_json(os.path.join(path, "config.json"))
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return HF_NAME_DTYPES.get(str(name), torch.float32)
