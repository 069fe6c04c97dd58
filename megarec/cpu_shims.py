"""Compatibility shims that let Megatron-Core run on CPU (gloo); active only when CUDA is absent.

Megatron-Core assumes CUDA in a few places: the model-parallel RNG tracker saves CUDA RNG states,
new tensors are placed on `torch.cuda.current_device()`, the optimizer and DDP create tensors with
device="cuda" and call `.cuda()`, and grad clipping asserts `grad.type() == "torch.cuda.FloatTensor"`.
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
