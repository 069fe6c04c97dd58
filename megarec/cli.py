"""`megarec <verb>`: the one console script. Each verb lives in its own module exposing
`register(subparsers)`; heavy imports (torch, megatron) happen only when a verb runs."""

from __future__ import annotations

import argparse
import errno
import importlib
import io
import os
import sys
from typing import Optional

from megarec import __version__
from megarec.common.cli import use_everywhere
from megarec.common.errors import MegarecError
from megarec.runtime import quiet

# Modules that register verbs, in the order `--help` lists them.
COMMAND_MODULES = [
    "megarec.pretrain.cli",
    "megarec.tokenizer.cli",
    "megarec.models.cli",
    "megarec.itemic.cli",
    "megarec.convert.cli",
    "megarec.posttrain.cli",
    "megarec.data.cli",
    "megarec.eval.cli",
    "megarec.eval.bench_cli",
    "megarec.scaling.cli",
    "megarec.demo.cli",
    "megarec.doctor.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megarec",
        description="Megatron-Core training stack for generative recommendation (Qwen3 + itemic tokens).",
    )
    parser.add_argument("--version", action="version", version=f"megarec {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    use_everywhere(parser)
    return parser


def _rank_prefix() -> str:
    rank = os.environ.get("RANK")
    return f"[rank {rank}] " if rank not in (None, "0") else ""


# Errors of the disk rather than of a path: write() and close() report them without a file name.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


def _open_file_in(tb) -> Optional[str]:
    """The name of the innermost open file object a frame of traceback `tb` holds (the file a failed write
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
        if e.errno not in _DISK_ERRNOS:
            return None
        path = _open_file_in(e.__traceback__)
        if path is None:
            return f"{reason} (errno {errno.errorcode.get(e.errno, e.errno)}; the system did not name the file)"
    path = os.fsdecode(path) if isinstance(path, (str, bytes)) else str(path)
    if isinstance(e, FileExistsError) and os.path.lexists(path) and not os.path.isdir(path):
        reason += " (a file, where a directory is needed)"
    if e.filename2 is not None:
        return f"{path} -> {os.fsdecode(e.filename2)}: {reason}"
    return f"{path}: {reason}"


def main(argv: list[str] | None = None) -> None:
    quiet.install_on_megatron_import()  # Megatron-Core's fallback warnings become one line, if it is imported
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(2)
    try:
        rc = args.func(args)
    except MegarecError as e:
        print(f"{_rank_prefix()}megarec {args.verb}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except OSError as e:  # a file-system error is the user's to fix too; anything else keeps its traceback
        line = os_error_line(e)
        if line is None:
            raise
        print(f"{_rank_prefix()}megarec {args.verb}: error: {line}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"megarec {args.verb}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc or 0)
