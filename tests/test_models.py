"""Qwen3 presets, HF config reading, vocabulary padding, layout validation and the GPU/FP8 plumbing."""

from __future__ import annotations

import json

import pytest
import torch

from megarec.common.errors import ConfigError
from megarec.models.config import ModelConfig
from megarec.models.qwen3.builder import padded_vocab_size, resolve_arch, transformer_config_kwargs, validate_layout
from megarec.models.qwen3.hf_config import arch_from_hf_config
from megarec.models.qwen3.presets import PRESETS, get_preset
from megarec.models.qwen3.specs import resolve_transformer_impl
from megarec.runtime.config import ParallelConfig


@pytest.mark.parametrize(
    "name,layers,hidden,heads,kv,ffn,tied",
    [
        ("qwen3-0.6b", 28, 1024, 16, 8, 3072, True),
        ("qwen3-1.7b", 28, 2048, 16, 8, 6144, True),
        ("qwen3-4b", 36, 2560, 32, 8, 9728, True),
        ("qwen3-8b", 36, 4096, 32, 8, 12288, False),
        ("qwen3-14b", 40, 5120, 40, 8, 17408, False),
    ],
)
def test_public_presets(name, layers, hidden, heads, kv, ffn, tied):
    a = get_preset(name)
    assert (
        a.num_layers,
        a.hidden_size,
        a.num_attention_heads,
        a.num_query_groups,
        a.ffn_hidden_size,
        a.tie_word_embeddings,
    ) == (layers, hidden, heads, kv, ffn, tied)
    assert a.head_dim == 128 and a.vocab_size == 151936 and a.rope_theta == 1e6 and a.rms_norm_eps == 1e-6


def test_parameter_counts_match_public_sizes():
    # Qwen3-8B: 8.19B parameters, Qwen3-0.6B: 0.60B (public model cards, embeddings included).
    assert get_preset("qwen3-8b").num_parameters() == pytest.approx(8.19e9, rel=0.01)
    assert get_preset("qwen3-0.6b").num_parameters() == pytest.approx(0.596e9, rel=0.01)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown model preset 'qwen3-9b'"):
        get_preset("qwen3-9b")


def _write(tmp_path, **cfg):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


def test_hf_config_values_win_over_preset(tmp_path):
    d = _write(
        tmp_path,
        model_type="qwen3",
        num_hidden_layers=36,
        hidden_size=2560,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=9728,
        vocab_size=176256,
        tie_word_embeddings=True,
        rope_theta=5e6,
        max_position_embeddings=262144,
        rms_norm_eps=1e-6,
    )
    a = arch_from_hf_config(d)
    # 4B: head_dim (128) != hidden / heads (80) — must be carried explicitly
    assert a.head_dim == 128 and a.hidden_size // a.num_attention_heads == 80
    assert (a.rope_theta, a.max_position_embeddings, a.vocab_size) == (5e6, 262144, 176256)
    arch = resolve_arch(ModelConfig(hf_config=d, num_layers=2))
    assert arch.num_layers == 2 and arch.head_dim == 128


def test_non_qwen3_config_rejected(tmp_path):
    d = _write(tmp_path, model_type="llama", architectures=["LlamaForCausalLM"], num_hidden_layers=2)
    with pytest.raises(ConfigError, match="model_type is 'llama', expected 'qwen3'"):
        arch_from_hf_config(d)


@pytest.mark.parametrize(
    "vocab,div,tp,expected",
    [
        (151669, 128, 1, 151680),
        (151936, 128, 1, 151936),
        (151936, 128, 2, 152064),
        (176247, 128, 4, 176640),
        (1000, 128, 2, 1024),
    ],
)
def test_vocab_padding_rule(vocab, div, tp, expected):
    assert padded_vocab_size(vocab, div, tp) == expected and expected % (div * tp) == 0


@pytest.mark.parametrize(
    "parallel,message",
    [
        (
            ParallelConfig(tensor_model_parallel_size=3),
            "num_attention_heads=4 is not divisible by tensor_model_parallel_size=3",
        ),
        (ParallelConfig(pipeline_model_parallel_size=4), "num_layers=2 is not divisible"),
        (
            ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True),
            "sequence_parallel needs the Transformer Engine",
        ),
        (ParallelConfig(virtual_pipeline_model_parallel_size=2), "needs pipeline_model_parallel_size > 1"),
    ],
)
def test_layout_rejections(parallel, message):
    with pytest.raises(ConfigError, match=message):
        validate_layout(get_preset("qwen3-tiny"), parallel, "local", world_size=4)


def test_context_parallel_needs_te_or_sdpa_attention():
    """CP runs TE's ring attention on GPUs; without TE the local spec's SDPA attention gathers K/V over the CP
    group. Megatron's unfused attention has no CP path."""
    validate_layout(
        get_preset("qwen3-tiny"), ParallelConfig(context_parallel_size=2), "local", world_size=4, local_attention="sdpa"
    )
    with pytest.raises(ConfigError, match="context_parallel_size > 1 needs the Transformer Engine"):
        validate_layout(
            get_preset("qwen3-tiny"),
            ParallelConfig(context_parallel_size=2),
            "local",
            world_size=4,
            local_attention="unfused",
        )


def test_world_size_must_fit_layout():
    with pytest.raises(ConfigError, match="world size 6 is not divisible by TP×PP×CP = 4×1×1"):
        validate_layout(get_preset("qwen3-8b"), ParallelConfig(tensor_model_parallel_size=4), "local", 6)


def test_transformer_impl_choice():
    assert resolve_transformer_impl("auto", te_available=False) == "local"
    assert resolve_transformer_impl("auto", te_available=True) == "transformer_engine"
    with pytest.raises(ConfigError, match="needs CUDA and an importable transformer_engine"):
        resolve_transformer_impl("transformer_engine", te_available=False)
    # This machine: no CUDA, so auto must pick the local spec without importing TE.
    if not torch.cuda.is_available():
        assert resolve_transformer_impl("auto") == "local"


def test_gpu_fp8_plumbing():
    """What an 8B/32K H100 layout with FP8 and selective recompute hands to TransformerConfig (checked without
    a GPU)."""
    arch = get_preset("qwen3-8b")
    model = ModelConfig(
        preset="qwen3-8b", dtype="auto", transformer_impl="transformer_engine", fp8="hybrid", recompute_activations=True
    )
    par = ParallelConfig(tensor_model_parallel_size=4, context_parallel_size=2, sequence_parallel=True)
    validate_layout(arch, par, "transformer_engine", world_size=16, fp8="hybrid")
    kw = transformer_config_kwargs(arch, model, par, "transformer_engine", on_gpu=True)
    assert kw["fp8"] == "hybrid" and kw["fp8_amax_history_len"] == 1024 and kw["fp8_amax_compute_algo"] == "max"
    assert kw["fp8_recipe"] == "delayed"
    assert kw["bf16"] and kw["params_dtype"] == torch.bfloat16
    assert kw["sequence_parallel"] and kw["context_parallel_size"] == 2 and kw["tensor_model_parallel_size"] == 4
    assert kw["apply_rope_fusion"] and kw["batch_p2p_comm"]
    assert not kw["use_cpu_initialization"] and kw["recompute_granularity"] == "selective"
    assert kw["kv_channels"] == 128 and kw["num_query_groups"] == 8 and kw["calculate_per_token_loss"]
    with pytest.raises(ConfigError, match="model.fp8 needs the Transformer Engine"):
        validate_layout(arch, ParallelConfig(), "local", fp8="hybrid")


def test_cpu_plumbing_builds_a_real_transformer_config():
    from megatron.core.transformer.transformer_config import TransformerConfig

    arch = PRESETS["qwen3-tiny"]
    kw = transformer_config_kwargs(arch, ModelConfig(), ParallelConfig(), "local", on_gpu=False)
    assert kw["params_dtype"] == torch.float32 and kw["use_cpu_initialization"] and not kw["batch_p2p_comm"]
    assert not any(kw[k] for k in ("bias_activation_fusion", "masked_softmax_fusion", "gradient_accumulation_fusion"))
    cfg = TransformerConfig(**kw)
    assert cfg.kv_channels == 16 and cfg.qk_layernorm and cfg.gated_linear_unit and not cfg.add_bias_linear


@pytest.mark.parametrize("kernel_present", [False, True])
def test_gradient_accumulation_fusion_only_with_apex_kernel(monkeypatch, kernel_present):
    """With TE, gradient_accumulation_fusion is on only when apex's fused wgrad kernel imports: Megatron's own
    output layer (ColumnParallelLinear, also under the TE spec) refuses to build without it."""
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megarec.models.qwen3 import builder as qwen3
    from megarec.runtime.megatron_parallel import init_megatron

    monkeypatch.setattr(qwen3, "fused_wgrad_kernel_available", lambda: kernel_present)
    arch = PRESETS["qwen3-tiny"]
    kw = transformer_config_kwargs(arch, ModelConfig(), ParallelConfig(), "transformer_engine", on_gpu=True)
    assert kw["gradient_accumulation_fusion"] is kernel_present
    if kernel_present:
        return  # the kernel really is absent here: nothing to build
    init_megatron(ParallelConfig(), seed=0)
    # Megatron's output layer, built here on the CPU with the fusion flag the GPU config carries.
    cpu = transformer_config_kwargs(arch, ModelConfig(), ParallelConfig(), "local", on_gpu=False)
    cfg = TransformerConfig(**{**cpu, "gradient_accumulation_fusion": kw["gradient_accumulation_fusion"]})
    layer = ColumnParallelLinear(arch.hidden_size, 64, config=cfg, init_method=cfg.init_method, bias=False)
    assert layer.weight.shape == (64, arch.hidden_size)
    with pytest.raises(RuntimeError, match="fused_weight_gradient_mlp_cuda"):  # what always-on fusion did
        ColumnParallelLinear(
            arch.hidden_size,
            64,
            config=TransformerConfig(**{**cpu, "gradient_accumulation_fusion": True}),
            init_method=cfg.init_method,
            bias=False,
        )


def test_flops_per_token_counts_causal_attention_as_megatron_lm():
    """Megatron-LM's num_floating_point_operations for a dense GQA SwiGLU model, per token: 6 × (h·(q+2kv)·d +
    q·d·S/2·2 + q·d·h) + 18·h·f per layer, plus 6·h·V for the logits."""
    from megarec.models.qwen3.flops import flops_per_token

    arch = get_preset("qwen3-8b")
    h, d, q, kv, f, n, s, v = 4096, 128, 32, 8, 12288, 36, 32768, 176384
    per_layer = 6 * (h * (q + 2 * kv) * d + q * d * s + q * d * h) + 18 * h * f
    expected = n * per_layer + 6 * h * v
    assert flops_per_token(arch, s, v) == expected
    # Causal attention is half of S² : full-square counting would add n · 6 · q·d·S more.
    assert flops_per_token(arch, 2 * s, v) - flops_per_token(arch, s, v) == n * 6 * q * d * s
