"""Qwen3 architecture presets (public configs) and reading an architecture from an HF config.json."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from megarec.common.errors import ConfigError

QWEN3_VOCAB = 151936  # embedding rows of every public Qwen3 checkpoint (151,669 used by the tokenizer)


@dataclass(frozen=True)
class Qwen3Arch:
    """Everything that fixes the shape and numerics of a Qwen3 decoder."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 40960
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6

    def replace(self, **changes) -> "Qwen3Arch":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def num_parameters(self, padded_vocab: int | None = None) -> int:
        v = padded_vocab or self.vocab_size
        h, q, kv, d, f = self.hidden_size, self.num_attention_heads, self.num_query_groups, self.head_dim, self.ffn_hidden_size
        attn = h * (q * d + 2 * kv * d) + q * d * h + 2 * d
        mlp = 3 * h * f
        layer = attn + mlp + 2 * h
        emb = v * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + emb + h


PRESETS: dict[str, Qwen3Arch] = {
    "qwen3-0.6b": Qwen3Arch(28, 1024, 16, 8, 128, 3072, QWEN3_VOCAB, True),
    "qwen3-1.7b": Qwen3Arch(28, 2048, 16, 8, 128, 6144, QWEN3_VOCAB, True),
    "qwen3-4b": Qwen3Arch(36, 2560, 32, 8, 128, 9728, QWEN3_VOCAB, True),
    "qwen3-8b": Qwen3Arch(36, 4096, 32, 8, 128, 12288, QWEN3_VOCAB, False),
    "qwen3-14b": Qwen3Arch(40, 5120, 40, 8, 128, 17408, QWEN3_VOCAB, False),
    # Small CPU presets: same architecture family, sizes that train in seconds on two cores.
    "qwen3-tiny": Qwen3Arch(2, 64, 4, 2, 16, 128, 1024, False, max_position_embeddings=4096),
    "qwen3-tiny-tied": Qwen3Arch(2, 64, 4, 2, 16, 128, 1024, True, max_position_embeddings=4096),
    "qwen3-small": Qwen3Arch(4, 256, 8, 4, 32, 768, 4096, True, max_position_embeddings=4096),
}


def get_preset(name: str) -> Qwen3Arch:
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown model preset '{name}' (known: {', '.join(PRESETS)})") from None


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
        raise ConfigError(f"{cfg_path}: model_type is '{model_type}', expected 'qwen3' "
                          f"(architectures: {archs or 'unset'})")
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
