"""argparse help formatter for the evaluation verbs: shows defaults, except None and ones the help names."""
from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "default" in text.lower() \
                or action.default is False or action.default == []:
            return text
        return super()._get_help_string(action)
