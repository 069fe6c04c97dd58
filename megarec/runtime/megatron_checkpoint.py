"""Save and resume with Megatron-Core dist_checkpointing (torch_dist format, loadable at another TP/PP).

Each step directory of a checkpoint root (committed by `megarec.runtime.checkpoint_dir`, so an interrupted
save never looks complete) holds one dist checkpoint: model chunks, optimizer (reshardable across TP/PP/DP),
LR scheduler, RNG (restored only at the same layout), iteration and consumed samples, and the fields
Megatron-LM's loader reads (`megatron_lm_compat`).

Every reader goes through `resolve_checkpoint_dir`, which checks the files before anything is loaded (the
marker files, and every `.distcp` byte range torch's `.metadata` lists), so a truncated or half-copied
checkpoint is one error line naming the file, on every rank alike; what is still unreadable after that (a
damaged pickle, say) becomes one line naming the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import zipfile
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from megarec.common.errors import ConfigError, DataError
from megarec.runtime import checkpoint_dir, megatron_lm_compat

FORMAT_VERSION = 1
MARKER_FILES = ("metadata.json", "common.pt")  # Megatron's backend description, the non-sharded state
TORCH_METADATA = ".metadata"  # torch DCP: every tensor's file, offset and length


def resolve_checkpoint_dir(path: str) -> str:
    """A checkpoint root (with a latest pointer) or one iteration directory → the iteration directory, after
    checking that its files are all there (`check_checkpoint_files`)."""
    if not os.path.isdir(path):
        raise ConfigError(f"checkpoint {path} not found (expected a checkpoint root or an iter_XXXXXXX directory)")
    latest = checkpoint_dir.latest_dir(path)
    if latest is not None:
        path = latest
    if not os.path.isfile(os.path.join(path, "metadata.json")):
        raise ConfigError(f"{path} is not a complete Megatron dist checkpoint (no metadata.json)")
    check_checkpoint_files(path)
    return path


_checked: dict = {}


def check_checkpoint_files(ckpt_dir: str) -> None:
    """Refuse, before any load, a checkpoint whose files cannot all be there: a missing marker file, an
    unreadable torch `.metadata`, or a `.distcp` file missing or shorter than the byte ranges `.metadata`
    assigns to it (a truncated copy or an interrupted transfer). Each error names the file."""
    for name in MARKER_FILES:
        if not os.path.isfile(os.path.join(ckpt_dir, name)):
            raise DataError(f"checkpoint {ckpt_dir} is incomplete: {name} is missing")
    try:
        with open(os.path.join(ckpt_dir, "metadata.json")) as f:
            backend = json.load(f).get("sharded_backend")
    except (ValueError, AttributeError) as e:
        raise DataError(f"checkpoint {ckpt_dir}: metadata.json is not a JSON object ({_brief(e)})") from None
    if backend != "torch_dist":
        return  # another backend (e.g. zarr): its own loader checks its files
    meta_path = os.path.join(ckpt_dir, TORCH_METADATA)
    if not os.path.isfile(meta_path):
        raise DataError(f"checkpoint {ckpt_dir} is incomplete: {TORCH_METADATA} is missing")
    stat = os.stat(meta_path)
    key = (os.path.abspath(meta_path), stat.st_size, stat.st_mtime_ns)
    if key not in _checked:
        _checked[key] = _needed_bytes(ckpt_dir, meta_path)
    for name, end in sorted(_checked[key].items()):
        path = os.path.join(ckpt_dir, name)
        if not os.path.isfile(path):
            raise DataError(f"checkpoint {ckpt_dir} is incomplete: {name} is missing (listed in {TORCH_METADATA})")
        size = os.path.getsize(path)
        if size < end:
            raise DataError(
                f"checkpoint file {path} is truncated: {size} bytes, but {TORCH_METADATA} places data up to byte {end}"
            )


def _needed_bytes(ckpt_dir: str, meta_path: str) -> dict[str, int]:
    """File name → end of the last byte range torch's `.metadata` assigns to it."""
    from torch.distributed.checkpoint import FileSystemReader

    with _readable(ckpt_dir, TORCH_METADATA):
        metadata = FileSystemReader(ckpt_dir).read_metadata()
    needed: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        name = getattr(info, "relative_path", None)
        if name:
            needed[name] = max(needed.get(name, 0), int(info.offset) + int(info.length))
    return needed


def _brief(e: BaseException) -> str:
    """`Type: first line` of an exception, cut to its first sentence when long."""
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    text = lines[0] if len(lines[0]) <= 160 else lines[0].split(". ")[0]
    return f"{type(e).__name__}: {text}"


@contextlib.contextmanager
def _readable(ckpt_dir: str, what: str) -> Iterator[None]:
    """Reading `what` of a checkpoint: damaged content (a pickle or zip that does not parse, torch's
    CheckpointException gathered from every rank, Megatron's CheckpointingException) becomes one DataError
    naming the checkpoint and the first cause."""
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as e:
        failures = list(e.failures.values())
        cause = failures[0][0] if failures and isinstance(failures[0], tuple) else e
        raise DataError(f"checkpoint {ckpt_dir}: cannot read {what} ({_brief(cause)})") from None
    except (
        CheckpointingException,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        RuntimeError,
        ValueError,
        OSError,
    ) as e:
        raise DataError(f"checkpoint {ckpt_dir}: cannot read {what} ({_brief(e)})") from None


def read_common_state(ckpt_dir: str) -> dict:
    from megatron.core import dist_checkpointing

    with _readable(ckpt_dir, "common.pt"):
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
    return ShardedObject(
        "rng_state",
        state,
        (pp, tp),
        (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
        replica_id=ps.get_data_parallel_rank(with_context_parallel=True),
    )


def _restore_rng(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def save_checkpoint(
    root: str,
    iteration: int,
    chunks: list,
    optimizer,
    scheduler,
    consumed_samples: int,
    padded_vocab_size: int,
    vp: Optional[int],
    extra: Optional[dict] = None,
    keep_last: int = 0,
) -> str:
    """Collective: every rank calls it. Returns the final iteration directory."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    if dist.get_rank() == 0:
        checkpoint_dir.begin(root, iteration)
    tmp = checkpoint_dir.step_dir(root, iteration) + checkpoint_dir.TMP_SUFFIX
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
            chunks,
            padded_vocab_size,
            consumed_samples,
            optimizer is not None,
            scheduler.state_dict() if scheduler is not None else None,
            state["rng_state"].data,
            extra,
            vp,
        ),
    )
    with checkpoint_dir.writing(root, iteration), _writer_errors_raised_not_logged():
        dist_checkpointing.save(state, tmp, content_metadata=OPTIMIZER_METADATA)
    dist.barrier()
    if dist.get_rank() == 0:
        checkpoint_dir.commit(root, iteration, keep_last)
    dist.barrier()
    return checkpoint_dir.step_dir(root, iteration)


@contextlib.contextmanager
def _writer_errors_raised_not_logged() -> Iterator[None]:
    """Megatron-Core's async file writer logs a worker's write error and then raises the same error; the raise
    is what `checkpoint_dir.writing` reports (one line), so the log line would only repeat it on stderr."""
    import logging

    writer_log = logging.getLogger("megatron.core.dist_checkpointing.strategies.filesystem_async")
    level = writer_log.level
    writer_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        writer_log.setLevel(level)


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


def load_checkpoint(
    path: str, chunks: list, optimizer=None, scheduler=None, vp: Optional[int] = None, load_rng: bool = True
) -> LoadedState:
    """Resume everything from a checkpoint root or iteration directory (collective)."""

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
    return LoadedState(
        int(common.get("iteration", 0)),
        int(common.get("consumed_samples", 0)),
        restore_rng,
        ckpt_dir,
        "optimizer" in state,
    )


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
    with _readable(ckpt_dir, "the sharded tensors"):
        loaded, _, absent = dist_checkpointing.load(sharded_state, ckpt_dir, strict=StrictHandling.RETURN_UNEXPECTED)
    extra = sorted(k for k in absent if k.endswith("_extra_state"))
    other = sorted(k for k in absent if not k.endswith("_extra_state"))
    if other:
        raise ConfigError(f"{ckpt_dir}: checkpoint lacks {len(other)} entries the model needs, e.g. {other[:3]}")
    if extra and ckpt_dir not in _announced_extra_state and (not dist.is_initialized() or dist.get_rank() == 0):
        _announced_extra_state.add(ckpt_dir)
        print(
            f"megarec: {ckpt_dir} has no Transformer Engine extra state for {len(extra)} modules (e.g. "
            f"{extra[0]}); they start with fresh FP8 scaling metadata",
            flush=True,
        )
    return loaded


def has_optimizer_state(path: str) -> bool:
    """Whether a checkpoint (root or iteration directory) carries optimizer state, i.e. can be resumed."""
    return "optimizer" in _saved_top_keys(resolve_checkpoint_dir(path))


def _saved_top_keys(ckpt_dir: str) -> set[str]:
    from megatron.core import dist_checkpointing

    with _readable(ckpt_dir, TORCH_METADATA):
        keys = dist_checkpointing.load_tensors_metadata(ckpt_dir).keys()
    return {k.split(".")[0] for k in keys}


def checkpoint_padded_vocab(path: str) -> Optional[int]:
    """Padded vocabulary of a megarec or Megatron-LM checkpoint (root or iteration directory), None if it
    does not say."""
    return megatron_lm_compat.padded_vocab_size(read_common_state(resolve_checkpoint_dir(path)))


def flags_for_checkpoint(path: str, mode: str = "weights") -> list[str]:
    """megatron_lm_flags for a megarec checkpoint root (→ --load root) or iteration directory
    (→ --load its parent --ckpt-step N)."""
    ckpt_dir = resolve_checkpoint_dir(path)
    common = read_common_state(ckpt_dir)
    if "args" not in common:
        raise ConfigError(
            f"{ckpt_dir} has no Megatron-LM args (saved by an older megarec): write the flags by "
            "hand (docs/convert.md, 'Moving checkpoints to and from Megatron-LM') and load it with "
            "--finetune, or save it again with this version"
        )
    root = os.path.dirname(os.path.abspath(ckpt_dir))
    flags = megatron_lm_compat.megatron_lm_flags(common["args"], common.get("opt_param_scheduler"), root, mode)
    if checkpoint_dir.read_latest(root) != int(common["iteration"]):
        flags += ["--ckpt-step", str(int(common["iteration"]))]
    return flags


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
    ckpt_dir = resolve_checkpoint_dir(path)
    with _readable(ckpt_dir, "the sharded tensors"):
        tensors = dist_checkpointing.load_plain_tensors(ckpt_dir)
    return {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor) and k.startswith("optimizer.") == optimizer}
