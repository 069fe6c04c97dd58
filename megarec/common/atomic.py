"""Atomic file writes: write a hidden temporary name beside the target, then `os.replace` it over the target,
so a reader never sees a half-written file; on error the temporary file is removed."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import IO, Any, Iterator


def temp_path(path: str | os.PathLike) -> str:
    """A hidden sibling name (`.<name>.<pid>.<random>.tmp`) for writing `path` before an atomic os.replace."""
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{tail}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path in the target's directory (created if missing); on success it replaces `path`,
    on error it is removed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary sibling of `path`; on success it replaces `path`, on error it is removed."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to a temporary file beside `path`, then rename it over `path`."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic, indented, UTF-8 (not ASCII-escaped) JSON with a trailing newline."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def save_npy(path: str | os.PathLike, array) -> None:
    import numpy as np

    with atomic_open(path, "wb") as f:
        np.save(f, array)


def savefig_atomic(fig, path: str | os.PathLike) -> None:
    """Save a matplotlib figure as PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
