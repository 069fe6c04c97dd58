"""The pre-training loop on Megatron-Core: builds the model for this pipeline rank, wraps it in
Megatron DDP, trains with the pipeline schedule, logs, checkpoints and handles exit signals."""

from __future__ import annotations

import os
import time
from functools import partial
from typing import Optional

import torch

from megarec.common.config import to_dict
from megarec.common.errors import ConfigError
from megarec.common.outdir import check_writable
from megarec.models.qwen3 import builder as qwen3
from megarec.models.qwen3.flops import flops_per_token
from megarec.models.qwen3.specs import needs_explicit_causal_mask
from megarec.pretrain.batch import check_seq_length, make_batch_preparer
from megarec.pretrain.config import PretrainConfig
from megarec.pretrain.data import build_datasets, make_loader, read_itemic_range
from megarec.pretrain.ddp import ParamGatherControl, wrap_model
from megarec.pretrain.freezing import apply_itemic_freeze, mask_frozen_row_grads, row_frozen_param_names
from megarec.pretrain.optimizer import build_optimizer, build_scheduler
from megarec.runtime import checkpoint_dir, cpu_shims, megatron_lm_compat
from megarec.runtime import megatron_checkpoint as ckpt
from megarec.runtime.config import check_shared
from megarec.runtime.config import checkpoint_dir as checkpoint_root
from megarec.runtime.distributed import world_size_from_env
from megarec.runtime.loop import Cadence, RunSummary, StepLoop, check_finite
from megarec.runtime.megatron_parallel import init_megatron, shutdown_megatron
from megarec.runtime.rundir import open_run


def validate(cfg: PretrainConfig, world_size: int):
    """Every check that needs no process group, so bad configs fail before anything starts."""
    arch, impl = qwen3.setup(cfg.model, cfg.parallel, world_size)
    dp = world_size // cfg.parallel.model_parallel_size
    t = cfg.train
    for key, value in (
        ("train.micro_batch_size", t.micro_batch_size),
        ("train.global_batch_size", t.global_batch_size),
        ("train.seq_length", t.seq_length),
    ):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} must be a multiple of "
            f"micro_batch_size × data-parallel size = {t.micro_batch_size} × {dp}"
        )
    check_shared(t, cfg.checkpoint, cfg.logging)
    if cfg.data.cache_dir:
        check_writable(cfg.data.cache_dir, "data.cache_dir")
    check_seq_length(t.seq_length, cfg.parallel)
    p = cfg.parallel
    if p.overlap_param_gather and not (p.use_distributed_optimizer and p.overlap_grad_reduce):
        raise ConfigError(
            "parallel.overlap_param_gather needs parallel.use_distributed_optimizer=true and "
            "parallel.overlap_grad_reduce=true (as in Megatron-LM)"
        )
    if not cfg.data.mock and not cfg.data.data_path:
        raise ConfigError("no training data: set data.data_path=PREFIX (or a 'W1 P1 W2 P2' blend) or data.mock=true")
    if cfg.data.loss_mask and cfg.data.mock:
        raise ConfigError("data.loss_mask needs real chat datasets, not mock data")
    from megarec.pretrain.data import check_data_sources

    check_data_sources(cfg.data, t)
    if impl == "transformer_engine" and cfg.data.reset_attention_mask:
        # TE's fused attention with the causal mask type ignores an explicit attention_mask, so documents
        # would silently attend to each other; per-document attention there is the THD path of packed data.
        raise ConfigError(
            "data.reset_attention_mask needs an explicit attention mask, which Transformer Engine "
            "ignores: preprocess with --pack and train with data.packed=true (THD), or use "
            "model.transformer_impl=local"
        )
    if uses_thd(cfg, impl) and cfg.parallel.context_parallel_size > 1:
        raise ConfigError(
            "data.packed with context_parallel_size > 1 under Transformer Engine is not supported "
            "yet (THD packs would need per-document padding to 2 × CP); use CP=1 for packed data"
        )
    if not 0.0 <= cfg.optimizer.warmup_fraction < 1.0:
        raise ConfigError("optimizer.warmup_fraction must be in [0, 1)")
    return arch, impl


def uses_thd(cfg: PretrainConfig, impl: str) -> bool:
    """Packed data under Transformer Engine runs in the THD layout (cu_seqlens); the local spec keeps the
    explicit block-diagonal mask."""
    return cfg.data.packed and impl == "transformer_engine"


def itemic_range(cfg: PretrainConfig) -> tuple[int, int]:
    f = cfg.freeze
    if f.first_id is not None and f.last_id is not None:
        return f.first_id, f.last_id
    found = read_itemic_range(cfg.data)
    if found is None:
        raise ConfigError(
            "freeze.stage=itemic needs the itemic id range: set data.itemic (itemic.json), a "
            "data.tokenizer holding itemic.json, or freeze.first_id/freeze.last_id"
        )
    return found


def _padded_vocab(cfg: PretrainConfig, vocab_size: int, resume_from: Optional[str]) -> int:
    """Megatron's padding rule, unless a checkpoint being loaded already has a padding compatible
    with this TP (then keep it, so checkpoints reshard across TP without reshaping the vocabulary)."""
    tp = cfg.parallel.tensor_model_parallel_size
    if resume_from:
        saved = ckpt.checkpoint_padded_vocab(resume_from)  # megarec's or Megatron-LM's record
        if saved is not None:
            if saved < vocab_size or saved % tp:
                raise ConfigError(
                    f"checkpoint vocabulary ({saved} rows) cannot be split over TP={tp} or is "
                    f"smaller than the model vocabulary {vocab_size}"
                )
            return saved
    return qwen3.padded_vocab_size(vocab_size, cfg.model.make_vocab_size_divisible_by, tp)


def _checkpoint_source(cfg: PretrainConfig) -> tuple[Optional[str], bool]:
    """(path, is_resume). Resume (checkpoint.resume_from, else checkpoint.dir) wins over init_from. A checkpoint
    without optimizer state (e.g. `convert hf-to-mcore` output given as checkpoint.resume_from) holds weights
    only: it starts the run as init_from does."""
    import torch.distributed as dist

    c = cfg.checkpoint
    roots = [c.resume_from, checkpoint_root(c, cfg.logging)] if c.resume else []
    for root in roots:
        if root and (
            checkpoint_dir.read_latest(root) is not None or os.path.isfile(os.path.join(root, "metadata.json"))
        ):
            if ckpt.has_optimizer_state(root):
                megatron_lm_compat.refuse_resume(ckpt.read_common_state(ckpt.resolve_checkpoint_dir(root)), root)
                return root, True
            if dist.get_rank() == 0:
                print(
                    f"megarec: {ckpt.resolve_checkpoint_dir(root)} holds weights only (no optimizer state): "
                    "starting from its weights at iteration 0, as checkpoint.init_from does",
                    flush=True,
                )
            return root, False
    if c.resume_from:
        raise ConfigError(f"checkpoint.resume_from={c.resume_from} holds no checkpoint")
    if c.init_from:
        ckpt.resolve_checkpoint_dir(c.init_from)
        return c.init_from, False
    return None, False


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Sum of masked token losses and the token count; Megatron divides gradients by the global count
    (all micro-batches and DP ranks) because calculate_per_token_loss is on."""
    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.float().reshape(-1)
    loss_sum = torch.sum(losses * mask)
    count = mask.sum()
    return loss_sum, count.to(torch.int), {"lm loss": torch.stack([loss_sum.detach(), count.detach()])}


def _make_forward_step(device: torch.device, explicit_mask: bool, thd: bool):
    prepare = make_batch_preparer(device, explicit_mask, thd)

    def forward_step(data_iterator, model):
        batch = prepare(next(data_iterator))
        with cpu_shims.suspended():
            output = model(
                batch["tokens"],
                batch["position_ids"],
                batch["attention_mask"],
                labels=batch["labels"],
                packed_seq_params=batch.get("packed_seq_params"),
            )
        return output, partial(_loss_func, batch["loss_mask"])

    return forward_step


def _reduce_loss(results: list, device) -> tuple[float, float]:
    """(loss, tokens) of the global batch, identical on every rank. Context-parallel ranks hold disjoint
    parts of each sequence, so sums run over the data-parallel × context-parallel group."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    total = torch.zeros(2, dtype=torch.float64, device=device)
    if ps.is_pipeline_last_stage(ignore_virtual=True):
        for r in results:
            total += r["lm loss"].to(device, torch.float64)
        dist.all_reduce(total, group=ps.get_data_parallel_group(with_context_parallel=True))
    dist.all_reduce(total, group=ps.get_pipeline_model_parallel_group())
    loss_sum, count = total.tolist()
    return (loss_sum / count if count else float("nan")), count


def _run_schedule(chunks, forward_step, loader_iter, num_microbatches, cfg, forward_only):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    vp = cfg.parallel.virtual_pipeline_model_parallel_size
    if vp:
        # Every chunk reads its own copy of the stream; on gloo, one batch list per micro-batch.
        batches = [next(loader_iter) for _ in range(num_microbatches)]
        data = [iter(batches) for _ in chunks]
    else:
        data = loader_iter
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=data,
        model=chunks,
        num_microbatches=num_microbatches,
        seq_length=cfg.train.seq_length,
        micro_batch_size=cfg.train.micro_batch_size,
        forward_only=forward_only,
    )


def run_pretrain(cfg: PretrainConfig) -> RunSummary:
    world = world_size_from_env()
    arch, impl = validate(cfg, world)
    freeze_range = itemic_range(cfg) if cfg.freeze.stage == "itemic" else None
    init_megatron(cfg.parallel, cfg.train.seed)
    try:
        return _train(cfg, arch, impl, freeze_range)
    finally:
        shutdown_megatron()


def _train(cfg: PretrainConfig, arch, impl, freeze_range) -> RunSummary:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    rank0 = dist.get_rank() == 0
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    run_dir = cfg.logging.run_dir
    save_root = checkpoint_root(cfg.checkpoint, cfg.logging)

    source, is_resume = _checkpoint_source(cfg)
    if rank0:
        start = f"resuming from {ckpt.resolve_checkpoint_dir(source)}; " if is_resume else ""
        print(f"megarec: {start}checkpoints go to {os.path.abspath(save_root)} (checkpoint.dir)", flush=True)
    padded_vocab = _padded_vocab(cfg, arch.vocab_size, source)
    tconfig = qwen3.build_transformer_config(arch, cfg.model, cfg.parallel, impl)
    chunks = qwen3.build_model_chunks(
        arch, tconfig, impl, padded_vocab, cfg.train.seq_length, cfg.model.local_attention
    )
    if torch.cuda.is_available():
        for c in chunks:
            c.cuda(torch.cuda.current_device())

    row_masks = []
    if freeze_range is not None:
        train_output = cfg.freeze.train_output_rows
        if train_output is None:
            train_output = not arch.tie_word_embeddings
        row_masks = apply_itemic_freeze(
            chunks,
            *freeze_range,
            train_output,
            arch.tie_word_embeddings,
            ps.get_tensor_model_parallel_rank(),
            padded_vocab,
        )

    model = wrap_model(chunks, tconfig, cfg.parallel)
    optimizer = build_optimizer(
        model,
        cfg.optimizer,
        tconfig.params_dtype,
        cfg.parallel.use_distributed_optimizer,
        row_frozen_param_names(row_masks),
    )
    scheduler = build_scheduler(optimizer, cfg.optimizer, cfg.train)

    vp = cfg.parallel.virtual_pipeline_model_parallel_size
    iteration, consumed, optimizer_loaded, resumed_from = 0, 0, False, None
    if source and is_resume:
        state = ckpt.load_checkpoint(
            source,
            chunks,
            None if cfg.checkpoint.no_load_optim else optimizer,
            scheduler,
            vp,
            load_rng=not cfg.checkpoint.no_load_rng,
        )
        iteration, consumed, optimizer_loaded = state.iteration, state.consumed_samples, state.optimizer_loaded
        resumed_from = state.path
        if rank0:
            print(
                f"megarec: resumed from {state.path} at iteration {iteration} "
                f"({consumed} samples consumed{'' if state.rng_restored else ', RNG not restored: new layout'}"
                f"{'' if optimizer_loaded else ', no optimizer state: fresh optimizer from the loaded weights'})",
                flush=True,
            )
    elif source:
        path = ckpt.load_model_weights(source, chunks)
        if rank0:
            print(f"megarec: initialised weights from {path}", flush=True)
    if source and not optimizer_loaded:
        # The optimizer keeps fp32 main copies of bf16 params, made from the random init: refresh them from
        # the loaded weights, or step 1 would write the random init back (weights-only checkpoints, e.g.
        # `convert hf-to-mcore` output given as checkpoint.resume_from, and init_from).
        optimizer.reload_model_params()
    param_gather = ParamGatherControl(model, tconfig, cfg.parallel)

    dp_size, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    thd = uses_thd(cfg, impl)
    datasets = build_datasets(cfg.data, cfg.train, arch.vocab_size, run_dir, thd)
    total_samples = cfg.train.steps * cfg.train.global_batch_size
    loader_iter = iter(
        make_loader(datasets.train, consumed, total_samples, cfg.train, dp_rank, dp_size, cfg.data.num_workers)
    )
    num_microbatches = cfg.train.global_batch_size // (cfg.train.micro_batch_size * dp_size)
    forward_step = _make_forward_step(device, needs_explicit_causal_mask(impl, cfg.model.local_attention), thd)
    tokens_per_step = cfg.train.global_batch_size * cfg.train.seq_length
    flops_token = flops_per_token(arch, cfg.train.seq_length, padded_vocab)
    peak_tflops = _mfu_peak(cfg)
    samples = {"consumed": consumed}

    def train_step(step: int) -> dict:
        started = time.perf_counter()
        for m in model:
            m.zero_grad_buffer()
        optimizer.zero_grad()
        results = _run_schedule(model, forward_step, loader_iter, num_microbatches, cfg, forward_only=False)
        loss, n_tokens = _reduce_loss(results, device)
        check_finite("loss", loss, "before the optimizer step")
        mask_frozen_row_grads(row_masks)
        scheduler.step(1)  # first: step k trains at the schedule's rate for step k (megarec.runtime.schedule)
        _, grad_norm, _ = optimizer.step()
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        check_finite("gradient norm", grad_norm, f"(loss {loss:.4f})")
        param_gather.step_succeeded()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.perf_counter() - started  # the training step only: evaluation and saving are timed apart
        samples["consumed"] += cfg.train.global_batch_size
        tflops = flops_token * tokens_per_step / dt / dist.get_world_size() / 1e12
        record = {
            "loss": loss,
            "lr": optimizer.param_groups[0]["lr"],
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_step / dt,
            "step_time_s": dt,
            "loss_tokens": int(n_tokens),
            "consumed_samples": samples["consumed"],
            "tflops_per_device": tflops,
        }
        if peak_tflops is not None:
            record["mfu"] = tflops / peak_tflops[1]
            record["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return record

    def validate_fn(step: int) -> dict:
        with param_gather.hooks_off():
            return {
                "valid_loss": _evaluate(
                    model, datasets.valid, forward_step, cfg, dp_rank, dp_size, num_microbatches, device
                )
            }

    def save(step: int) -> str:
        param_gather.sync()  # overlapped param gathering leaves non-owned shards stale until the next forward
        return ckpt.save_checkpoint(
            save_root,
            step,
            chunks,
            optimizer,
            scheduler,
            samples["consumed"],
            padded_vocab,
            vp,
            extra={"config": to_dict(cfg)},
            keep_last=cfg.checkpoint.keep_last,
        )

    cadence = Cadence(
        cfg.train.steps,
        cfg.logging.log_interval,
        cfg.train.eval_interval,
        cfg.checkpoint.save_interval,
        cfg.train.exit_interval,
    )
    with open_run(cfg, cfg.logging, rank0, cfg.train.steps, iteration, cfg.train.exit_signals) as run:
        loop = StepLoop(cadence, run.logger, run.signals, "pretrain", rank0)
        summary = loop.run(
            iteration, train_step, save, validate_fn if datasets.valid is not None else None, resumed_from
        )
        if summary.final_step == iteration == cfg.train.steps and not resumed_from:
            summary.checkpoint = save(iteration)  # nothing to train: keep the starting point as a checkpoint
        param_gather.finish()
    return summary


def _mfu_peak(cfg: PretrainConfig) -> Optional[tuple[str, float]]:
    """(name, TFLOP/s) of the per-GPU peak MFU is measured against — FP8's when model.fp8 is set — announced
    once on rank 0; None without a GPU (no MFU on CPUs)."""
    import torch.distributed as dist

    if not torch.cuda.is_available():
        return None
    fp8 = bool(cfg.model.fp8)
    peak = ("fp8", cfg.logging.gpu_peak_tflops_fp8) if fp8 else ("bf16", cfg.logging.gpu_peak_tflops)
    if dist.get_rank() == 0:
        key = "logging.gpu_peak_tflops_fp8" if fp8 else "logging.gpu_peak_tflops"
        print(
            f"megarec: MFU is model TFLOP/s per GPU (causal attention counted as half of S²) over the dense "
            f"{peak[0]} peak of {peak[1]:g} TFLOP/s ({key})",
            flush=True,
        )
    return peak


def _evaluate(model, dataset, forward_step, cfg, dp_rank, dp_size, num_microbatches, device) -> float:
    total = cfg.train.eval_iters * cfg.train.global_batch_size
    loader_iter = iter(make_loader(dataset, 0, total, cfg.train, dp_rank, dp_size, 0))
    for m in model:
        m.eval()
    sums = [0.0, 0.0]
    with torch.no_grad():
        for _ in range(cfg.train.eval_iters):
            results = _run_schedule(model, forward_step, loader_iter, num_microbatches, cfg, forward_only=True)
            loss, count = _reduce_loss(results, device)
            sums[0] += loss * count
            sums[1] += count
    for m in model:
        m.train()
    return sums[0] / sums[1] if sums[1] else float("nan")
