"""The Qwen3 HF ↔ Megatron-Core weight mapping: one declarative table, used in both directions.

Megatron names are the dist-checkpoint keys (identical for the local and the Transformer Engine layer
spec) with the layer number written after `decoder.layers.`, e.g.
`decoder.layers.3.self_attention.linear_qkv.layer_norm_weight` (HF `model.layers.3.input_layernorm`).
In the checkpoint file the layers are stacked along a leading dimension under the key without the
number; `stacked_key` / `layer_name` translate.

Each rule names its HF tensor(s), its Megatron tensor and a transform that knows the shapes on both
sides and how to go forward (HF → Megatron) and back. Transforms are exact inverses of each other
(pure reshapes, concatenations and row padding), so a round trip is bit-exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from megarec.common.errors import ConfigError
from megarec.models.qwen3.presets import Qwen3Arch

Shape = tuple[int, ...]
LAYER_PREFIX = "decoder.layers."


class Transform:
    """HF tensors (a list, in the rule's order) ↔ one Megatron tensor."""

    def hf_shapes(self, arch: Qwen3Arch) -> list[Shape]:
        raise NotImplementedError

    def mcore_shape(self, arch: Qwen3Arch, padded_vocab: int) -> Shape:
        raise NotImplementedError

    def to_mcore(self, tensors: list[torch.Tensor], arch: Qwen3Arch, padded_vocab: int) -> torch.Tensor:
        raise NotImplementedError

    def to_hf(self, tensor: torch.Tensor, arch: Qwen3Arch) -> list[torch.Tensor]:
        raise NotImplementedError


@dataclass(frozen=True)
class Copy(Transform):
    """Same tensor on both sides."""

    shape: Callable[[Qwen3Arch], Shape]

    def hf_shapes(self, arch):
        return [tuple(self.shape(arch))]

    def mcore_shape(self, arch, padded_vocab):
        return tuple(self.shape(arch))

    def to_mcore(self, tensors, arch, padded_vocab):
        return tensors[0]

    def to_hf(self, tensor, arch):
        return [tensor]


@dataclass(frozen=True)
class VocabRows(Transform):
    """[vocab, hidden] ↔ [padded_vocab, hidden]: padding rows are zeros on import (never produced by the
    tokenizer) and cut off on export."""

    def hf_shapes(self, arch):
        return [(arch.vocab_size, arch.hidden_size)]

    def mcore_shape(self, arch, padded_vocab):
        return (padded_vocab, arch.hidden_size)

    def to_mcore(self, tensors, arch, padded_vocab):
        (w,) = tensors
        pad = padded_vocab - w.shape[0]
        if pad < 0:
            raise ConfigError(f"padded vocabulary {padded_vocab} is smaller than the vocabulary {w.shape[0]}")
        if pad == 0:
            return w
        return torch.cat([w, w.new_zeros(pad, w.shape[1])], dim=0)

    def to_hf(self, tensor, arch):
        return [tensor[: arch.vocab_size]]


@dataclass(frozen=True)
class FusedQKV(Transform):
    """q_proj [heads·d, h], k_proj / v_proj [groups·d, h] ↔ linear_qkv laid out per KV group as
    [q heads of the group; k; v]. Tensor parallelism splits whole groups, so this global layout is
    the same at every TP."""

    def hf_shapes(self, arch):
        h, d = arch.hidden_size, arch.head_dim
        return [(arch.num_attention_heads * d, h), (arch.num_query_groups * d, h), (arch.num_query_groups * d, h)]

    def mcore_shape(self, arch, padded_vocab):
        return ((arch.num_attention_heads + 2 * arch.num_query_groups) * arch.head_dim, arch.hidden_size)

    def to_mcore(self, tensors, arch, padded_vocab):
        q, k, v = tensors
        g, d, h = arch.num_query_groups, arch.head_dim, arch.hidden_size
        per_group = arch.num_attention_heads // g
        fused = torch.cat([q.reshape(g, per_group * d, h), k.reshape(g, d, h), v.reshape(g, d, h)], dim=1)
        return fused.reshape(-1, h)

    def to_hf(self, tensor, arch):
        g, d, h = arch.num_query_groups, arch.head_dim, arch.hidden_size
        per_group = arch.num_attention_heads // g
        q, k, v = tensor.reshape(g, (per_group + 2) * d, h).split([per_group * d, d, d], dim=1)
        return [q.reshape(-1, h), k.reshape(-1, h), v.reshape(-1, h)]


@dataclass(frozen=True)
class FusedGLU(Transform):
    """gate_proj, up_proj [ffn, h] ↔ linear_fc1 [gate; up] (the global tensor; under TP Megatron's
    sharded state dict gives each rank its gate shard followed by its up shard)."""

    def hf_shapes(self, arch):
        return [(arch.ffn_hidden_size, arch.hidden_size)] * 2

    def mcore_shape(self, arch, padded_vocab):
        return (2 * arch.ffn_hidden_size, arch.hidden_size)

    def to_mcore(self, tensors, arch, padded_vocab):
        return torch.cat(tensors, dim=0)

    def to_hf(self, tensor, arch):
        return list(tensor.chunk(2, dim=0))


def _always(arch: Qwen3Arch) -> bool:
    return True


def _untied(arch: Qwen3Arch) -> bool:
    return not arch.tie_word_embeddings


@dataclass(frozen=True)
class Rule:
    hf: tuple[str, ...]  # HF names; `{i}` = layer number
    mcore: str  # Megatron name; `{i}` = layer number
    transform: Transform
    when: Callable[[Qwen3Arch], bool] = _always

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.mcore


_HIDDEN = Copy(lambda a: (a.hidden_size,))
_HEAD = Copy(lambda a: (a.head_dim,))
_L = "model.layers.{i}."
_M = LAYER_PREFIX + "{i}."

QWEN3_RULES: tuple[Rule, ...] = (
    Rule(("model.embed_tokens.weight",), "embedding.word_embeddings.weight", VocabRows()),
    Rule((_L + "input_layernorm.weight",), _M + "self_attention.linear_qkv.layer_norm_weight", _HIDDEN),
    Rule(
        (_L + "self_attn.q_proj.weight", _L + "self_attn.k_proj.weight", _L + "self_attn.v_proj.weight"),
        _M + "self_attention.linear_qkv.weight",
        FusedQKV(),
    ),
    Rule((_L + "self_attn.q_norm.weight",), _M + "self_attention.q_layernorm.weight", _HEAD),
    Rule((_L + "self_attn.k_norm.weight",), _M + "self_attention.k_layernorm.weight", _HEAD),
    Rule(
        (_L + "self_attn.o_proj.weight",),
        _M + "self_attention.linear_proj.weight",
        Copy(lambda a: (a.hidden_size, a.num_attention_heads * a.head_dim)),
    ),
    Rule((_L + "post_attention_layernorm.weight",), _M + "mlp.linear_fc1.layer_norm_weight", _HIDDEN),
    Rule((_L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight"), _M + "mlp.linear_fc1.weight", FusedGLU()),
    Rule(
        (_L + "mlp.down_proj.weight",), _M + "mlp.linear_fc2.weight", Copy(lambda a: (a.hidden_size, a.ffn_hidden_size))
    ),
    Rule(("model.norm.weight",), "decoder.final_layernorm.weight", _HIDDEN),
    Rule(("lm_head.weight",), "output_layer.weight", VocabRows(), when=_untied),
)

# HF tensors that carry no weights (old checkpoints saved RoPE buffers).
IGNORED_HF = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
TIED_HF_OUTPUT = "lm_head.weight"


@dataclass(frozen=True)
class BoundRule:
    """A rule with the layer number filled in."""

    hf: tuple[str, ...]
    mcore: str
    transform: Transform


def bound_rules(arch: Qwen3Arch, rules: tuple[Rule, ...] = QWEN3_RULES) -> list[BoundRule]:
    out = []
    for rule in rules:
        if not rule.when(arch):
            continue
        layers = range(arch.num_layers) if rule.per_layer else [None]
        for i in layers:
            hf = tuple(n if i is None else n.format(i=i) for n in rule.hf)
            mcore = rule.mcore if i is None else rule.mcore.format(i=i)
            out.append(BoundRule(hf, mcore, rule.transform))
    return out


def expected_hf_shapes(arch: Qwen3Arch) -> dict[str, Shape]:
    shapes = {}
    for r in bound_rules(arch):
        shapes.update(zip(r.hf, r.transform.hf_shapes(arch)))
    return shapes


def expected_mcore_shapes(arch: Qwen3Arch, padded_vocab: int) -> dict[str, Shape]:
    return {r.mcore: r.transform.mcore_shape(arch, padded_vocab) for r in bound_rules(arch)}


def _check_shape(name: str, tensor: torch.Tensor, expected: Shape, side: str) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise ConfigError(f"{side} tensor {name} has shape {list(tensor.shape)}, config.json implies {list(expected)}")


def hf_to_mcore(
    get_hf: Callable[[str], torch.Tensor], arch: Qwen3Arch, padded_vocab: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """(Megatron name, tensor) for every rule, reading HF tensors one rule at a time."""
    for r in bound_rules(arch):
        tensors = [get_hf(n) for n in r.hf]
        for n, t, s in zip(r.hf, tensors, r.transform.hf_shapes(arch)):
            _check_shape(n, t, s, "HF")
        yield r.mcore, r.transform.to_mcore(tensors, arch, padded_vocab)


def mcore_to_hf(
    get_mcore: Callable[[str], torch.Tensor], arch: Qwen3Arch, padded_vocab: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for every rule; vocabulary padding is cut back to arch.vocab_size."""
    for r in bound_rules(arch):
        t = get_mcore(r.mcore)
        _check_shape(r.mcore, t, r.transform.mcore_shape(arch, padded_vocab), "Megatron")
        yield from zip(r.hf, r.transform.to_hf(t, arch))


_LAYER_RE = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def stacked_key(name: str) -> tuple[str, Optional[int]]:
    """'decoder.layers.3.mlp.linear_fc2.weight' → ('decoder.layers.mlp.linear_fc2.weight', 3)."""
    m = _LAYER_RE.match(name)
    if not m:
        return name, None
    return LAYER_PREFIX + m.group(2), int(m.group(1))


def layer_name(key: str, layer: Optional[int]) -> str:
    """Inverse of stacked_key."""
    if layer is None:
        return key
    if not key.startswith(LAYER_PREFIX):
        raise ValueError(f"{key} is not a per-layer key")
    return f"{LAYER_PREFIX}{layer}.{key[len(LAYER_PREFIX) :]}"
