"""The checkpoint-directory commit protocol every stage uses, so that an interrupted save never looks complete.

Layout of a checkpoint root (Megatron-LM's, so roots move between the two): `<root>/iter_0000100/` per saved
step and `<root>/latest_checkpointed_iteration.txt` naming the newest. A save writes `iter_XXXXXXX.tmp/`
(`begin`); when every rank has finished, rank 0 renames it, then moves the pointer (written to a temporary
file, fsynced, renamed) and prunes older steps beyond `keep_last` (`commit`). What goes inside a step
directory is the stage's business (a Megatron dist checkpoint; an HF checkpoint plus optimizer state). A write
the file system refuses (full disk, quota, file-size limit) ends the run with one line (`writing`): the partial
directory is removed and the pointer still names the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator, Optional

from megarec.common.errors import CheckpointWriteError, ConfigError, MegarecError, write_failure_reason

TRACKER_FILE = "latest_checkpointed_iteration.txt"
PREFIX = "iter_"
TMP_SUFFIX = ".tmp"


def step_dir(root: str, step: int) -> str:
    return os.path.join(root, f"{PREFIX}{step:07d}")


def read_latest(root: Optional[str]) -> Optional[int]:
    """The step the pointer names, or None when there is no pointer (no complete checkpoint)."""
    if not root:
        return None
    path = os.path.join(root, TRACKER_FILE)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    if not text.isdigit():
        raise ConfigError(f"{path}: expected a step number, found '{text}'")
    return int(text)


def latest_dir(root: Optional[str]) -> Optional[str]:
    """The newest complete step directory under `root`, or None."""
    step = read_latest(root)
    if step is None:
        return None
    path = step_dir(root, step)
    if not os.path.isdir(path):
        raise ConfigError(f"{os.path.join(root, TRACKER_FILE)} names step {step}, but {path} does not exist")
    return path


def begin(root: str, step: int) -> str:
    """Rank 0: a fresh temporary directory for step `step` (leftovers of an interrupted save are removed)."""
    tmp = step_dir(root, step) + TMP_SUFFIX
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


@contextlib.contextmanager
def writing(root: str, step: int) -> Iterator[None]:
    """Around every rank's writes into `begin`'s directory: a refused write becomes a CheckpointWriteError that
    says what failed, that nothing was published and which checkpoint is still the newest; other errors pass."""
    try:
        yield
    except (MegarecError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # torch.distributed.checkpoint's CheckpointException is a BaseException
        reason = write_failure_reason(e)
        if reason is None:
            raise
        tmp = step_dir(root, step) + TMP_SUFFIX
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space the partial write took
        latest = read_latest(root)
        kept = (
            f"the newest complete checkpoint is still {step_dir(root, latest)}"
            if latest is not None
            else "there is no complete checkpoint yet"
        )
        free_gib = shutil.disk_usage(root).free / 2**30
        raise CheckpointWriteError(
            f"cannot write checkpoint step {step} under {root}: {reason}; nothing was published and the partial "
            f"{os.path.basename(tmp)} was removed, {kept} ({free_gib:.1f} GiB free on that file system)"
        ) from e


def commit(root: str, step: int, keep_last: int = 0) -> str:
    """Rank 0, after every rank wrote into `begin`'s directory: publish it and return the final path."""
    final = step_dir(root, step)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(final + TMP_SUFFIX, final)
    pointer_tmp = os.path.join(root, TRACKER_FILE + TMP_SUFFIX)
    with open(pointer_tmp, "w") as f:
        f.write(str(step))
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer_tmp, os.path.join(root, TRACKER_FILE))
    if keep_last > 0:
        prune(root, keep_last)
    return final


def prune(root: str, keep_last: int) -> None:
    steps = sorted(d for d in os.listdir(root) if d.startswith(PREFIX) and not d.endswith(TMP_SUFFIX))
    for name in steps[:-keep_last]:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
