"""`megarec <verb>`: the one console script. Each verb lives in its own module exposing
`register(subparsers)`; heavy imports (torch, megatron) happen only when a verb runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from megarec import __version__
from megarec.common.cli import use_everywhere
from megarec.common.errors import MegarecError, os_error_in_chain, os_error_line
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
    except Exception as e:  # a file-system error is the user's to fix too (also when a library re-raised it)
        os_error = os_error_in_chain(e)
        line = os_error_line(os_error) if os_error is not None else None
        if line is None:
            raise
        print(f"{_rank_prefix()}megarec {args.verb}: error: {line}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"megarec {args.verb}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc or 0)
