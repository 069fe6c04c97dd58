"""`megarec convert verify`: megarec's Megatron model (loaded from a dist checkpoint, at any TP/PP)
and the HF model give the same fp32 logits on the same random tokens.

Single process for TP=PP=1; for TP/PP run it under torchrun with TP×PP processes. Each pipeline stage
runs its layers and hands the hidden states on; the last stage's vocab-parallel logits are gathered
over TP, the padding columns are dropped and one rank (last stage, TP rank 0) compares them with
the HF model and prints one JSON line. The exit status is non-zero when a threshold is not met.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from megarec.common.errors import ConfigError
from megarec.models.qwen3.hf_config import read_qwen3_config


def compare_logits(ref: torch.Tensor, test: torch.Tensor, tokens: torch.Tensor) -> dict:
    """Agreement metrics of two [b, s, V] logit tensors (ref = HF)."""
    a, b = ref.double().reshape(-1), test.double().reshape(-1)
    cosine = float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))
    diff = (ref.double() - test.double()).abs()
    v = ref.shape[-1]
    labels = tokens[:, 1:].reshape(-1)

    def loss(logits):
        return float(torch.nn.functional.cross_entropy(logits[:, :-1].double().reshape(-1, v), labels))

    return {
        "cosine": cosine,
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "top1_agreement": float((ref.argmax(-1) == test.argmax(-1)).double().mean()),
        "hf_loss": loss(ref),
        "mcore_loss": loss(test),
        "logit_abs_max": float(ref.abs().max()),
    }


def check_thresholds(
    metrics: dict, min_cosine: float, max_abs_diff: Optional[float], min_top1_agreement: Optional[float]
) -> list[str]:
    failed = []
    if not metrics["cosine"] >= min_cosine:  # written so that NaN fails
        failed.append(f"cosine {metrics['cosine']:.6g} < {min_cosine}")
    if max_abs_diff is not None and not metrics["max_abs_diff"] <= max_abs_diff:
        failed.append(f"max_abs_diff {metrics['max_abs_diff']:.3g} > {max_abs_diff}")
    if min_top1_agreement is not None and not metrics["top1_agreement"] >= min_top1_agreement:
        failed.append(f"top1_agreement {metrics['top1_agreement']:.4f} < {min_top1_agreement}")
    return failed


def _checkpoint_facts(ckpt_dir: str) -> tuple[Optional[int], bool]:
    """(padded vocab, has an untied output layer) from the checkpoint metadata."""
    from megatron.core import dist_checkpointing

    from megarec.runtime.megatron_checkpoint import read_common_state

    padded = read_common_state(ckpt_dir).get("padded_vocab_size")
    meta = dist_checkpointing.load_tensors_metadata(ckpt_dir)
    if padded is None and "embedding.word_embeddings.weight" in meta:
        padded = meta["embedding.word_embeddings.weight"].global_shape[0]
    return (int(padded) if padded is not None else None), "output_layer.weight" in meta


def _pipeline_forward(model, tokens, positions, mask, hidden_size: int, device):
    """Forward through this rank's pipeline stage; returns logits on the last stage, else None."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megarec.runtime import cpu_shims

    b, s = tokens.shape
    if not ps.is_pipeline_first_stage():
        hidden = torch.empty(s, b, hidden_size, dtype=torch.float32, device=device)
        dist.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
        model.set_input_tensor(hidden)
    with cpu_shims.suspended():
        out = model(tokens, positions, mask)
    if not ps.is_pipeline_last_stage():
        dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
        return None
    return out


def verify(
    hf_dir: str,
    mcore_dir: str,
    tp: int = 1,
    pp: int = 1,
    seq_length: int = 32,
    batch_size: int = 2,
    seed: int = 1234,
    min_cosine: float = 0.9999,
    max_abs_diff: Optional[float] = None,
    min_top1_agreement: Optional[float] = None,
    local_attention: str = "sdpa",
) -> tuple[Optional[dict], bool]:
    """(metrics on the reporting rank else None, passed) — collective under torchrun."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    from megarec.models.config import ModelConfig
    from megarec.models.qwen3 import builder as qwen3
    from megarec.models.qwen3.specs import needs_explicit_causal_mask
    from megarec.runtime.config import ParallelConfig
    from megarec.runtime.distributed import world_size_from_env
    from megarec.runtime.megatron_checkpoint import load_model_weights, resolve_checkpoint_dir
    from megarec.runtime.megatron_parallel import init_megatron, shutdown_megatron

    if seq_length < 2 or batch_size < 1:
        raise ConfigError("--seq-length must be >= 2 and --batch-size >= 1")
    arch, _ = read_qwen3_config(hf_dir)
    parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    world = world_size_from_env()
    if world < tp * pp:
        raise ConfigError(
            f"verify at TP={tp}, PP={pp} needs {tp * pp} processes, this is {world}: run "
            f"torchrun --nproc_per_node {tp * pp} -m megarec convert verify ..."
        )
    qwen3.validate_layout(arch, parallel, "local", world)
    ckpt_dir = resolve_checkpoint_dir(mcore_dir)
    padded, untied = _checkpoint_facts(ckpt_dir)
    if padded is None or padded < arch.vocab_size:
        raise ConfigError(
            f"{ckpt_dir}: checkpoint vocabulary ({padded} rows) is smaller than the HF vocab_size {arch.vocab_size}"
        )
    if padded % tp:
        raise ConfigError(f"{ckpt_dir}: padded vocabulary {padded} cannot be split over TP={tp}")
    if untied == arch.tie_word_embeddings:
        raise ConfigError(
            f"{hf_dir} has tie_word_embeddings={arch.tie_word_embeddings} but the checkpoint "
            f"{'has' if untied else 'has no'} separate output layer"
        )

    init_megatron(parallel, seed)
    try:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        tconfig = qwen3.build_transformer_config(
            arch, ModelConfig(dtype="fp32", local_attention=local_attention), parallel, "local"
        )
        tconfig.perform_initialization = False
        (model,) = qwen3.build_model_chunks(arch, tconfig, "local", padded, seq_length, local_attention)
        if device.type == "cuda":
            model.cuda(device)
        load_model_weights(ckpt_dir, [model])
        model.eval()

        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, arch.vocab_size, (batch_size, seq_length), generator=gen)
        positions = torch.arange(seq_length).unsqueeze(0).expand(batch_size, -1)
        mask = None
        if needs_explicit_causal_mask("local", local_attention):
            mask = torch.triu(torch.ones(1, 1, seq_length, seq_length, dtype=torch.bool), diagonal=1)
        with torch.no_grad():
            logits = _pipeline_forward(
                model,
                tokens.to(device),
                positions.to(device),
                None if mask is None else mask.to(device),
                arch.hidden_size,
                device,
            )
            if logits is not None:
                logits = gather_from_tensor_model_parallel_region(logits)[..., : arch.vocab_size].float().cpu()
        reporter = (
            ps.is_pipeline_last_stage()
            and ps.get_tensor_model_parallel_rank() == 0
            and ps.get_data_parallel_rank() == 0
        )
        metrics, passed = None, False
        if reporter:
            hf_logits = _hf_logits(hf_dir, tokens)
            metrics = compare_logits(hf_logits, logits, tokens)
            failed = check_thresholds(metrics, min_cosine, max_abs_diff, min_top1_agreement)
            passed = not failed
            metrics.update(
                ok=passed,
                failed=failed,
                tp=tp,
                pp=pp,
                vocab_size=arch.vocab_size,
                padded_vocab_size=padded,
                tokens=batch_size * seq_length,
                thresholds={
                    "min_cosine": min_cosine,
                    "max_abs_diff": max_abs_diff,
                    "min_top1_agreement": min_top1_agreement,
                },
                hf_dir=hf_dir,
                mcore_dir=ckpt_dir,
            )
            metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
        flag = torch.tensor([1.0 if passed else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # only the reporter can set it
        return metrics, bool(flag.item() > 0)
    finally:
        shutdown_megatron()


def _hf_logits(hf_dir: str, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        out = model(input_ids=tokens).logits.float()
    del model
    return out
