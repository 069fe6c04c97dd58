"""Prompt templates as data: YAML files in megarec/data/templates/<lang>.yaml (or a custom path).

Loading checks that every template the builders need exists and uses only the placeholders the builder
fills (and all the required ones), so a broken template fails at load time, not mid-build.
"""

from __future__ import annotations

import os
import random
import string
from importlib import resources
from typing import Any

import yaml

from megarec.common.errors import ConfigError

# template path → (required placeholders, allowed placeholders)
TEMPLATE_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "pretrain.item_caption": ({"item", "caption"}, {"item", "caption"}),
    "pretrain.caption_item": ({"item", "caption"}, {"item", "caption"}),
    "pretrain.sequence": ({"items"}, {"items", "domain"}),
    "pretrain.persona_header": ({"profile"}, {"profile"}),
    "pretrain.persona_event": ({"item", "action"}, {"item", "action", "domain"}),
    "pretrain.persona_search": ({"query", "items"}, {"query", "items"}),
    "sft.rec.user": ({"history"}, {"history", "domain"}),
    "sft.rec.assistant": ({"targets"}, {"targets"}),
    "sft.label_conditional_rec.user": ({"history", "action"}, {"history", "action", "domain"}),
    "sft.label_conditional_rec.assistant": ({"targets"}, {"targets"}),
    "sft.interactive_rec.user": ({"query"}, {"query", "history", "profile", "domain"}),
    "sft.interactive_rec.assistant": ({"targets"}, {"targets"}),
    "sft.label_prediction.user": ({"item", "action"}, {"item", "action", "history", "domain"}),
    "sft.label_prediction.assistant": ({"answer"}, {"answer"}),
    "sft.item_understanding.user": ({"item"}, {"item"}),
    "sft.item_understanding.assistant": ({"caption"}, {"caption"}),
    "sft.explanation.user": ({"item"}, {"item", "history", "domain"}),
    "sft.explanation.assistant": ({"explanation"}, {"explanation"}),
}
MAPPINGS = ("domain_names", "label_actions", "label_past", "answers")


def available_languages() -> list[str]:
    folder = resources.files("megarec.data").joinpath("templates")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


class Templates:
    """Validated templates for one language."""

    def __init__(self, data: dict, source: str):
        self.source = source
        self.data = data
        self.language = str(data.get("language", "?"))
        self.system = data.get("system")
        if self.system is not None and not isinstance(self.system, str):
            raise ConfigError(f"{source}: 'system' must be a string")
        for key in MAPPINGS:
            if not isinstance(data.get(key), dict):
                raise ConfigError(f"{source}: missing mapping '{key}'")
        for key in ("positive", "negative"):
            if not isinstance(data["answers"].get(key), str) or not data["answers"][key]:
                raise ConfigError(f"{source}: answers.{key} must be a non-empty string")
        self.separator = str(data.get("list_separator", ", "))
        for path, (required, allowed) in TEMPLATE_FIELDS.items():
            for i, variant in enumerate(self._variants(path)):
                names = {f for _, f, _, _ in string.Formatter().parse(variant) if f is not None}
                if names - allowed:
                    raise ConfigError(
                        f"{source}: {path}[{i}] uses unknown placeholders {sorted(names - allowed)} "
                        f"(allowed: {sorted(allowed)})"
                    )
                if required - names:
                    raise ConfigError(f"{source}: {path}[{i}] lacks placeholders {sorted(required - names)}")

    @classmethod
    def load(cls, lang_or_path: str = "en") -> "Templates":
        """A language shipped with megarec (en, zh) or a path to a YAML file with the same keys."""
        if os.path.isfile(lang_or_path):
            with open(lang_or_path, encoding="utf-8") as f:
                text, source = f.read(), lang_or_path
        else:
            res = resources.files("megarec.data").joinpath("templates", f"{lang_or_path}.yaml")
            if not res.is_file():
                raise ConfigError(
                    f"no templates for language {lang_or_path!r} "
                    f"(available: {', '.join(available_languages())}, or give a YAML path)"
                )
            text, source = res.read_text("utf-8"), f"templates/{lang_or_path}.yaml"
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: invalid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping at top level")
        return cls(data, source)

    def _variants(self, path: str) -> list[str]:
        node: Any = self.data
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{self.source}: missing template '{path}'")
            node = node[part]
        variants = [node] if isinstance(node, str) else node
        if not isinstance(variants, list) or not variants or not all(isinstance(v, str) for v in variants):
            raise ConfigError(f"{self.source}: template '{path}' must be a string or a non-empty list of strings")
        return variants

    def render(self, path: str, rng: random.Random, **values: Any) -> str:
        variants = self._variants(path)
        variant = variants[rng.randrange(len(variants))] if len(variants) > 1 else variants[0]
        return variant.format(**values)

    def domain(self, domain: str) -> str:
        names = self.data["domain_names"]
        return str(names.get(domain, names.get("default", domain)))

    def action(self, label: str) -> str:
        return str(self.data["label_actions"].get(label, label))

    def past(self, label: str) -> str:
        return str(self.data["label_past"].get(label, label))

    def answer(self, positive: bool) -> str:
        return str(self.data["answers"]["positive" if positive else "negative"])
