"""Reading a Qwen3 architecture from an HF `config.json`, strictly: every value comes from the file (later
Qwen3 refreshes change RoPE theta and context length), and configs whose numerics the Megatron model would
not reproduce are refused."""

from __future__ import annotations

import json
import os

from megarec.common.errors import ConfigError
from megarec.common.hfdir import read_json
from megarec.models.qwen3.presets import Qwen3Arch


def arch_from_hf_config(path: str) -> Qwen3Arch:
    """Read a Qwen3 architecture from an HF `config.json` (or a directory holding one).
    Every value comes from the file: later Qwen3 refreshes change RoPE theta and context length."""
    cfg_path = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(cfg_path):
        raise ConfigError(f"HF config not found: {cfg_path}")
    with open(cfg_path) as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{cfg_path}: not valid JSON ({e})") from None
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if model_type != "qwen3":
        raise ConfigError(
            f"{cfg_path}: model_type is '{model_type}', expected 'qwen3' (architectures: {archs or 'unset'})"
        )
    required = ["num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"]
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ConfigError(f"{cfg_path}: missing field '{missing[0]}'")
    heads = cfg["num_attention_heads"]
    rope = cfg.get("rope_theta")
    if rope is None:
        rope = (cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}).get("rope_theta", 1_000_000.0)
    if cfg.get("attention_bias"):
        raise ConfigError(f"{cfg_path}: attention_bias=true is not a Qwen3 layout")
    return Qwen3Arch(
        num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        num_attention_heads=heads,
        num_query_groups=cfg.get("num_key_value_heads", heads),
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        ffn_hidden_size=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=cfg.get("max_position_embeddings", 40960),
        rope_theta=float(rope),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
    )


def read_qwen3_config(hf_dir: str):
    """(Qwen3Arch, config dict) of an HF directory, refusing configs whose numerics the Megatron model
    would not reproduce (RoPE scaling, sliding-window attention, another activation)."""
    arch = arch_from_hf_config(hf_dir)  # rejects non-qwen3 configs and missing fields
    path = os.path.join(hf_dir, "config.json") if os.path.isdir(hf_dir) else hf_dir
    cfg = read_json(path)
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None
    if rope_type not in (None, "default"):
        raise ConfigError(
            f"{path}: RoPE scaling type '{rope_type}' is not supported by the conversion "
            "(the Megatron model uses plain RoPE)"
        )
    if cfg.get("use_sliding_window"):
        raise ConfigError(f"{path}: use_sliding_window=true is not supported (full attention only)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{path}: hidden_act '{cfg['hidden_act']}' is not Qwen3's SwiGLU (silu)")
    return arch, cfg
