"""`megarec convert mcore-to-hf`: Megatron-Core dist checkpoint → HF Qwen3 directory.

Works on any megarec dist checkpoint (a converted one, or a stage 1 / stage 2 checkpoint of the
pre-training engine), whatever TP/PP it was saved at: the tensors are read unsharded in one process.
The HF config comes from --hf-template, else from the config recorded at import, else from the
`hf_assets/` kept beside the checkpoint, the HF directory recorded at import, or the pre-training
config's model.hf_config. The vocabulary padding is cut back to the config's vocab_size, and
tie_word_embeddings follows the checkpoint (no output layer ⇒ tied).
"""

from __future__ import annotations

import json
import os
import time
from typing import Optional

import torch

from megarec.common import hfdir as hf_io
from megarec.common.dtypes import HF_DTYPE_NAMES, HF_NAME_DTYPES, dtype_from_name
from megarec.common.errors import ConfigError
from megarec.common.itemic import ITEMIC_JSON
from megarec.common.outdir import check_out_dir, staged_dir
from megarec.convert.importer import HF_ASSETS_DIR, check_itemic
from megarec.models.qwen3 import mapping
from megarec.models.qwen3.hf_config import read_qwen3_config

# ModelConfig overrides of a pre-training run → HF config keys.
_OVERRIDE_KEYS = {
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "ffn_hidden_size": "intermediate_size",
    "num_attention_heads": "num_attention_heads",
    "num_query_groups": "num_key_value_heads",
    "head_dim": "head_dim",
    "vocab_size": "vocab_size",
}


def _existing_dir(path) -> Optional[str]:
    if not path or not isinstance(path, str):
        return None
    if os.path.isfile(path):
        path = os.path.dirname(path)
    return path if os.path.isdir(path) else None


def resolve_hf_side(ckpt_root: str, common: dict, hf_template: Optional[str]) -> tuple[dict, Optional[str]]:
    """(HF config dict, directory whose non-weight files to copy) for a checkpoint."""
    meta = common.get("megarec") or {}
    conv = meta.get("convert") or {}
    pretrain_model = (meta.get("config") or {}).get("model") or {}
    if hf_template:
        if not os.path.isfile(os.path.join(hf_template, "config.json")):
            raise ConfigError(f"--hf-template {hf_template} has no config.json")
        config, asset_dir = hf_io.read_json(os.path.join(hf_template, "config.json")), hf_template
    else:
        candidates = [os.path.join(ckpt_root, HF_ASSETS_DIR), conv.get("source"), pretrain_model.get("hf_config")]
        dirs = [d for d in (_existing_dir(c) for c in candidates) if d]
        asset_dir = dirs[0] if dirs else None
        if conv.get("hf_config"):
            config = dict(conv["hf_config"])
        else:
            with_config = [d for d in dirs if os.path.isfile(os.path.join(d, "config.json"))]
            if not with_config:
                raise ConfigError(
                    f"{ckpt_root}: the checkpoint records no HF config and none was found; pass "
                    "--hf-template <HF dir with config.json (and tokenizer files)>"
                )
            config = hf_io.read_json(os.path.join(with_config[0], "config.json"))
    recorded = _recorded_vocab(conv, pretrain_model)
    if recorded is not None and pretrain_model.get("vocab_size") is None and config.get("vocab_size") != recorded:
        raise ConfigError(
            f"the HF config says vocab_size={config.get('vocab_size')} but the checkpoint was "
            f"{'converted' if conv else 'trained'} with a {recorded}-token vocabulary "
            f"(a template from another vocabulary would cut or keep the wrong rows)"
        )
    for ours, theirs in _OVERRIDE_KEYS.items():  # what a pre-training run changed on top of its HF config
        if pretrain_model.get(ours) is not None:
            config[theirs] = pretrain_model[ours]
    if pretrain_model.get("rope_theta") is not None:
        config["rope_theta"] = pretrain_model["rope_theta"]
        if isinstance(config.get("rope_parameters"), dict):
            config["rope_parameters"] = {**config["rope_parameters"], "rope_theta": pretrain_model["rope_theta"]}
    return config, asset_dir


def _recorded_vocab(conv: dict, pretrain_model: dict) -> Optional[int]:
    """The unpadded vocabulary the checkpoint was converted or trained with, when it says."""
    if conv.get("vocab_size") is not None:
        return int(conv["vocab_size"])
    hf_dir = _existing_dir(pretrain_model.get("hf_config"))
    if hf_dir and os.path.isfile(os.path.join(hf_dir, "config.json")):
        value = hf_io.read_json(os.path.join(hf_dir, "config.json")).get("vocab_size")
        return int(value) if isinstance(value, int) else None
    return None


def _output_dtype(requested: str, config: dict, tensors: dict) -> torch.dtype:
    if requested != "auto":
        return dtype_from_name(requested)
    for key in ("dtype", "torch_dtype"):
        if config.get(key) in HF_NAME_DTYPES:
            return HF_NAME_DTYPES[config[key]]
    return tensors["embedding.word_embeddings.weight"].dtype


def mcore_to_hf(
    mcore_dir: str,
    out: str,
    hf_template: Optional[str] = None,
    max_shard_size: str = "5GB",
    dtype: str = "auto",
    force: bool = False,
) -> dict:
    """Convert; returns a summary dict. Raises ConfigError (nothing written) on any mismatch."""
    from megarec.runtime import megatron_checkpoint as ckpt
    from megarec.runtime.distributed import world_size_from_env

    start = time.time()
    if world_size_from_env() > 1:
        raise ConfigError(
            "mcore-to-hf runs in a single process (it reads the checkpoint unsharded); run it without torchrun"
        )
    max_bytes = hf_io.parse_size(max_shard_size)
    if not os.path.isdir(mcore_dir):
        raise ConfigError(f"Megatron checkpoint directory not found: {mcore_dir}")
    ckpt_dir = ckpt.resolve_checkpoint_dir(mcore_dir)
    ckpt_root = os.path.dirname(os.path.abspath(ckpt_dir))
    inputs = [("--mcore-dir", mcore_dir), ("--hf-template", hf_template)]
    check_out_dir(out, force=force, inputs=inputs)
    common = ckpt.read_common_state(ckpt_dir)
    config, asset_dir = resolve_hf_side(ckpt_root, common, hf_template)
    tensors = _read_tensors(ckpt_dir)
    if "embedding.word_embeddings.weight" not in tensors:
        raise ConfigError(f"{ckpt_dir}: no embedding.word_embeddings.weight — not a megarec GPT checkpoint")
    padded = tensors["embedding.word_embeddings.weight"].shape[0]
    saved_padded = common.get("padded_vocab_size")
    if saved_padded is not None and int(saved_padded) != padded:
        raise ConfigError(
            f"{ckpt_dir}: embedding has {padded} rows but the checkpoint records padded_vocab_size={saved_padded}"
        )
    config["tie_word_embeddings"] = "output_layer.weight" not in tensors
    out_dtype = _output_dtype(dtype, config, tensors)

    with staged_dir(out, force=force, inputs=inputs) as stage:
        config_path = os.path.join(stage, "config.json")
        _write_config(config_path, config, out_dtype)
        arch, config = read_qwen3_config(config_path)
        if arch.vocab_size > padded:
            raise ConfigError(
                f"config vocab_size={arch.vocab_size} is larger than the checkpoint's {padded} embedding rows"
            )
        used: set[str] = set()

        def get(name: str) -> torch.Tensor:
            key, layer = mapping.stacked_key(name)
            if key not in tensors:
                raise ConfigError(f"{ckpt_dir}: no tensor {key}, which the Qwen3 mapping needs")
            used.add(key)
            t = tensors[key]
            if layer is None:
                return t
            if t.shape[0] != arch.num_layers:
                raise ConfigError(
                    f"{ckpt_dir}: {key} holds {t.shape[0]} layers, config.json says num_hidden_layers={arch.num_layers}"
                )
            return t[layer]

        hf_tensors = {n: t.to(out_dtype) for n, t in mapping.mcore_to_hf(get, arch, padded)}
        unused = sorted(set(tensors) - used)
        if unused:
            raise ConfigError(
                f"{ckpt_dir}: tensor {unused[0]} has no HF Qwen3 counterpart (not a plain Qwen3 checkpoint)"
            )
        files = hf_io.write_safetensors(stage, hf_tensors, max_bytes)
        del hf_tensors
        tensors.clear()  # free the checkpoint copy before copying files
        copied = []
        if asset_dir:
            copied = hf_io.copy_assets(asset_dir, stage, skip={"config.json"})
            itemic_path = os.path.join(stage, ITEMIC_JSON)
            if os.path.isfile(itemic_path):
                check_itemic(hf_io.read_json(itemic_path), arch.vocab_size, itemic_path)
    return {
        "out": os.path.abspath(out),
        "vocab_size": arch.vocab_size,
        "padded_vocab_size": padded,
        "tied": arch.tie_word_embeddings,
        "dtype": HF_DTYPE_NAMES[out_dtype],
        "weight_files": files,
        "copied": copied,
        "assets_from": asset_dir,
        "seconds": round(time.time() - start, 2),
    }


def _write_config(path: str, config: dict, dtype: torch.dtype) -> None:
    config = dict(config)
    config.setdefault("architectures", ["Qwen3ForCausalLM"])
    name = HF_DTYPE_NAMES[dtype]
    keys = [k for k in ("dtype", "torch_dtype") if k in config] or ["torch_dtype"]
    for k in keys:
        config[k] = name
    with open(path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def _read_tensors(ckpt_dir: str) -> dict:
    """Unsharded model tensors; read_full_tensors creates a one-process group if none exists — leave
    none behind."""
    import torch.distributed as dist

    from megarec.runtime.megatron_checkpoint import read_full_tensors

    had_group = dist.is_initialized()
    try:
        return read_full_tensors(ckpt_dir)
    finally:
        if not had_group and dist.is_initialized():
            dist.destroy_process_group()
