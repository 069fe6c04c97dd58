"""What every `megarec <verb>` parser shares: the one help formatter (keeps the layout of descriptions and
epilogs, appends `(default: X)` to flags whose help does not already say it), flags renamed in this release
(the old spelling still works, with a one-line notice), and the dtype names flags accept. Torch-free: parsers
are built before any heavy import."""
from __future__ import annotations

import argparse
import sys

DTYPE_CHOICES = ("auto", "fp32", "bf16")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default is None or default is argparse.SUPPRESS or default is False or default == []
                or "default" in text.lower() or action.option_strings == [] and action.nargs in ("*", "?")):
            return text
        return f"{text} (default: {default})"


def use_everywhere(parser: argparse.ArgumentParser) -> None:
    """Give `parser` and every sub-parser below it the one help formatter."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                use_everywhere(sub)


class _RenamedFlag(argparse.Action):
    def __init__(self, option_strings, dest, new_name: str = "", **kwargs):
        self.new_name = new_name
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"megarec: {option_string} is now {self.new_name} (the old name still works in this release)",
              file=sys.stderr, flush=True)
        setattr(namespace, self.dest, values)


def add_renamed_flag(parser: argparse.ArgumentParser, new: str, old: str) -> None:
    """Accept `old` as an alias of the already added flag `new` (same destination), hidden from --help."""
    dest = next(a.dest for a in parser._actions if new in a.option_strings)
    parser.add_argument(old, dest=dest, action=_RenamedFlag, new_name=new, help=argparse.SUPPRESS)
