"""Which token ids spell an item: `<|sid_begin|>`, one code token per layer, `<|sid_end|>`.

`ItemTokenLayout` is a small self-contained description (from the itemic package it uses only the itemic.json
reader). Build it from itemic.json (written by vocab expansion), from a tokenizer that holds the itemic tokens,
from a plain dict, or from any object with the itemic.json attributes (e.g. `megarec.itemic` layout classes).
"""
from __future__ import annotations

import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from megarec.common.errors import ConfigError, DataError
from megarec.itemic.layout import read_itemic_json


@dataclass(frozen=True)
class ItemTokenLayout:
    """Token ids of the item delimiters and of every code of every layer (`code_token_ids[layer][code]`)."""

    sid_begin_id: int
    sid_end_id: int
    code_token_ids: tuple[tuple[int, ...], ...]
    layer_letters: tuple[str, ...] = ()
    _inverse: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        ids = tuple(tuple(int(t) for t in layer) for layer in self.code_token_ids)
        if not ids or any(len(layer) == 0 for layer in ids):
            raise ConfigError("an item layout needs at least one layer with at least one code")
        object.__setattr__(self, "code_token_ids", ids)
        if not self.layer_letters:
            object.__setattr__(self, "layer_letters", tuple(string.ascii_lowercase[:len(ids)]))
        inverse = {}
        for layer, toks in enumerate(ids):
            for code, tok in enumerate(toks):
                if tok in inverse:
                    raise ConfigError(f"token id {tok} is used by two codes")
                inverse[tok] = (layer, code)
        if {self.sid_begin_id, self.sid_end_id} & inverse.keys() or self.sid_begin_id == self.sid_end_id:
            raise ConfigError("sid_begin/sid_end ids must differ from each other and from code token ids")
        object.__setattr__(self, "_inverse", inverse)

    # ------------------------------------------------------------------ queries
    @property
    def num_layers(self) -> int:
        return len(self.code_token_ids)

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return tuple(len(layer) for layer in self.code_token_ids)

    def token_id(self, layer: int, code: int) -> int:
        """Token id of `code` in `layer`."""
        try:
            return self.code_token_ids[layer][code]
        except IndexError:
            raise DataError(f"code {code} out of range for layer {layer} "
                            f"(codebook size {len(self.code_token_ids[layer]) if layer < self.num_layers else '?'})") from None

    def code_of(self, token_id: int) -> tuple[int, int] | None:
        """(layer, code) of a code token id, or None for any other token."""
        return self._inverse.get(int(token_id))

    def is_itemic(self, token_id: int) -> bool:
        t = int(token_id)
        return t in self._inverse or t in (self.sid_begin_id, self.sid_end_id)

    def itemic_token_ids(self) -> list[int]:
        """Every code token id plus the two delimiters."""
        return list(self._inverse) + [self.sid_begin_id, self.sid_end_id]

    def code_ids(self, codes: Sequence[int]) -> list[int]:
        """Token ids of an item's codes (without delimiters)."""
        if len(codes) != self.num_layers:
            raise DataError(f"expected {self.num_layers} codes, got {len(codes)}")
        return [self.token_id(layer, int(c)) for layer, c in enumerate(codes)]

    def item_ids(self, codes: Sequence[int]) -> list[int]:
        """`[sid_begin, code tokens..., sid_end]` for one item."""
        return [self.sid_begin_id, *self.code_ids(codes), self.sid_end_id]

    def parse_items(self, token_ids: Sequence[int]) -> list[tuple[int, ...]]:
        """Code tuples of every well-formed item (begin, one code per layer in order, end) in `token_ids`."""
        out, toks, L = [], [int(t) for t in token_ids], self.num_layers
        for i, t in enumerate(toks):
            if t != self.sid_begin_id or i + L + 1 >= len(toks):
                continue
            codes = []
            for layer in range(L):
                lc = self.code_of(toks[i + 1 + layer])
                if lc is None or lc[0] != layer:
                    break
                codes.append(lc[1])
            if len(codes) == L and toks[i + 1 + L] == self.sid_end_id:
                out.append(tuple(codes))
        return out

    def to_dict(self) -> dict:
        return {"sid_begin_id": self.sid_begin_id, "sid_end_id": self.sid_end_id,
                "code_token_ids": [list(x) for x in self.code_token_ids], "layer_letters": list(self.layer_letters)}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_itemic_meta(cls, meta: Mapping) -> "ItemTokenLayout":
        """From the itemic.json fields (first_id, num_layers, codebook_size, sid_begin_id, sid_end_id,
        layer_letters): code tokens are contiguous, layer by layer, starting at first_id."""
        try:
            first, L = int(meta["first_id"]), int(meta["num_layers"])
            sizes = meta["codebook_size"]
            sizes = [int(s) for s in sizes] if isinstance(sizes, (list, tuple)) else [int(sizes)] * L
            begin, end = int(meta["sid_begin_id"]), int(meta["sid_end_id"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"itemic layout: missing or invalid field {e}") from None
        if len(sizes) != L:
            raise ConfigError(f"itemic layout: {len(sizes)} codebook sizes for {L} layers")
        layers, start = [], first
        for size in sizes:
            layers.append(tuple(range(start, start + size)))
            start += size
        last = meta.get("last_id")
        if last is not None and int(last) < start - 1:
            raise ConfigError(f"itemic layout: code tokens end at {start - 1} beyond last_id {last}")
        letters = tuple(meta.get("layer_letters") or string.ascii_lowercase[:L])
        return cls(begin, end, tuple(layers), letters)

    @classmethod
    def from_itemic_json(cls, path: str | os.PathLike) -> "ItemTokenLayout":
        """From itemic.json (or a directory holding it, e.g. an expanded HF checkpoint)."""
        return cls.from_itemic_meta(read_itemic_json(path)[1])

    @classmethod
    def from_tokenizer(cls, tokenizer, num_layers: int, codebook_size: int | Sequence[int],
                       letters: Sequence[str] | None = None, sid_begin: str = "<|sid_begin|>",
                       sid_end: str = "<|sid_end|>") -> "ItemTokenLayout":
        """Look every `<s_{letter}_{code}>` token up in a HF tokenizer (no assumption on id order)."""
        sizes = list(codebook_size) if isinstance(codebook_size, (list, tuple)) else [int(codebook_size)] * num_layers
        letters = list(letters or string.ascii_lowercase[:num_layers])
        vocab = tokenizer.get_vocab()

        def look(tok: str) -> int:
            if tok not in vocab:
                raise ConfigError(f"tokenizer has no token {tok!r}: was the vocabulary expanded?")
            return int(vocab[tok])

        layers = tuple(tuple(look(f"<s_{letters[layer]}_{c}>") for c in range(sizes[layer])) for layer in range(num_layers))
        return cls(look(sid_begin), look(sid_end), layers, tuple(letters))

    @classmethod
    def coerce(cls, obj) -> "ItemTokenLayout":
        """Accept an ItemTokenLayout, a path to itemic.json (or its directory), a dict (either this class's
        `to_dict()` form or the itemic.json fields) or an object carrying the itemic.json attributes."""
        if isinstance(obj, cls):
            return obj
        if isinstance(obj, (str, os.PathLike)):
            return cls.from_itemic_json(obj)
        if isinstance(obj, Mapping):
            if "code_token_ids" in obj:
                return cls(int(obj["sid_begin_id"]), int(obj["sid_end_id"]),
                           tuple(tuple(x) for x in obj["code_token_ids"]), tuple(obj.get("layer_letters", ())))
            return cls.from_itemic_meta(obj)
        for attr in ("to_dict", "as_dict"):
            if callable(getattr(obj, attr, None)):
                d = getattr(obj, attr)()
                if isinstance(d, Mapping) and "first_id" in d:
                    return cls.from_itemic_meta(d)
        keys = ("first_id", "num_layers", "codebook_size", "sid_begin_id", "sid_end_id")
        if all(hasattr(obj, k) for k in keys):
            meta = {k: getattr(obj, k) for k in keys}
            for k in ("last_id", "layer_letters"):
                if hasattr(obj, k):
                    meta[k] = getattr(obj, k)
            return cls.from_itemic_meta(meta)
        raise ConfigError(f"cannot build an item token layout from {type(obj).__name__}")
