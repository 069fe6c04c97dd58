"""Save and resume with Megatron-Core dist_checkpointing (torch_dist format, loadable at another TP/PP).

Layout: `<root>/iter_0000100/` (one dist checkpoint) and `<root>/latest_checkpointed_iteration.txt`.
A checkpoint is written to `iter_XXXXXXX.tmp/`, renamed when every rank has finished, and only then
does the `latest` pointer move, so an interrupted save never looks complete.
State: model chunks, optimizer (reshardable across TP/PP/DP), LR scheduler, RNG (restored only at the
same layout), iteration and consumed samples.
"""
from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from megarec.common.errors import ConfigError
from megarec.runtime import megatron_lm_compat

TRACKER_FILE = "latest_checkpointed_iteration.txt"
FORMAT_VERSION = 1


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def read_latest_iteration(root: str) -> Optional[int]:
    path = os.path.join(root, TRACKER_FILE)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    if not text.isdigit():
        raise ConfigError(f"{path}: expected an iteration number, found '{text}'")
    return int(text)


def resolve_checkpoint_dir(path: str) -> str:
    """A checkpoint root (with a latest pointer) or one iteration directory → the iteration directory."""
    latest = read_latest_iteration(path)
    if latest is not None:
        path = iteration_dir(path, latest)
    if not os.path.isfile(os.path.join(path, "metadata.json")):
        raise ConfigError(f"{path} is not a complete Megatron dist checkpoint (no metadata.json)")
    return path


def read_common_state(ckpt_dir: str) -> dict:
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load_common_state_dict(ckpt_dir)


@dataclass
class Layout:
    tp: int
    pp: int
    vp: Optional[int]

    @classmethod
    def current(cls, vp: Optional[int]) -> "Layout":
        from megatron.core import parallel_state as ps

        return cls(ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size(), vp)

    def as_dict(self) -> dict:
        return {"tp": self.tp, "pp": self.pp, "vp": self.vp}


def _model_key(index: int, count: int) -> str:
    return "model" if count == 1 else f"model{index}"


def _model_sharded_state(chunks: list) -> dict:
    return {_model_key(i, len(chunks)): c.sharded_state_dict() for i, c in enumerate(chunks)}


def _rng_sharded_object():
    """RNG states as one object per (PP, TP) position. Data-parallel and context-parallel ranks of a position
    are replicas (only replica 0 writes), as in Megatron-LM: counting CP ranks as replicas too keeps two CP
    ranks from writing the same key."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    pp, tp = ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()
    return ShardedObject("rng_state", state, (pp, tp),
                         (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
                         replica_id=ps.get_data_parallel_rank(with_context_parallel=True))


def _restore_rng(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def save_checkpoint(root: str, iteration: int, chunks: list, optimizer, scheduler, consumed_samples: int,
                    padded_vocab_size: int, vp: Optional[int], extra: Optional[dict] = None,
                    keep_last: int = 0) -> str:
    """Collective: every rank calls it. Returns the final iteration directory."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    final = iteration_dir(root, iteration)
    tmp = final + ".tmp"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    state = _model_sharded_state(chunks)
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=False, metadata=OPTIMIZER_METADATA)
    state["rng_state"] = _rng_sharded_object()
    state.update(
        iteration=iteration,
        consumed_samples=consumed_samples,
        scheduler=scheduler.state_dict() if scheduler is not None else None,
        layout=Layout.current(vp).as_dict(),
        padded_vocab_size=padded_vocab_size,
        format_version=FORMAT_VERSION,
        megarec=extra or {},
        # Read by Megatron-LM's load_checkpoint, not by megarec: checkpoint_version, args, opt_param_scheduler.
        **megatron_lm_compat.common_state_fields(
            chunks, padded_vocab_size, consumed_samples, optimizer is not None,
            scheduler.state_dict() if scheduler is not None else None, state["rng_state"].data, extra, vp),
    )
    dist_checkpointing.save(state, tmp, content_metadata=OPTIMIZER_METADATA)
    dist.barrier()
    if dist.get_rank() == 0:
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer_tmp = os.path.join(root, TRACKER_FILE + ".tmp")
        with open(pointer_tmp, "w") as f:
            f.write(str(iteration))
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer_tmp, os.path.join(root, TRACKER_FILE))
        if keep_last > 0:
            _prune(root, keep_last)
    dist.barrier()
    return final


def _prune(root: str, keep_last: int) -> None:
    dirs = sorted(d for d in os.listdir(root) if d.startswith("iter_") and not d.endswith(".tmp"))
    for d in dirs[:-keep_last]:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)


@dataclass
class LoadedState:
    iteration: int
    consumed_samples: int
    rng_restored: bool
    path: str
    optimizer_loaded: bool = False


def _load_model_state(chunks: list, loaded: dict) -> None:
    for i, chunk in enumerate(chunks):
        missing, unexpected = chunk.load_state_dict(loaded[_model_key(i, len(chunks))], strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing:
            raise ConfigError(f"checkpoint lacks model weights: {missing[:3]}")


def load_checkpoint(path: str, chunks: list, optimizer=None, scheduler=None, vp: Optional[int] = None,
                    load_rng: bool = True) -> LoadedState:
    """Resume everything from a checkpoint root or iteration directory (collective)."""
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    ckpt_dir = resolve_checkpoint_dir(path)
    common = read_common_state(ckpt_dir)
    same_layout = common.get("layout") == Layout.current(vp).as_dict()
    state = _model_sharded_state(chunks)
    if optimizer is not None and "optimizer" in _saved_top_keys(ckpt_dir):
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=True, metadata=OPTIMIZER_METADATA)
    restore_rng = load_rng and same_layout
    if restore_rng:
        state["rng_state"] = _rng_sharded_object()
    loaded = _load_tolerating_extra_state(state, ckpt_dir)
    _load_model_state(chunks, loaded)
    if "optimizer" in state:
        optimizer.load_state_dict(loaded["optimizer"])
    if scheduler is not None and common.get("scheduler"):
        scheduler.load_state_dict(common["scheduler"])
    if restore_rng:
        _restore_rng(loaded["rng_state"])
    return LoadedState(int(common.get("iteration", 0)), int(common.get("consumed_samples", 0)), restore_rng,
                       ckpt_dir, "optimizer" in state)


def load_model_weights(path: str, chunks: list) -> str:
    """Only the model weights (e.g. a converted HF checkpoint as the start of stage 1)."""
    ckpt_dir = resolve_checkpoint_dir(path)
    loaded = _load_tolerating_extra_state(_model_sharded_state(chunks), ckpt_dir)
    _load_model_state(chunks, loaded)
    return ckpt_dir


_announced_extra_state = set()


def _load_tolerating_extra_state(sharded_state: dict, ckpt_dir: str) -> dict:
    """dist_checkpointing.load that accepts exactly one kind of missing entry: the `_extra_state` objects
    Transformer Engine layers add (FP8 scaling metadata), absent from checkpoints written by the local spec
    or by `convert hf-to-mcore`. Those layers then start with fresh FP8 metadata; this is said once per
    checkpoint. Any other missing key is an error naming it."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    # load returns (state, missing, unexpected); Megatron's "unexpected" keys are the ones requested here but
    # absent from the checkpoint.
    loaded, _, absent = dist_checkpointing.load(sharded_state, ckpt_dir, strict=StrictHandling.RETURN_UNEXPECTED)
    extra = sorted(k for k in absent if k.endswith("_extra_state"))
    other = sorted(k for k in absent if not k.endswith("_extra_state"))
    if other:
        raise ConfigError(f"{ckpt_dir}: checkpoint lacks {len(other)} entries the model needs, e.g. {other[:3]}")
    if extra and ckpt_dir not in _announced_extra_state and (not dist.is_initialized() or dist.get_rank() == 0):
        _announced_extra_state.add(ckpt_dir)
        print(f"megarec: {ckpt_dir} has no Transformer Engine extra state for {len(extra)} modules (e.g. "
              f"{extra[0]}); they start with fresh FP8 scaling metadata", flush=True)
    return loaded


def has_optimizer_state(path: str) -> bool:
    """Whether a checkpoint (root or iteration directory) carries optimizer state, i.e. can be resumed."""
    return "optimizer" in _saved_top_keys(resolve_checkpoint_dir(path))


def _saved_top_keys(ckpt_dir: str) -> set[str]:
    from megatron.core import dist_checkpointing

    keys = dist_checkpointing.load_tensors_metadata(ckpt_dir).keys()
    return {k.split(".")[0] for k in keys}


def checkpoint_padded_vocab(path: str) -> Optional[int]:
    """Padded vocabulary size a checkpoint was saved with (None if it does not say)."""
    common = read_common_state(resolve_checkpoint_dir(path))
    value = common.get("padded_vocab_size")
    return int(value) if value is not None else None


def ensure_single_process_group() -> None:
    """Offline tools read checkpoints in one process; dist_checkpointing still wants a process group."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def read_full_tensors(path: str, optimizer: bool = False) -> dict:
    """The model tensors (or, with optimizer=True, the optimizer-state tensors) of a checkpoint,
    unsharded: global TP/PP-independent tensors under Megatron's sharded keys (decoder layers stacked
    along a leading layer dimension)."""
    from megatron.core import dist_checkpointing

    ensure_single_process_group()
    tensors = dist_checkpointing.load_plain_tensors(resolve_checkpoint_dir(path))
    return {k: v for k, v in tensors.items()
            if isinstance(v, torch.Tensor) and k.startswith("optimizer.") == optimizer}
