"""Per-GPU memory estimate for Qwen3 pre-training on Megatron-Core, before a GPU is booked.

What it is for: deciding per recipe whether selective activation recomputation is needed (it costs
compute), and giving the GPU acceptance check a figure to compare measured peak memory against.

The estimate is for one GPU of a (TP, PP, CP, DP) layout, with sequence parallelism on or off:

- weights: the parameters this rank holds, in the parameter dtype (FP8 through Transformer Engine keeps
  bf16 weights; its transient FP8 weight casts are not counted).
- grads: Megatron DDP's main-gradient buffer, fp32 (`grad_reduce_in_fp32`), one value per local parameter;
  the distributed optimizer reduce-scatters into this buffer, it does not shrink it.
- optimizer: Adam's two moments, plus an fp32 master copy when the parameters are not fp32. The
  distributed optimizer shards them over the data-parallel group *including* context-parallel ranks
  (Megatron builds it on the DP×CP group, since CP ranks hold the same weights).
- activations: what each layer keeps for backward (Korthikanti et al. 2022, "Reducing Activation
  Recomputation in Large Transformer Models"), adapted to Qwen3: grouped-query attention, SwiGLU, RMSNorm
  with QK-norm, no dropout, and flash attention (no s×s score matrix). Every op's saved tensor is counted
  on its own, although some share storage; that makes this an upper bound (see `layer_activation_terms`).
- logits: the fp32 copy the vocab-parallel cross entropy makes of this rank's logits (and reuses for the
  gradient): s/CP × b × V/TP values.

Pipeline parallelism: with the 1F1B schedule the first stage holds activations of PP micro-batches of L/PP
layers each, i.e. L layers' worth (assuming at least PP micro-batches per step); for PP > 1 the estimate
adds the first stage's embedding and the last stage's output layer and logits, so it bounds either stage.

Not modelled (left to the headroom of `choose_recompute`): CUDA context and library workspaces, NCCL
buffers, allocator fragmentation, Transformer Engine's FP8 weight casts, transient backward buffers
(gradients in flight, sequence-parallel all-gathers) and the short-lived bf16 logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from megarec.common.errors import ConfigError
from megarec.models.qwen3.presets import Qwen3Arch

GIB = 1 << 30
H100_HBM_BYTES = 80 * GIB
# Share of HBM kept free for what the estimate leaves out (list in the module docstring).
DEFAULT_HEADROOM = 0.25
FP32_BYTES = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU. `activations` covers all layers in flight; `activations_per_layer` is one layer of
    one micro-batch, of which `core_attention_per_layer` is what selective recomputation frees (0 when on)."""

    weights: int
    grads: int
    optimizer: int
    activations: int
    logits: int
    params: int
    activations_per_layer: int
    core_attention_per_layer: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.logits

    def gib(self) -> dict[str, float]:
        """The byte figures and the total in GiB (parameter count left out)."""
        out = {f.name: getattr(self, f.name) / GIB for f in fields(self) if f.name != "params"}
        out["total"] = self.total / GIB
        return out


def local_params(arch: Qwen3Arch, *, tp: int, pp: int, padded_vocab: int) -> int:
    """Parameters on one rank: L/PP layers (projections split over TP, norms replicated) plus the
    vocab-parallel embedding, output layer (untied, or the last stage's copy when PP > 1) and final norm."""
    h, d, f = arch.hidden_size, arch.head_dim, arch.ffn_hidden_size
    a, g = arch.num_attention_heads // tp, arch.num_query_groups // tp
    attention = h * (a + 2 * g) * d + a * d * h + 2 * d  # QKV, output projection, q/k norms
    mlp = 3 * h * (f // tp)  # gate, up, down
    layer = attention + mlp + 2 * h  # input and pre-MLP RMSNorm
    vocab_rows = padded_vocab // tp
    embedding_copies = 1 if arch.tie_word_embeddings and pp == 1 else 2
    return arch.num_layers // pp * layer + embedding_copies * vocab_rows * h + h


def layer_activation_terms(
    arch: Qwen3Arch, *, tp: int, cp: int, sp: bool, seq_length: int, micro_batch_size: int, act_bytes: int
) -> dict[str, int]:
    """Bytes one layer keeps for backward for one micro-batch, by tensor.

    Tokens on this rank: n = s/CP × b. Head- and FFN-sized tensors are split over TP; hidden-sized tensors
    (norm and linear inputs) are split over TP only with sequence parallelism.

    `core_attention` is what flash attention keeps beyond its inputs: its output and the fp32 softmax
    statistics (one per query head and token). Selective recomputation frees exactly this. In bf16 the
    output is the same storage as the output projection's saved input, so there recomputation frees only
    the statistics and this term over-counts; with FP8 the projection saves its own FP8 copy and the bf16
    output is indeed freed.
    """
    h, d, f = arch.hidden_size, arch.head_dim, arch.ffn_hidden_size
    a, g = arch.num_attention_heads // tp, arch.num_query_groups // tp
    n = seq_length // cp * micro_batch_size
    n_hidden = n // tp if sp else n
    return {
        "norm_inputs": 2 * n_hidden * h * act_bytes,  # input RMSNorm, pre-MLP RMSNorm
        "linear_inputs": 2 * n_hidden * h * act_bytes,  # QKV and FC1 read the normalised hidden states
        "qk_norm_inputs": n * (a + g) * d * act_bytes,
        "attention_inputs": n * (a + 2 * g) * d * act_bytes,  # q, k after norm and RoPE; v
        "core_attention": n * (a * d * act_bytes + a * FP32_BYTES),
        "projection_input": n * a * d * act_bytes,
        "swiglu_input": n * 2 * (f // tp) * act_bytes,  # gate and up
        "fc2_input": n * (f // tp) * act_bytes,
    }


def _check_layout(
    arch: Qwen3Arch,
    tp: int,
    pp: int,
    cp: int,
    sp: bool,
    dp: int,
    seq_length: int,
    micro_batch_size: int,
    padded_vocab: int,
) -> None:
    for name, value in (
        ("tp", tp),
        ("pp", pp),
        ("cp", cp),
        ("dp", dp),
        ("seq_length", seq_length),
        ("micro_batch_size", micro_batch_size),
    ):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    divisors = (
        (arch.num_attention_heads, tp, "num_attention_heads", "TP"),
        (arch.num_query_groups, tp, "num_query_groups", "TP"),
        (arch.ffn_hidden_size, tp, "ffn_hidden_size", "TP"),
        (padded_vocab, tp, "padded_vocab", "TP"),
        (arch.num_layers, pp, "num_layers", "PP"),
        (seq_length, cp * tp if sp else cp, "seq_length", "CP×TP" if sp else "CP"),
    )
    for value, by, name, what in divisors:
        if value % by:
            raise ConfigError(f"{name}={value} is not divisible by {what}={by}")
    if sp and tp < 2:
        raise ConfigError("sequence parallelism needs TP > 1")
    if padded_vocab < arch.vocab_size:
        raise ConfigError(f"padded_vocab={padded_vocab} is smaller than the vocabulary {arch.vocab_size}")


def estimate_memory(
    arch: Qwen3Arch,
    *,
    tp: int = 1,
    pp: int = 1,
    cp: int = 1,
    sp: bool = False,
    dp: int = 1,
    distributed_optimizer: bool = False,
    seq_length: int,
    micro_batch_size: int = 1,
    params_dtype_bytes: int = 2,
    recompute: bool = False,
    padded_vocab: int,
) -> MemoryEstimate:
    """Per-GPU memory of training `arch` with Adam under this layout (see the module docstring).
    Activations are stored in the parameter dtype; `padded_vocab` is the padded size the model is built
    with (`megarec.models.qwen3.builder.padded_vocab_size`)."""
    _check_layout(arch, tp, pp, cp, sp, dp, seq_length, micro_batch_size, padded_vocab)
    params = local_params(arch, tp=tp, pp=pp, padded_vocab=padded_vocab)
    # Adam moments are fp32; the fp32 master copy exists only for lower-precision parameters.
    state_bytes = 2 * FP32_BYTES + (FP32_BYTES if params_dtype_bytes < FP32_BYTES else 0)
    optimizer = params * state_bytes
    if distributed_optimizer:
        optimizer = math.ceil(optimizer / (dp * cp))

    terms = layer_activation_terms(
        arch,
        tp=tp,
        cp=cp,
        sp=sp,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        act_bytes=params_dtype_bytes,
    )
    if recompute:
        terms["core_attention"] = 0
    per_layer = sum(terms.values())
    n = seq_length // cp * micro_batch_size
    n_hidden = n // tp if sp else n
    final_block = 2 * n_hidden * arch.hidden_size * params_dtype_bytes  # final RMSNorm and output-layer inputs
    return MemoryEstimate(
        weights=params * params_dtype_bytes,
        grads=params * FP32_BYTES,
        optimizer=optimizer,
        activations=arch.num_layers * per_layer + final_block,
        logits=n * (padded_vocab // tp) * FP32_BYTES,
        params=params,
        activations_per_layer=per_layer,
        core_attention_per_layer=terms["core_attention"],
    )


def choose_recompute(
    without: MemoryEstimate,
    with_recompute: MemoryEstimate,
    *,
    hbm_bytes: int = H100_HBM_BYTES,
    headroom: float = DEFAULT_HEADROOM,
) -> bool:
    """False when the layout fits without recomputation within (1 - headroom) of HBM, True when it fits
    only with it; ConfigError when it fits neither way."""
    budget = hbm_bytes * (1 - headroom)
    if without.total <= budget:
        return False
    if with_recompute.total <= budget:
        return True
    raise ConfigError(
        f"estimated {with_recompute.total / GIB:.1f} GiB per GPU even with recomputation, over the "
        f"{budget / GIB:.1f} GiB budget ({1 - headroom:.0%} of {hbm_bytes / GIB:.0f} GiB): "
        "use more TP/PP/CP or a shorter sequence"
    )


def estimate_for_config(
    cfg, *, dp: int, vocab_size: int | None = None, recompute: bool | None = None
) -> MemoryEstimate:
    """Estimate for a `PretrainConfig` on GPUs: architecture from its model section (`vocab_size` replaces the
    vocabulary, e.g. with the itemic-expanded one), layout from `parallel`, sequence and micro-batch from
    `train`, recomputation from `model.recompute_activations` unless given. Precision "auto" means bf16, as
    on a GPU."""
    from megarec.models.qwen3.builder import padded_vocab_size, resolve_arch

    arch = resolve_arch(cfg.model).replace(vocab_size=vocab_size)
    par = cfg.parallel
    tp = par.tensor_model_parallel_size
    return estimate_memory(
        arch,
        tp=tp,
        pp=par.pipeline_model_parallel_size,
        cp=par.context_parallel_size,
        sp=par.sequence_parallel,
        dp=dp,
        distributed_optimizer=par.use_distributed_optimizer,
        seq_length=cfg.train.seq_length,
        micro_batch_size=cfg.train.micro_batch_size,
        params_dtype_bytes=4 if cfg.model.dtype == "fp32" else 2,
        recompute=cfg.model.recompute_activations if recompute is None else recompute,
        padded_vocab=padded_vocab_size(arch.vocab_size, cfg.model.make_vocab_size_divisible_by, tp),
    )
