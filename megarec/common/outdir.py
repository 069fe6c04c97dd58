"""Output directories of the `megarec` verbs: one guard and one staged write that every verb uses.

`check_out_dir` runs before any heavy import or model load and raises a one-line ConfigError for
  * an output that is the current directory or one of its ancestors, or that is (or contains) one of the
    verb's inputs: always, with or without --force, since replacing it would delete the working tree or
    the inputs;
  * an existing path that is not a directory;
  * a non-empty directory, unless `force` is set or `own(path)` recognises the verb's own earlier output
    (the resumable verbs: demo, evaluate, preprocess's work directory, post-training exports);
  * an output that cannot be written: a path below a regular file, or whose nearest existing directory the
    process may not write (permissions, a read-only mount, an immutable directory) — checked with
    `os.access`, which also answers for root, so the verb fails before any work instead of at its end.

`staged_dir` is how the one-shot verbs write: into a hidden sibling directory (`atomic.temp_path`), which
replaces the output in one rename only after the whole write succeeded. A failed run therefore leaves the
old directory, and anything unrelated in it, exactly as it was, and never a half-written output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Callable, Iterable, Iterator, Optional, Tuple

from megarec.common.atomic import temp_path
from megarec.common.errors import ConfigError

Inputs = Iterable[Tuple[str, Optional[str]]]  # (flag, path) pairs; a None path is skipped
FORCE_HINT = "pass --force to replace it"
FORCE_HELP = (
    "Replace a non-empty --out. The new output is written beside it and the old directory is removed "
    "only after the run succeeded; without --force a non-empty --out is refused."
)


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def _within(path: str, root: str) -> bool:
    """True when `path` is `root` or lies under it (both already real paths)."""
    return os.path.commonpath([path, root]) == root


def refuse_unsafe(path: str | os.PathLike, flag: str = "--out", inputs: Inputs = ()) -> None:
    """Refuse an output that is the cwd or one of its ancestors, or that is or contains an input."""
    target, cwd = _real(path), _real(os.getcwd())
    if _within(cwd, target):
        where = "the current directory" if target == cwd else "an ancestor of the current directory"
        raise ConfigError(f"{flag} {os.fspath(path)} is {where}; give a new directory for the output")
    for in_flag, in_path in inputs:
        if in_path and _within(_real(in_path), target):
            how = "the same path as" if _real(in_path) == target else "a directory containing"
            raise ConfigError(
                f"{flag} {os.fspath(path)} is {how} {in_flag} {os.fspath(in_path)}; give a separate output directory"
            )


def check_writable(path: str | os.PathLike, flag: str = "--out", *, parent: bool = False) -> None:
    """Refuse, before any work, an output `path` (existing or not) that this process cannot create: one of its
    ancestors is a file, or the file system refuses the nearest existing directory (read-only, no permission).
    With `parent`, check only the directory that will hold `path` (a file prefix, or a directory written beside
    itself and renamed into place). Probes by creating and removing an empty directory there: leaves nothing."""
    given = os.fspath(path)
    label = f"{flag} {given}" if flag.startswith("-") else f"{flag}={given}"  # a flag, or a config key
    target = os.path.abspath(given)
    probe = os.path.dirname(target) if parent else target
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        if probe == target:
            return  # the output itself is an existing file: the caller decides (replace or refuse)
        raise ConfigError(f"{label}: cannot create it, {probe} is a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".megarec-probe-", dir=probe))
    except OSError as e:
        raise ConfigError(f"{label}: cannot write in {probe} ({e.strerror or e})") from None


def entries(path: str | os.PathLike) -> list[str]:
    """Names in directory `path` (hidden ones too); [] when it does not exist."""
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def has_entry(*names: str) -> Callable[[str], bool]:
    """An `own` test for resumable verbs: the directory holds one of `names` (files or folders that the verb
    writes before anything else, e.g. the demo's `.stages/`)."""
    return lambda path: any(os.path.lexists(os.path.join(path, n)) for n in names)


def check_out_dir(
    path: str | os.PathLike,
    *,
    force: bool = False,
    flag: str = "--out",
    inputs: Inputs = (),
    own: Optional[Callable[[str], bool]] = None,
    hint: str = FORCE_HINT,
) -> str:
    """The guard every directory-writing verb calls first; returns the absolute output path."""
    path = os.fspath(path)
    refuse_unsafe(path, flag, inputs)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag} {path} exists and is not a directory")
    check_writable(path, flag)
    n = len(entries(path))
    if n and not force and not (own and own(path)):
        raise ConfigError(f"{flag} {path} is not empty ({n} {'entry' if n == 1 else 'entries'}); {hint}")
    return os.path.abspath(path)


def check_out_prefix(
    prefix: str | os.PathLike,
    work_dir: str | os.PathLike,
    *,
    force: bool = False,
    flag: str = "--output-prefix",
    inputs: Inputs = (),
    own: Optional[Callable[[str], bool]] = None,
) -> str:
    """The guard of verbs that write files named PREFIX* plus a work directory (preprocess: P.parts): the
    prefix must not name the cwd or an ancestor of it, and the work directory is checked like an --out."""
    refuse_unsafe(prefix, flag)
    check_writable(prefix, flag, parent=True)
    return check_out_dir(work_dir, force=force, flag=f"{flag} work directory", inputs=inputs, own=own)


def replace_dir(stage: str, out: str) -> None:
    """Move the finished `stage` directory to `out`, replacing whatever `out` was (two renames)."""
    if not os.path.lexists(out):
        os.replace(stage, out)
        return
    old = temp_path(out)
    os.replace(out, old)
    os.replace(stage, out)
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.unlink(old)


@contextlib.contextmanager
def staged_dir(
    path: str | os.PathLike, *, force: bool = False, flag: str = "--out", inputs: Inputs = ()
) -> Iterator[str]:
    """Yield a fresh hidden sibling of `path` to write into; on success it replaces `path` (which must be
    missing or empty unless `force`), on any error it is deleted and `path` is left untouched."""
    inputs = list(inputs)
    out = check_out_dir(path, force=force, flag=flag, inputs=inputs)
    check_writable(out, flag, parent=True)  # the stage and the final rename live beside `out`
    os.makedirs(os.path.dirname(out), exist_ok=True)
    stage = temp_path(out)
    os.makedirs(stage)
    try:
        yield stage
        check_out_dir(out, force=force, flag=flag, inputs=inputs)  # nothing appeared there meanwhile
        replace_dir(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
