"""What every `megarec <verb>` parser shares: the one help formatter (keeps the layout of descriptions and
epilogs, appends `(default: X)` to flags whose help does not already say it), flags renamed in this release
(the old spelling still works, with a one-line notice), and the dtype names flags accept. Torch-free: parsers
are built before any heavy import."""

from __future__ import annotations

import argparse
import sys

DTYPE_CHOICES = ("auto", "fp32", "bf16")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _format_action_invocation(self, action):
        hidden = getattr(action, "hidden_option_strings", ())
        if not hidden:
            return super()._format_action_invocation(action)
        shown = [o for o in action.option_strings if o not in hidden]
        saved, action.option_strings = action.option_strings, shown
        try:
            return super()._format_action_invocation(action)
        finally:
            action.option_strings = saved

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is argparse.SUPPRESS
            or default is False
            or default == []
            or "default" in text.lower()
            or action.option_strings == []
            and action.nargs in ("*", "?")
        ):
            return text
        return f"{text} (default: {default})"


def use_everywhere(parser: argparse.ArgumentParser) -> None:
    """Give `parser` and every sub-parser below it the one help formatter."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                use_everywhere(sub)


def add_renamed_flag(parser: argparse.ArgumentParser, new: str, old: str) -> None:
    """Accept `old` as another spelling of the already added flag `new` (a required `new` is satisfied by either),
    with a one-line notice when it is used; --help shows only `new`."""
    action = parser._option_string_actions[new]
    action.option_strings.append(old)
    parser._option_string_actions[old] = action
    action.hidden_option_strings = getattr(action, "hidden_option_strings", ()) + (old,)
    store = type(action)

    class Renamed(store):
        def __call__(self, parser, namespace, values, option_string=None):
            if option_string == old:
                print(
                    f"megarec: {old} is now {new} (the old name still works in this release)",
                    file=sys.stderr,
                    flush=True,
                )
            store.__call__(self, parser, namespace, values, option_string)

    action.__class__ = Renamed
