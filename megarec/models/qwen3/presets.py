"""Qwen3 architecture presets (public configs); `hf_config` reads an architecture from an HF config.json."""

from __future__ import annotations

import dataclasses
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

    def check(self) -> None:
        """ConfigError for a shape no Qwen3 checkpoint can have (a model built from it would be unusable)."""
        sizes = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "head_dim", "ffn_hidden_size")
        for name in sizes + ("vocab_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.num_attention_heads % self.num_query_groups:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_query_groups={self.num_query_groups} (every KV group serves the same number of query heads)"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even (rotary embeddings rotate pairs)")
        if not self.rope_theta > 0 or not self.rms_norm_eps > 0:
            raise ConfigError(f"rope_theta={self.rope_theta} and rms_norm_eps={self.rms_norm_eps} must be > 0")

    def replace(self, **changes) -> "Qwen3Arch":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def num_parameters(self, padded_vocab: int | None = None) -> int:
        v = padded_vocab or self.vocab_size
        h, q, kv, d, f = (
            self.hidden_size,
            self.num_attention_heads,
            self.num_query_groups,
            self.head_dim,
            self.ffn_hidden_size,
        )
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
