"""A Hugging Face fast tokenizer directory without importing transformers' tokenizer classes (which pull
in torch and take seconds per process): the Rust `tokenizers.Tokenizer` from tokenizer.json, special
tokens from tokenizer_config.json / special_tokens_map.json, and the chat template rendered by
transformers' own Jinja renderer, so the text is exactly what `apply_chat_template` produces.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from megarec.errors import ConfigError

EOD_TOKEN = "<|endoftext|>"


def _content(value: Any) -> Optional[str]:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e.msg})") from None
    return data if isinstance(data, dict) else {}


class FastTokenizer:
    def __init__(self, path: str):
        from tokenizers import Tokenizer

        if not os.path.isdir(path):
            raise ConfigError(f"--tokenizer: directory not found: {path}")
        tj = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tj):
            raise ConfigError(f"--tokenizer {path}: no tokenizer.json (a fast tokenizer is required)")
        self.path = path
        self.backend = Tokenizer.from_file(tj)
        config = _read_json(os.path.join(path, "tokenizer_config.json"))
        special = _read_json(os.path.join(path, "special_tokens_map.json"))
        self.special_tokens = {k: _content(config.get(k, special.get(k)))
                               for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        template = config.get("chat_template")
        jinja = os.path.join(path, "chat_template.jinja")
        if os.path.isfile(jinja):
            with open(jinja, encoding="utf-8") as f:
                template = f.read()
        if isinstance(template, list):  # named templates: use "default"
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        self.chat_template: Optional[str] = template if isinstance(template, str) else None

    @property
    def vocab_size(self) -> int:
        """Number of ids including added tokens (what len(AutoTokenizer) reports)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> Optional[int]:
        return self.backend.token_to_id(token)

    @property
    def eod(self) -> int:
        """`<|endoftext|>` if the vocabulary has it, else the eos token (never a constant)."""
        for token in (EOD_TOKEN, self.special_tokens.get("eos_token")):
            if token and self.token_id(token) is not None:
                return int(self.token_id(token))
        raise ConfigError(f"--tokenizer {self.path}: defines neither {EOD_TOKEN} nor an eos token")

    def render_chat(self, messages: list[dict], **kwargs) -> str:
        """The chat template applied to one conversation (no generation prompt unless asked)."""
        if not self.chat_template:
            raise ConfigError(f"--tokenizer {self.path}: has no chat template")
        from transformers.utils.chat_template_utils import render_jinja_template

        values = {k: v for k, v in self.special_tokens.items() if v is not None}
        values.update(kwargs)
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=self.chat_template, **values)
        return rendered[0]
