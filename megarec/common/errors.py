"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback. Also the
one-line description of a file-system failure (permission, full disk, quota, file-size limit), including one
that a library re-raised under its own exception type."""

from __future__ import annotations

import errno
import io
import os
import re
from typing import Optional


class MegarecError(Exception):
    """A problem the user can fix (bad config, bad input file, impossible layout)."""


class ConfigError(MegarecError):
    """Invalid configuration value or combination."""


class DataError(MegarecError):
    """Invalid input data; the message names the file, row and field."""


class TrainingDivergedError(MegarecError):
    """Loss or gradient norm became NaN/Inf."""


class CheckpointWriteError(MegarecError):
    """Writing a checkpoint failed; nothing was published (the previous checkpoint is intact)."""


# Errors of the disk rather than of a path: write() and close() report them without a file name.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}
# What writers that keep no OSError say when the OS refused a write: PyTorch's zip writer, and Rust
# writers such as safetensors ("I/O error: File too large (os error 27)").
_TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")
_RUST_IO_ERROR = re.compile(r"I/O error: ([^\n]*?) \(os error (\d+)\)")


def _open_file_in(tb) -> Optional[str]:
    """The path of a file object open in the innermost frames of `tb` (what write()/close() on a full disk
    was writing), or None."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
    return None


def os_error_line(e: OSError) -> Optional[str]:
    """One line naming the path and the reason of a file-system error (permission, a file where a directory
    should be, a full disk, ...), or None for an OS error that is about no file (a socket, a bug): that one
    keeps its traceback."""
    reason = e.strerror or str(e)
    path = e.filename
    if path is None:
        # errno None: numpy's tofile reports a short write ("N requested and M written") without one.
        if e.errno is not None and e.errno not in _DISK_ERRNOS:
            return None
        path = _open_file_in(e.__traceback__)
        if path is None:
            if e.errno is None:
                return None
            return f"{reason} (errno {errno.errorcode.get(e.errno, e.errno)}; the system did not name the file)"
        if e.errno is None:
            reason = f"short write ({reason}): the disk is full or a quota or file-size limit was reached"
    path = os.fsdecode(path) if isinstance(path, (str, bytes)) else str(path)
    if isinstance(e, FileExistsError) and os.path.lexists(path) and not os.path.isdir(path):
        reason += " (a file, where a directory is needed)"
    if e.filename2 is not None:
        return f"{path} -> {os.fsdecode(e.filename2)}: {reason}"
    return f"{path}: {reason}"


def os_error_in_chain(exc: BaseException) -> Optional[OSError]:
    """The first OSError among `exc` and the exceptions it was explicitly raised from (`raise ... from err`, as
    Megatron-Core's dataset builder re-raises file-system errors). Only the explicit cause is followed: an error
    raised while handling an unrelated OSError is not about that file."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__
    return None


def write_failure_reason(exc: BaseException) -> Optional[str]:
    """Why a write failed, in one line, when `exc` is a file-system refusal (an OSError somewhere in its chain,
    or PyTorch's writer reporting a short write); None for anything else (a bug keeps its traceback)."""
    os_error = os_error_in_chain(exc)
    if os_error is not None:
        return os_error_line(os_error)
    text = str(exc)
    rust = _RUST_IO_ERROR.search(text)
    if rust and int(rust.group(2)) in _DISK_ERRNOS:
        return f"the file system refused a write ({rust.group(1)})"
    for marker in _TORCH_WRITE_FAILURES:
        at = text.find(marker)
        if at >= 0:
            detail = text[at:].splitlines()[0].strip()
            return f"the file system refused a write (PyTorch: '{detail}')"
    return None
