"""Compatibility shims that let Megatron-Core run on CPU (gloo); active only when CUDA is absent.

Megatron-Core assumes CUDA in a few places: the model-parallel RNG tracker saves CUDA RNG states,
new tensors are placed on `torch.cuda.current_device()`, the optimizer and DDP create tensors with
device="cuda" and call `.cuda()`, grad clipping asserts `grad.type() == "torch.cuda.FloatTensor"`,
the context-parallel slice of the rotary table builds its index in pinned memory, and the distributed
optimizer's checkpoint loading with plain torch AdamW (no apex / Transformer Engine fused Adam, i.e. every
CPU run) trips over Adam's `step` state.
`enable()` patches exactly those points; on a machine with CUDA it does nothing.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

_state = {"mode": None}


def needed() -> bool:
    return not torch.cuda.is_available()


def is_enabled() -> bool:
    return _state["mode"] is not None


def _patch_rng_tracker() -> None:
    """Model-parallel RNG tracker backed by the CPU generator instead of CUDA RNG states."""
    from megatron.core.tensor_parallel import random as mp_random

    def add(self, name, seed):
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        saved = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(saved)
        self.seeds_.add(seed)

    @contextlib.contextmanager
    def fork(self, name=mp_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        saved = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)

    def get_states(self):
        return {k: v.clone() for k, v in self.states_.items()}

    def set_states(self, states):
        self.states_ = {k: v.clone() for k, v in states.items()}

    tracker = mp_random.CudaRNGStatesTracker
    tracker.add, tracker.fork = add, fork
    tracker.get_states, tracker.set_states = get_states, set_states


def _patch_cp_rotary_slice() -> None:
    """RoPE's per-CP-rank slice of the position table, with its index on the table's device (the original
    pins host memory and calls .cuda(), which needs a GPU even inside the forward pass)."""
    from megatron.core.models.common.embeddings import rope_utils, rotary_pos_embedding

    def get_pos_emb_on_this_cp_rank(pos_emb, seq_dim, cp_group):
        cp_size, cp_rank = cp_group.size(), cp_group.rank()
        index = torch.tensor([cp_rank, 2 * cp_size - cp_rank - 1], device=pos_emb.device)
        pos_emb = pos_emb.view(*pos_emb.shape[:seq_dim], 2 * cp_size, -1, *pos_emb.shape[seq_dim + 1 :])
        pos_emb = pos_emb.index_select(seq_dim, index)
        return pos_emb.view(*pos_emb.shape[:seq_dim], -1, *pos_emb.shape[seq_dim + 2 :])

    rope_utils.get_pos_emb_on_this_cp_rank = get_pos_emb_on_this_cp_rank
    rotary_pos_embedding.get_pos_emb_on_this_cp_rank = get_pos_emb_on_this_cp_rank


def _patch_torch_adam_distributed_optimizer() -> None:
    """Three gaps of Megatron-Core 0.16's DistributedOptimizer on its torch-AdamW path (taken only without
    apex / TE fused Adam), each of which breaks resuming: (1) building the loading state dict reads Adam's
    `step` from per-parameter state a fresh optimizer has not allocated yet — allocate it (step 0, zero
    moments; the load overwrites them); (2) `fully_reshardable` loading copies every per-parameter state
    entry from the checkpoint, which stores no `step` — copy only what the checkpoint holds; (3) the loaded
    step is one tensor shared by every parameter, so each optimizer step advances it once per parameter and
    Adam's bias correction runs ahead — give each parameter its own copy."""
    from megatron.core.optimizer import distrib_optimizer

    if distrib_optimizer.HAVE_APEX_OR_TE:
        return
    cls = distrib_optimizer.DistributedOptimizer
    original_sharded_state_dict = cls.sharded_state_dict
    original_load_state_dict = cls.load_state_dict
    original_set_states = cls._set_main_param_and_optimizer_states

    def sharded_state_dict(self, model_sharded_state_dict=None, is_loading=False, *args, **kwargs):
        inner = self.optimizer
        if is_loading and isinstance(inner, torch.optim.Adam) and not inner.state:
            for group in inner.param_groups:
                for p in group["params"]:
                    inner.state[p] = {
                        "step": torch.tensor(0.0),
                        "exp_avg": torch.zeros_like(p),
                        "exp_avg_sq": torch.zeros_like(p),
                    }
        return original_sharded_state_dict(self, model_sharded_state_dict or {}, is_loading, *args, **kwargs)

    def set_main_param_and_optimizer_states(self, model_param, tensors):
        if self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            return original_set_states(self, model_param, tensors)
        group_index, group_order = self.model_param_group_index_map[model_param]
        main_param = self.optimizer.param_groups[group_index]["params"][group_order]
        destination = {"param": main_param, **self.optimizer.state[main_param]}
        for key, value in tensors.items():
            destination[key].copy_(value)

    def load_state_dict(self, state_dict):
        original_load_state_dict(self, state_dict)
        for param_state in self.optimizer.state.values():
            if isinstance(param_state.get("step"), torch.Tensor):
                param_state["step"] = param_state["step"].clone()

    cls.sharded_state_dict = sharded_state_dict
    cls._set_main_param_and_optimizer_states = set_main_param_and_optimizer_states
    cls.load_state_dict = load_state_dict


class _NullStream:
    """Stands in for a CUDA stream: every method is a no-op."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class CudaToCpuMode(TorchFunctionMode):
    """Routes device="cuda" (or an int device) to the CPU, makes `.cuda()` a no-op and reports
    CPU float tensors with their CUDA type name (Megatron's grad clipping checks it)."""

    @staticmethod
    def _cpu(device):
        if isinstance(device, int) and not isinstance(device, bool):
            return torch.device("cpu")
        if isinstance(device, (str, torch.device)) and str(device).startswith("cuda"):
            return torch.device("cpu")
        return device

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs:
            kwargs["device"] = self._cpu(kwargs["device"])
        if func is torch.Tensor.to and len(args) > 1 and not isinstance(args[1], (torch.dtype, torch.Tensor)):
            args = (args[0], self._cpu(args[1]), *args[2:])
        return func(*args, **kwargs)


def enable() -> bool:
    """Install the shims if CUDA is absent. Idempotent. Returns True when shims are active."""
    if not needed():
        return False
    if is_enabled():
        return True
    _patch_rng_tracker()
    _patch_cp_rotary_slice()
    _patch_torch_adam_distributed_optimizer()
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_stream = lambda *a, **k: _NullStream()
    mode = CudaToCpuMode()
    mode.__enter__()
    _state["mode"] = mode
    return True


@contextlib.contextmanager
def suspended():
    """Run a block without the CUDA→CPU function mode (it costs a Python call per torch op).
    Safe around model forward passes, which create no tensors on "cuda" by name."""
    mode = _state["mode"]
    if mode is None:
        yield
        return
    mode.__exit__(None, None, None)
    try:
        yield
    finally:
        mode.__enter__()
