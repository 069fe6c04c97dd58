"""Per-GPU memory estimate: hand-computed values, how each parallel dimension divides it, and that the shipped
recipes' recompute choice, YAML comments and README table agree with it."""

from __future__ import annotations

import os
import re

import pytest

from megarec.common.config import load_config
from megarec.common.errors import ConfigError
from megarec.common.itemic import ItemicLayout
from megarec.models.qwen3.builder import padded_vocab_size
from megarec.models.qwen3.memory import (
    GIB,
    MemoryEstimate,
    choose_recompute,
    estimate_for_config,
    estimate_memory,
    local_params,
)
from megarec.models.qwen3.presets import Qwen3Arch, get_preset
from megarec.pretrain.config import PretrainConfig

from conftest import REPO

# L=2 layers, h=64, a=4 query heads, g=2 KV groups, d=16, f=128, V=1024, untied.
SMALL = Qwen3Arch(
    num_layers=2,
    hidden_size=64,
    num_attention_heads=4,
    num_query_groups=2,
    head_dim=16,
    ffn_hidden_size=128,
    vocab_size=1024,
    tie_word_embeddings=False,
)

# The report's itemic layout on the Qwen3 tokenizer (DESIGN §3): 151,669 entries + 3 layers × 8192 codes + 2.
QWEN3_TOKENIZER_ENTRIES, CODE_LAYERS, CODEBOOK_SIZE = 151_669, 3, 8192
ITEMIC_VOCAB = ItemicLayout.create(QWEN3_TOKENIZER_ENTRIES, CODE_LAYERS, CODEBOOK_SIZE).last_id + 1


def test_small_config_by_hand():
    # TP=2 with SP, CP=1, DP=2 with the distributed optimizer, s=32, b=1, bf16.
    est = estimate_memory(
        SMALL,
        tp=2,
        pp=1,
        cp=1,
        sp=True,
        dp=2,
        distributed_optimizer=True,
        seq_length=32,
        micro_batch_size=1,
        params_dtype_bytes=2,
        recompute=False,
        padded_vocab=1024,
    )
    # Per TP rank: a=2, g=1 heads, f=64.
    # attention = h(a+2g)d + a·d·h + 2d = 64·4·16 + 2·16·64 + 2·16 = 4096 + 2048 + 32 = 6176
    # mlp = 3·h·f = 3·64·64 = 12288; layer = 6176 + 12288 + 2h (norms) = 18592
    # embedding + output layer = 2 · (1024/2)·64 = 65536; final norm 64
    params = 2 * 18592 + 65536 + 64
    assert params == 102784
    assert est.params == params
    assert est.weights == 2 * params == 205568
    assert est.grads == 4 * params == 411136
    # fp32 master + 2 moments = 12 bytes per parameter, split over DP×CP = 2
    assert est.optimizer == 12 * params // 2 == 616704
    # Activations, n = s/CP·b = 32 tokens; hidden-sized tensors split by SP: n/TP = 16 tokens.
    #   norm inputs 2·16·64·2 = 4096, QKV/FC1 inputs 2·16·64·2 = 4096,
    #   QK-norm inputs 32·(2+1)·16·2 = 3072, attention inputs q,k,v 32·(2+2)·16·2 = 4096,
    #   core attention (output 32·2·16·2 = 2048 + fp32 stats 32·2·4 = 256) = 2304,
    #   projection input 32·2·16·2 = 2048, SwiGLU input 32·2·64·2 = 8192, FC2 input 32·64·2 = 4096
    per_layer = 4096 + 4096 + 3072 + 4096 + 2304 + 2048 + 8192 + 4096
    assert per_layer == 32000
    assert est.activations_per_layer == per_layer
    assert est.core_attention_per_layer == 2304
    # 2 layers + final norm and output-layer inputs 2·16·64·2 = 4096
    assert est.activations == 2 * per_layer + 4096 == 68096
    # fp32 logits: 32 tokens × 1024/2 vocabulary rows × 4 bytes
    assert est.logits == 32 * 512 * 4 == 65536
    assert est.total == 205568 + 411136 + 616704 + 68096 + 65536
    assert est.gib()["total"] == est.total / GIB


def test_recompute_removes_exactly_the_core_attention_term():
    kw = dict(tp=2, cp=2, sp=True, dp=2, distributed_optimizer=True, seq_length=64, padded_vocab=1024)
    off = estimate_memory(SMALL, recompute=False, **kw)
    on = estimate_memory(SMALL, recompute=True, **kw)
    assert on.core_attention_per_layer == 0
    assert off.activations_per_layer - on.activations_per_layer == off.core_attention_per_layer > 0
    assert off.activations - on.activations == SMALL.num_layers * off.core_attention_per_layer
    assert (off.weights, off.grads, off.optimizer, off.logits) == (on.weights, on.grads, on.optimizer, on.logits)


def test_tensor_parallel_with_sp_divides_activations():
    base = dict(seq_length=64, padded_vocab=1024)
    tp1 = estimate_memory(SMALL, tp=1, **base)
    tp2_sp = estimate_memory(SMALL, tp=2, sp=True, **base)
    tp2 = estimate_memory(SMALL, tp=2, sp=False, **base)
    assert tp2_sp.activations_per_layer * 2 == tp1.activations_per_layer
    assert tp2_sp.activations * 2 == tp1.activations
    assert tp2_sp.logits * 2 == tp1.logits
    # Without SP the norm and linear inputs (4 hidden-sized tensors per token) stay whole on every TP rank.
    hidden_terms = 4 * 64 * SMALL.hidden_size * 2
    assert tp2.activations_per_layer == tp2_sp.activations_per_layer + hidden_terms // 2


def test_context_parallel_divides_activations_and_logits():
    cp1 = estimate_memory(SMALL, tp=2, sp=True, cp=1, seq_length=64, padded_vocab=1024)
    cp2 = estimate_memory(SMALL, tp=2, sp=True, cp=2, seq_length=64, padded_vocab=1024)
    assert cp2.activations * 2 == cp1.activations and cp2.logits * 2 == cp1.logits
    assert cp2.weights == cp1.weights and cp2.optimizer == cp1.optimizer


def test_distributed_optimizer_shards_state_over_dp_and_cp():
    kw = dict(tp=2, seq_length=64, padded_vocab=1024)
    full = estimate_memory(SMALL, dp=4, distributed_optimizer=False, **kw)
    assert full.optimizer == 12 * full.params
    sharded = estimate_memory(SMALL, dp=4, distributed_optimizer=True, **kw)
    assert sharded.optimizer * 4 == full.optimizer
    assert sharded.grads == full.grads and sharded.weights == full.weights  # the grad buffer stays whole
    # Megatron builds the distributed optimizer on the DP×CP group.
    with_cp = estimate_memory(SMALL, dp=4, cp=2, distributed_optimizer=True, **kw)
    assert with_cp.optimizer * 8 == full.optimizer
    # fp32 parameters need no master copy: only the two moments.
    fp32 = estimate_memory(SMALL, dp=4, params_dtype_bytes=4, **kw)
    assert fp32.optimizer == 8 * fp32.params and fp32.weights == 4 * fp32.params


def test_parameter_count_matches_the_architecture():
    for name in ("qwen3-1.7b", "qwen3-8b"):
        arch = get_preset(name)
        assert local_params(arch, tp=1, pp=1, padded_vocab=ITEMIC_VOCAB) == arch.num_parameters(ITEMIC_VOCAB)
    arch = get_preset("qwen3-8b")
    v = padded_vocab_size(ITEMIC_VOCAB, 128, 4)
    # Everything but the norms (replicated) splits over TP.
    norms = arch.num_layers * (2 * arch.hidden_size + 2 * arch.head_dim) + arch.hidden_size
    assert 4 * (local_params(arch, tp=4, pp=1, padded_vocab=v) - norms) == arch.num_parameters(v) - norms


def test_layout_errors():
    with pytest.raises(ConfigError, match="num_query_groups=2 is not divisible by TP=4"):
        estimate_memory(SMALL, tp=4, seq_length=64, padded_vocab=1024)
    with pytest.raises(ConfigError, match="seq_length=30 is not divisible by CP×TP=4"):
        estimate_memory(SMALL, tp=2, cp=2, sp=True, seq_length=30, padded_vocab=1024)
    with pytest.raises(ConfigError, match="smaller than the vocabulary"):
        estimate_memory(SMALL, seq_length=64, padded_vocab=512)


def _est(total_gib: float) -> MemoryEstimate:
    return MemoryEstimate(int(total_gib * GIB), 0, 0, 0, 0, 0, 0, 0)


def test_choose_recompute_policy():
    assert choose_recompute(_est(60), _est(59)) is False  # 60 GiB = 75% of 80 GiB
    assert choose_recompute(_est(61), _est(59)) is True
    with pytest.raises(ConfigError, match="even with recomputation"):
        choose_recompute(_est(70), _est(65))


def _launcher_dp(script: str, cfg: PretrainConfig) -> int:
    """DP of a recipe on the allocation its sbatch script asks for."""
    with open(os.path.join(REPO, "launch", script)) as f:
        text = f.read()
    nodes = int(re.search(r"^#SBATCH --nodes=(\d+)$", text, re.M).group(1))
    gpus = int(re.search(r"^#SBATCH --gpus-per-node=(\d+)$", text, re.M).group(1))
    p = cfg.parallel
    return nodes * gpus // (p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size)


RECIPES = [
    ("stage1_8b", "pretrain_8b.sh"),
    ("stage2_8b", "pretrain_8b.sh"),
    ("stage1_1p7b", "pretrain_1p7b.sh"),
    ("stage2_1p7b", "pretrain_1p7b.sh"),
]


@pytest.mark.parametrize("recipe,script", RECIPES)
def test_recipe_recompute_choice_follows_the_estimate(recipe, script):
    cfg = load_config(PretrainConfig, os.path.join(REPO, "configs", "pretrain", f"{recipe}.yaml"), [])
    dp = _launcher_dp(script, cfg)
    assert dp == 4
    # With the itemic-expanded vocabulary the recipes train with, and with the preset's own.
    for vocab in (ITEMIC_VOCAB, None):
        off = estimate_for_config(cfg, dp=dp, vocab_size=vocab, recompute=False)
        on = estimate_for_config(cfg, dp=dp, vocab_size=vocab, recompute=True)
        assert cfg.model.recompute_activations == choose_recompute(off, on)


@pytest.mark.parametrize(
    "model_yaml,recipe,script",
    [
        ("qwen3_8b_h100.yaml", "stage2_8b", "pretrain_8b.sh"),
        ("qwen3_1p7b_h100.yaml", "stage2_1p7b", "pretrain_1p7b.sh"),
    ],
)
def test_recipe_comment_quotes_the_estimate(model_yaml, recipe, script):
    with open(os.path.join(REPO, "configs", "models", model_yaml)) as f:
        comment = " ".join(line.strip().lstrip("# ") for line in f if line.strip().startswith("#"))
    cfg = load_config(PretrainConfig, os.path.join(REPO, "configs", "pretrain", f"{recipe}.yaml"), [])
    off = estimate_for_config(cfg, dp=_launcher_dp(script, cfg), vocab_size=ITEMIC_VOCAB, recompute=False)
    on = estimate_for_config(cfg, dp=_launcher_dp(script, cfg), vocab_size=ITEMIC_VOCAB, recompute=True)
    g = off.gib()
    quoted = (
        f"weights {g['weights']:.2f} + fp32 grads {g['grads']:.2f} + optimizer shard {g['optimizer']:.2f} "
        f"+ activations {g['activations']:.2f} + fp32 logits {g['logits']:.2f} = {g['total']:.2f} GiB "
        f"without it, {on.total / GIB:.2f} GiB with it"
    )
    assert quoted in comment


def test_readme_table_matches_the_estimate():
    with open(os.path.join(REPO, "README.md")) as f:
        rows = {
            m.group(1): [float(x) for x in m.group(2).split("|") if x.strip()]
            for m in re.finditer(r"^\| (Qwen3-[\d.]+B) \| [^|]+ \|((?: [\d.]+ \|){7})$", f.read(), re.M)
        }
    assert set(rows) == {"Qwen3-1.7B", "Qwen3-8B"}
    for name, recipe, script in (
        ("Qwen3-1.7B", "stage2_1p7b", "pretrain_1p7b.sh"),
        ("Qwen3-8B", "stage2_8b", "pretrain_8b.sh"),
    ):
        cfg = load_config(PretrainConfig, os.path.join(REPO, "configs", "pretrain", f"{recipe}.yaml"), [])
        dp = _launcher_dp(script, cfg)
        off = estimate_for_config(cfg, dp=dp, vocab_size=ITEMIC_VOCAB, recompute=False).gib()
        on = estimate_for_config(cfg, dp=dp, vocab_size=ITEMIC_VOCAB, recompute=True).gib()
        expected = [off[k] for k in ("weights", "grads", "optimizer", "activations", "logits", "total")]
        expected.append(on["total"])
        assert rows[name] == [round(x, 2) for x in expected], name
