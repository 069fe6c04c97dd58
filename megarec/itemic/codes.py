"""Itemic token strings: `<s_a_12>` is code 12 of layer a; an item is `<|sid_begin|><s_a_c1><s_b_c2>...<|sid_end|>`.

Layer letters are a, b, c, ... (one per layer, so at most 26 layers). Token order appended to a base tokenizer:
all `<s_a_*>` (codes 0..K-1), then all `<s_b_*>`, ..., then `<|sid_begin|>`, `<|sid_end|>`.
"""
from __future__ import annotations

import re
import string

from megarec.common.errors import ConfigError

SID_BEGIN = "<|sid_begin|>"
SID_END = "<|sid_end|>"
MAX_LAYERS = len(string.ascii_lowercase)
CODE_TOKEN_RE = re.compile(r"<s_([a-z])_(\d+)>")


def layer_letters(num_layers: int) -> list[str]:
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ConfigError(f"number of itemic layers must be >= 1, got {num_layers!r}")
    if num_layers > MAX_LAYERS:
        raise ConfigError(f"{num_layers} itemic layers, but layer letters a..z allow at most {MAX_LAYERS}")
    return list(string.ascii_lowercase[:num_layers])


def check_codebook_size(codebook_size: int) -> None:
    if not isinstance(codebook_size, int) or codebook_size < 1:
        raise ConfigError(f"codebook size must be >= 1, got {codebook_size!r}")


def code_token(letter: str, code: int) -> str:
    return f"<s_{letter}_{code}>"


def itemic_token_strings(num_layers: int, codebook_size: int) -> list[str]:
    """All new tokens in id order: layer a codes, layer b codes, ..., then sid_begin, sid_end."""
    check_codebook_size(codebook_size)
    tokens = [code_token(letter, c) for letter in layer_letters(num_layers) for c in range(codebook_size)]
    return tokens + [SID_BEGIN, SID_END]


def item_string(codes, letters: list[str]) -> str:
    return SID_BEGIN + "".join(code_token(letter, int(c)) for letter, c in zip(letters, codes)) + SID_END
