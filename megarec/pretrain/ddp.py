"""Megatron DDP around the model chunks, the schedule hooks that overlap gradient reduction and
parameter gathering with compute, and the parameter-sync points those overlaps require.

Mirrors Megatron-LM's `megatron/training/training.py`:
1. `no_sync_func` / `grad_sync_func` / `param_sync_func` are lists over chunks, unwrapped to the bare
   callable when there is one chunk (the non-interleaved schedules call it directly).
2. Gradient buckets exist only with `overlap_grad_reduce` (max(40M, 1M × DP·CP) parameters each);
   without it, one bucket per chunk.
3. With the distributed optimizer and `overlap_param_gather`, the all-gather of updated parameters is
   deferred to the forward pre-hooks of the next step. So: hooks stay off until the first step has
   succeeded (a bad load never spreads through the first all-gather), parameters are synced before
   every checkpoint save and evaluation, and at the end of training.
"""

from __future__ import annotations

import contextlib

from megarec.runtime.config import ParallelConfig


def _unwrap_single(funcs: list):
    return funcs[0] if len(funcs) == 1 else funcs


def wrap_model(chunks: list, tconfig, parallel: ParallelConfig) -> list:
    """Megatron DDP per chunk, with the schedule hooks wired into `tconfig`."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=parallel.overlap_grad_reduce,
        overlap_param_gather=parallel.overlap_param_gather,
        align_param_gather=parallel.overlap_param_gather and bool(parallel.virtual_pipeline_model_parallel_size),
        use_distributed_optimizer=parallel.use_distributed_optimizer,
    )
    if parallel.overlap_grad_reduce:
        ddp_config.bucket_size = max(
            40_000_000, 1_000_000 * ps.get_data_parallel_world_size(with_context_parallel=True)
        )
    model = [
        DistributedDataParallel(config=tconfig, ddp_config=ddp_config, module=c, disable_bucketing=(i > 0))
        for i, c in enumerate(chunks)
    ]
    # Sums partial grads of TP-replicated params (QK-norms), all-reduces DP×CP and embedding grads and
    # divides by the global token count.
    tconfig.finalize_model_grads_func = finalize_model_grads
    if parallel.overlap_grad_reduce:
        tconfig.no_sync_func = _unwrap_single([m.no_sync for m in model])
        tconfig.grad_sync_func = _unwrap_single([m.start_grad_sync for m in model])
    if ddp_config.align_param_gather:
        tconfig.param_sync_func = _unwrap_single([m.start_param_sync for m in model])
    return model


class ParamGatherControl:
    """The parameter-sync points of overlapped parameter gathering (a no-op without it)."""

    def __init__(self, model: list, tconfig, parallel: ParallelConfig):
        self.model = model
        self.tconfig = tconfig
        self.active = parallel.use_distributed_optimizer and parallel.overlap_param_gather
        self.hooks_on = True
        self._param_sync_func = None
        if self.active:
            for m in model:
                m.disable_forward_pre_hook(param_sync=False)
            self._param_sync_func, tconfig.param_sync_func = tconfig.param_sync_func, None
            self.hooks_on = False

    def step_succeeded(self) -> None:
        """After the first good step: from now on the next forward gathers what the optimizer updated."""
        if self.active and not self.hooks_on:
            for m in self.model:
                m.enable_forward_pre_hook()
            self.tconfig.param_sync_func = self._param_sync_func
            self.hooks_on = True

    def sync(self) -> None:
        """Make every rank's full parameters current (before a checkpoint is written)."""
        if self.active:
            for m in self.model:
                m.start_param_sync(force_sync=True)

    @contextlib.contextmanager
    def hooks_off(self):
        """Parameters synced and pre-hooks removed for the block (evaluation), restored after it."""
        if not (self.active and self.hooks_on):
            yield
            return
        for m in self.model:
            m.disable_forward_pre_hook(param_sync=True)
        try:
            yield
        finally:
            for m in self.model:
                m.enable_forward_pre_hook()

    def finish(self) -> None:
        if self.active and self.hooks_on:
            for m in self.model:
                m.disable_forward_pre_hook(param_sync=True)
            self.hooks_on = False
