"""`ItemicLayout`: where itemic tokens live in an expanded vocabulary (read from `itemic.json`).

Training, checkpoint conversion, embedding freezing and constrained decoding all use this one description:
code c of layer l (0-based: layer 0 is letter a) has id `first_id + l * codebook_size + c`; then come
`sid_begin_id` and `sid_end_id` (= `last_id`). Rows from `base_vocab_size` to `padded_vocab_size` - 1 are new.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from megarec.common.errors import ConfigError, DataError
from megarec.itemic.codes import CODE_TOKEN_RE, SID_BEGIN, SID_END, code_token, item_string, layer_letters

ITEMIC_JSON = "itemic.json"
_ITEM_RE = re.compile(re.escape(SID_BEGIN) + r"(.*?)" + re.escape(SID_END), re.S)


def read_itemic_json(path: str | os.PathLike) -> tuple[str, dict]:
    """(path, fields) of itemic.json, given the file or a directory holding it (e.g. an expanded HF
    checkpoint); ConfigError when it is missing, DataError when it is not JSON."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, ITEMIC_JSON)
    try:
        with open(path, encoding="utf-8") as f:
            return path, json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: itemic.json not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e.msg})") from None


@dataclass(frozen=True)
class ItemicIdFields:
    """The token-id fields of itemic.json (shared by `ItemicLayout` and the data side's `ItemicIds`)."""

    first_id: int
    last_id: int
    num_layers: int
    codebook_size: int
    sid_begin_id: int
    sid_end_id: int
    layer_letters: tuple[str, ...]
    base_vocab_size: int


@dataclass(frozen=True)
class ItemicLayout(ItemicIdFields):
    padded_vocab_size: int

    @classmethod
    def create(cls, base_vocab_size: int, num_layers: int, codebook_size: int, padded_vocab_size: int | None = None
               ) -> "ItemicLayout":
        """Layout of L×K code tokens + sid_begin/sid_end appended after `base_vocab_size` entries."""
        letters = tuple(layer_letters(num_layers))
        first = base_vocab_size
        sid_begin = first + num_layers * codebook_size
        padded = padded_vocab_size if padded_vocab_size is not None else sid_begin + 2
        return cls(first, sid_begin + 1, num_layers, codebook_size, sid_begin, sid_begin + 1, letters,
                   base_vocab_size, padded)

    # ---- persistence --------------------------------------------------------------------------------
    @classmethod
    def load(cls, path_or_dir: str | os.PathLike) -> "ItemicLayout":
        path = Path(path_or_dir)
        if path.is_dir():
            path = path / ITEMIC_JSON
        try:
            raw = json.loads(path.read_text("utf-8"))
        except FileNotFoundError as e:
            raise DataError(f"{path}: not found (write it with `megarec expand-vocab`)") from e
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON ({e})") from e
        fields = [f for f in cls.__dataclass_fields__]
        missing = [f for f in fields if f not in raw]
        if missing:
            raise DataError(f"{path}: missing field(s) {', '.join(missing)}")
        values = {f: raw[f] for f in fields}
        values["layer_letters"] = tuple(values["layer_letters"])
        layout = cls(**values)
        expected = cls.create(layout.base_vocab_size, layout.num_layers, layout.codebook_size, layout.padded_vocab_size)
        for f in fields:
            if getattr(layout, f) != getattr(expected, f):
                raise DataError(f"{path}: field '{f}' is {getattr(layout, f)!r}, but layers/codebook size/base "
                                f"vocabulary imply {getattr(expected, f)!r}")
        if layout.padded_vocab_size <= layout.last_id:
            raise DataError(f"{path}: field 'padded_vocab_size' ({layout.padded_vocab_size}) must exceed "
                            f"last_id ({layout.last_id})")
        return layout

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer_letters"] = list(self.layer_letters)
        return d

    def save(self, path_or_dir: str | os.PathLike, **extra) -> None:
        from megarec.common.atomic import write_json

        path = Path(path_or_dir)
        write_json(path / ITEMIC_JSON if path.is_dir() else path, {**self.to_dict(), **extra})

    # ---- ids ----------------------------------------------------------------------------------------
    @property
    def num_new_tokens(self) -> int:
        return self.last_id - self.first_id + 1

    def is_itemic(self, token_id: int) -> bool:
        """True for code tokens and sid_begin/sid_end."""
        return self.first_id <= token_id <= self.last_id

    def layer_id_range(self, layer: int) -> range:
        """Token ids of layer `layer` (0-based) codes."""
        self._check_layer(layer)
        start = self.first_id + layer * self.codebook_size
        return range(start, start + self.codebook_size)

    def code_to_token_id(self, layer: int, code: int) -> int:
        """Token id of code `code` in layer `layer` (0-based: layer 0 is letter a)."""
        self._check_layer(layer)
        if not 0 <= int(code) < self.codebook_size:
            raise DataError(f"code {code} of layer {self.layer_letters[layer]} outside [0, {self.codebook_size})")
        return self.first_id + layer * self.codebook_size + int(code)

    def token_id_to_code(self, token_id: int) -> tuple[int, int]:
        """(layer, code) of a code token id."""
        if not self.first_id <= token_id < self.sid_begin_id:
            raise DataError(f"token id {token_id} is not an itemic code token "
                            f"(codes are {self.first_id}..{self.sid_begin_id - 1})")
        return divmod(token_id - self.first_id, self.codebook_size)

    def item_to_ids(self, codes: Sequence[int]) -> list[int]:
        """[sid_begin, code ids of layers a, b, ..., sid_end] for one item."""
        if len(codes) != self.num_layers:
            raise DataError(f"item has {len(codes)} codes, expected {self.num_layers}")
        return [self.sid_begin_id, *(self.code_to_token_id(i, c) for i, c in enumerate(codes)), self.sid_end_id]

    def items_to_ids(self, items: Iterable[Sequence[int]]) -> list[int]:
        return [i for codes in items for i in self.item_to_ids(codes)]

    def ids_to_item(self, ids: Sequence[int]) -> tuple[int, ...]:
        """Codes of exactly one item given as its L+2 ids; raises DataError on anything else."""
        ids = [int(i) for i in ids]
        if len(ids) != self.num_layers + 2 or ids[0] != self.sid_begin_id or ids[-1] != self.sid_end_id:
            raise DataError(f"malformed item ids {ids}: expected [{self.sid_begin_id}, {self.num_layers} code ids, "
                            f"{self.sid_end_id}]")
        codes = []
        for pos, tid in enumerate(ids[1:-1]):
            if not self.first_id <= tid < self.sid_begin_id:
                raise DataError(f"malformed item ids {ids}: position {pos + 1} ({tid}) is not a code token")
            layer, code = self.token_id_to_code(tid)
            if layer != pos:
                raise DataError(f"malformed item ids {ids}: position {pos + 1} holds a layer "
                                f"{self.layer_letters[layer]} code, expected layer {self.layer_letters[pos]}")
            codes.append(code)
        return tuple(codes)

    def ids_to_items(self, ids: Sequence[int]) -> list[tuple[int, ...]]:
        """All items in a sequence of ids made only of concatenated items."""
        step = self.num_layers + 2
        if len(ids) % step:
            raise DataError(f"{len(ids)} ids is not a whole number of {step}-token items")
        return [self.ids_to_item(ids[s:s + step]) for s in range(0, len(ids), step)]

    # ---- strings ------------------------------------------------------------------------------------
    def code_token(self, layer: int, code: int) -> str:
        self._check_layer(layer)
        return code_token(self.layer_letters[layer], code)

    def item_to_string(self, codes: Sequence[int]) -> str:
        self.item_to_ids(codes)  # validates
        return item_string(codes, list(self.layer_letters))

    def string_to_items(self, text: str) -> list[tuple[int, ...]]:
        """Codes of every `<|sid_begin|>...<|sid_end|>` item in `text`; malformed items raise DataError."""
        items = []
        for m in _ITEM_RE.finditer(text):
            body = m.group(1)
            toks = CODE_TOKEN_RE.findall(body)
            if "".join(code_token(letter, int(c)) for letter, c in toks) != body or len(toks) != self.num_layers:
                raise DataError(f"malformed item {m.group(0)!r}: expected {self.num_layers} code tokens "
                                f"<s_{self.layer_letters[0]}_N>...")
            codes = []
            for pos, (letter, code) in enumerate(toks):
                if letter != self.layer_letters[pos] or int(code) >= self.codebook_size or code != str(int(code)):
                    raise DataError(f"malformed item {m.group(0)!r}: token {pos + 1} must be "
                                    f"<s_{self.layer_letters[pos]}_N> with N < {self.codebook_size}")
                codes.append(int(code))
            items.append(tuple(codes))
        rest = _ITEM_RE.sub("", text)
        if SID_BEGIN in rest or SID_END in rest:
            raise DataError(f"unbalanced {SID_BEGIN}/{SID_END} in {text!r}")
        return items

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise DataError(f"layer {layer} outside [0, {self.num_layers})")
