"""Itemic tokens, the one description every stage shares: token strings, `itemic.json` (`ItemicLayout`), the
item codes table and the code → items map.

An item with codes (c1, c2, c3) is written `<|sid_begin|><s_a_c1><s_b_c2><s_c_c3><|sid_end|>`; lists of items
are concatenated with no separator. Layer letters are a, b, c, ... (one per layer, at most 26). The tokens are
appended to a base vocabulary in this order: all `<s_a_*>`, all `<s_b_*>`, ..., then `<|sid_begin|>`,
`<|sid_end|>` — so code c of layer l (0-based) has id `first_id + l · codebook_size + c`. `itemic.json`, written
by vocabulary expansion, records that layout; token ids are never constants elsewhere.

Codes tables map item ids to codes: columns `item_id, c1..cL`, as csv, tsv, parquet or JSON lines.
"""

from __future__ import annotations

import csv
import json
import os
import re
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Hashable, Iterable, Mapping, Optional, Sequence

import numpy as np

from megarec.common.errors import ConfigError, DataError

SID_BEGIN = "<|sid_begin|>"
SID_END = "<|sid_end|>"
MAX_LAYERS = len(string.ascii_lowercase)
CODE_TOKEN_RE = re.compile(r"<s_([a-z])_(\d+)>")
# Anything written like an itemic token inside text (a code token or an item bracket).
ITEMIC_TEXT_RE = re.compile(r"<s_[a-z]_\d+>|<\|sid_(?:begin|end)\|>")
ITEMIC_JSON = "itemic.json"
_ITEM_RE = re.compile(re.escape(SID_BEGIN) + r"(.*?)" + re.escape(SID_END), re.S)


# ------------------------------------------------------------------------------------------ token strings
def layer_letters(num_layers: int) -> list[str]:
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise ConfigError(f"number of itemic layers must be >= 1, got {num_layers!r}")
    if num_layers > MAX_LAYERS:
        raise ConfigError(f"{num_layers} itemic layers, but layer letters a..z allow at most {MAX_LAYERS}")
    return list(string.ascii_lowercase[:num_layers])


def check_codebook_size(codebook_size: int) -> None:
    if not isinstance(codebook_size, int) or isinstance(codebook_size, bool) or codebook_size < 1:
        raise ConfigError(f"codebook size must be >= 1, got {codebook_size!r}")


def code_token(letter: str, code: int) -> str:
    return f"<s_{letter}_{code}>"


def itemic_token_strings(num_layers: int, codebook_size: int) -> list[str]:
    """All new tokens in id order: layer a codes, layer b codes, ..., then sid_begin, sid_end."""
    check_codebook_size(codebook_size)
    tokens = [code_token(letter, c) for letter in layer_letters(num_layers) for c in range(codebook_size)]
    return tokens + [SID_BEGIN, SID_END]


def item_string(codes: Sequence[int], letters: Optional[Sequence[str]] = None) -> str:
    """`<|sid_begin|><s_a_c1><s_b_c2>...<|sid_end|>` for one item's codes."""
    letters = list(letters) if letters else layer_letters(len(codes))
    if len(letters) < len(codes):
        raise ConfigError(f"{len(codes)} codes but only {len(letters)} layer letters")
    return SID_BEGIN + "".join(code_token(letter, int(c)) for letter, c in zip(letters, codes)) + SID_END


def items_string(codes_list: Iterable[Sequence[int]]) -> str:
    """Items concatenated with no separator."""
    return "".join(item_string(c) for c in codes_list)


# ------------------------------------------------------------------------------------------ itemic.json
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
        raise ConfigError(f"{path}: itemic.json not found (vocabulary expansion writes it)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from None


def find_itemic_json(*dirs: Optional[str]) -> Optional[str]:
    """The first itemic.json found in the given directories, or None."""
    for d in dirs:
        if d and os.path.isfile(os.path.join(d, ITEMIC_JSON)):
            return os.path.join(d, ITEMIC_JSON)
    return None


def itemic_id_range(path: str | os.PathLike) -> tuple[int, int]:
    """(first_id, last_id) of the itemic tokens recorded in itemic.json: all that stage-1 freezing needs."""
    path, meta = read_itemic_json(path)
    try:
        return int(meta["first_id"]), int(meta["last_id"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: missing or invalid field {e}") from None


@dataclass(frozen=True)
class ItemicLayout:
    """Where itemic tokens live in an expanded vocabulary. Rows base_vocab_size .. padded_vocab_size - 1 are
    new; code c of layer l has id `first_id + l · codebook_size + c`, then sid_begin, sid_end (= last_id)."""

    first_id: int
    last_id: int
    num_layers: int
    codebook_size: int
    sid_begin_id: int
    sid_end_id: int
    layer_letters: tuple[str, ...]
    base_vocab_size: int
    padded_vocab_size: int

    @classmethod
    def create(
        cls, base_vocab_size: int, num_layers: int, codebook_size: int, padded_vocab_size: Optional[int] = None
    ) -> "ItemicLayout":
        """Layout of L×K code tokens + sid_begin/sid_end appended after `base_vocab_size` entries."""
        check_codebook_size(codebook_size)
        letters = tuple(layer_letters(num_layers))
        sid_begin = base_vocab_size + num_layers * codebook_size
        padded = padded_vocab_size if padded_vocab_size is not None else sid_begin + 2
        return cls(
            base_vocab_size,
            sid_begin + 1,
            num_layers,
            codebook_size,
            sid_begin,
            sid_begin + 1,
            letters,
            base_vocab_size,
            padded,
        )

    @classmethod
    def from_meta(cls, meta: Mapping, where: str = "itemic layout") -> "ItemicLayout":
        """From itemic.json fields. first_id, num_layers and codebook_size are required; the others, when
        present, must agree with them (base_vocab_size defaults to first_id, padded_vocab_size to last_id + 1)."""
        try:
            first, num_layers, size = int(meta["first_id"]), int(meta["num_layers"]), int(meta["codebook_size"])
        except KeyError as e:
            raise ConfigError(f"{where}: missing field {e}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: invalid field ({e})") from None
        base = int(meta.get("base_vocab_size", first))
        if base != first:
            raise DataError(f"{where}: field 'first_id' is {first}, but base_vocab_size is {base}")
        expected = cls.create(base, num_layers, size, None)
        padded = int(meta.get("padded_vocab_size", expected.last_id + 1))
        layout = cls.create(base, num_layers, size, padded)
        for name in ("last_id", "sid_begin_id", "sid_end_id"):
            if name in meta and int(meta[name]) != getattr(layout, name):
                raise DataError(
                    f"{where}: field '{name}' is {meta[name]!r}, but layers/codebook size/base "
                    f"vocabulary imply {getattr(layout, name)!r}"
                )
        if "layer_letters" in meta and tuple(meta["layer_letters"]) != layout.layer_letters:
            raise DataError(
                f"{where}: field 'layer_letters' is {meta['layer_letters']!r}, expected {list(layout.layer_letters)!r}"
            )
        if layout.padded_vocab_size <= layout.last_id:
            raise DataError(
                f"{where}: field 'padded_vocab_size' ({layout.padded_vocab_size}) must exceed "
                f"last_id ({layout.last_id})"
            )
        return layout

    @classmethod
    def load(cls, path_or_dir: str | os.PathLike) -> "ItemicLayout":
        path, meta = read_itemic_json(path_or_dir)
        return cls.from_meta(meta, path)

    @classmethod
    def from_tokenizer(cls, tokenizer, num_layers: int, codebook_size: int) -> "ItemicLayout":
        """The layout of a tokenizer holding the itemic tokens; every token must sit at its layout id."""
        vocab = tokenizer.get_vocab()
        first = vocab.get(code_token("a", 0))
        if first is None:
            raise ConfigError(f"tokenizer has no token {code_token('a', 0)!r}: was the vocabulary expanded?")
        layout = cls.create(int(first), num_layers, codebook_size, max(vocab.values()) + 1)
        for token, expected in zip(itemic_token_strings(num_layers, codebook_size), layout.itemic_token_ids()):
            if vocab.get(token) != expected:
                raise ConfigError(
                    f"tokenizer token {token!r} has id {vocab.get(token)}, expected {expected} "
                    f"(itemic tokens must follow each other in layout order)"
                )
        return layout

    @classmethod
    def coerce(cls, obj) -> "ItemicLayout":
        """An ItemicLayout, a path to itemic.json (or its directory), a dict of itemic.json fields, or an object
        carrying those attributes."""
        if isinstance(obj, cls):
            return obj
        if isinstance(obj, (str, os.PathLike)):
            return cls.load(obj)
        if isinstance(obj, Mapping):
            return cls.from_meta(obj)
        keys = ("first_id", "num_layers", "codebook_size")
        if all(hasattr(obj, k) for k in keys):
            fields = keys + (
                "last_id",
                "sid_begin_id",
                "sid_end_id",
                "layer_letters",
                "base_vocab_size",
                "padded_vocab_size",
            )
            return cls.from_meta({k: getattr(obj, k) for k in fields if hasattr(obj, k)})
        raise ConfigError(f"cannot build an itemic layout from {type(obj).__name__}")

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

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return (self.codebook_size,) * self.num_layers

    @property
    def code_token_ids(self) -> tuple[range, ...]:
        """`code_token_ids[layer][code]` is the token id of that code."""
        return tuple(self.layer_id_range(layer) for layer in range(self.num_layers))

    def is_itemic(self, token_id: int) -> bool:
        """True for code tokens and sid_begin/sid_end."""
        return self.first_id <= int(token_id) <= self.last_id

    def itemic_token_ids(self) -> list[int]:
        """Every code token id, then sid_begin and sid_end."""
        return list(range(self.first_id, self.last_id + 1))

    def layer_id_range(self, layer: int) -> range:
        """Token ids of layer `layer` (0-based) codes."""
        self._check_layer(layer)
        start = self.first_id + layer * self.codebook_size
        return range(start, start + self.codebook_size)

    def token_id(self, layer: int, code: int) -> int:
        """Token id of code `code` in layer `layer` (0-based: layer 0 is letter a)."""
        self._check_layer(layer)
        if not 0 <= int(code) < self.codebook_size:
            raise DataError(f"code {code} of layer {self.layer_letters[layer]} outside [0, {self.codebook_size})")
        return self.first_id + layer * self.codebook_size + int(code)

    def code_of(self, token_id: int) -> Optional[tuple[int, int]]:
        """(layer, code) of a code token id, or None for any other token."""
        t = int(token_id)
        if not self.first_id <= t < self.sid_begin_id:
            return None
        return divmod(t - self.first_id, self.codebook_size)

    def code_ids(self, codes: Sequence[int]) -> list[int]:
        """Token ids of an item's codes (without delimiters)."""
        if len(codes) != self.num_layers:
            raise DataError(f"item has {len(codes)} codes, expected {self.num_layers}")
        return [self.token_id(layer, c) for layer, c in enumerate(codes)]

    def item_ids(self, codes: Sequence[int]) -> list[int]:
        """[sid_begin, code ids of layers a, b, ..., sid_end] for one item."""
        return [self.sid_begin_id, *self.code_ids(codes), self.sid_end_id]

    def items_ids(self, items: Iterable[Sequence[int]]) -> list[int]:
        return [i for codes in items for i in self.item_ids(codes)]

    def token_ids(self, codes: np.ndarray) -> np.ndarray:
        """int32 ids of items with codes [N, L]: begin, one id per layer, end (the C++ interleaver)."""
        from megarec import _cpp

        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != self.num_layers:
            raise DataError(f"expected codes of shape [N, {self.num_layers}], got {list(codes.shape)}")
        try:
            return _cpp.item_token_ids(codes, self.first_id, self.codebook_size, self.sid_begin_id, self.sid_end_id)
        except ValueError as e:
            raise DataError(str(e)) from None

    def ids_to_item(self, ids: Sequence[int]) -> tuple[int, ...]:
        """Codes of exactly one item given as its L+2 ids; raises DataError on anything else."""
        ids = [int(i) for i in ids]
        if len(ids) != self.num_layers + 2 or ids[0] != self.sid_begin_id or ids[-1] != self.sid_end_id:
            raise DataError(
                f"malformed item ids {ids}: expected [{self.sid_begin_id}, {self.num_layers} code ids, "
                f"{self.sid_end_id}]"
            )
        codes = []
        for pos, tid in enumerate(ids[1:-1]):
            found = self.code_of(tid)
            if found is None:
                raise DataError(f"malformed item ids {ids}: position {pos + 1} ({tid}) is not a code token")
            layer, code = found
            if layer != pos:
                raise DataError(
                    f"malformed item ids {ids}: position {pos + 1} holds a layer "
                    f"{self.layer_letters[layer]} code, expected layer {self.layer_letters[pos]}"
                )
            codes.append(code)
        return tuple(codes)

    def ids_to_items(self, ids: Sequence[int]) -> list[tuple[int, ...]]:
        """All items in a sequence of ids made only of concatenated items."""
        step = self.num_layers + 2
        if len(ids) % step:
            raise DataError(f"{len(ids)} ids is not a whole number of {step}-token items")
        return [self.ids_to_item(ids[s : s + step]) for s in range(0, len(ids), step)]

    def parse_items(self, token_ids: Sequence[int]) -> list[tuple[int, ...]]:
        """Code tuples of every well-formed item (begin, one code per layer in order, end) in any token
        sequence; anything else is skipped."""
        out, toks, n = [], [int(t) for t in token_ids], self.num_layers
        for i, t in enumerate(toks):
            if t != self.sid_begin_id or i + n + 1 >= len(toks):
                continue
            codes = []
            for layer in range(n):
                found = self.code_of(toks[i + 1 + layer])
                if found is None or found[0] != layer:
                    break
                codes.append(found[1])
            if len(codes) == n and toks[i + 1 + n] == self.sid_end_id:
                out.append(tuple(codes))
        return out

    # ---- strings ------------------------------------------------------------------------------------
    def code_token(self, layer: int, code: int) -> str:
        self._check_layer(layer)
        return code_token(self.layer_letters[layer], code)

    def item_to_string(self, codes: Sequence[int]) -> str:
        self.item_ids(codes)  # validates
        return item_string(codes, self.layer_letters)

    def string_to_items(self, text: str) -> list[tuple[int, ...]]:
        """Codes of every `<|sid_begin|>...<|sid_end|>` item in `text`; malformed items raise DataError."""
        items = []
        for m in _ITEM_RE.finditer(text):
            body = m.group(1)
            toks = CODE_TOKEN_RE.findall(body)
            if "".join(code_token(letter, int(c)) for letter, c in toks) != body or len(toks) != self.num_layers:
                raise DataError(
                    f"malformed item {m.group(0)!r}: expected {self.num_layers} code tokens "
                    f"<s_{self.layer_letters[0]}_N>..."
                )
            codes = []
            for pos, (letter, code) in enumerate(toks):
                if letter != self.layer_letters[pos] or int(code) >= self.codebook_size or code != str(int(code)):
                    raise DataError(
                        f"malformed item {m.group(0)!r}: token {pos + 1} must be "
                        f"<s_{self.layer_letters[pos]}_N> with N < {self.codebook_size}"
                    )
                codes.append(int(code))
            items.append(tuple(codes))
        rest = _ITEM_RE.sub("", text)
        if SID_BEGIN in rest or SID_END in rest:
            raise DataError(f"unbalanced {SID_BEGIN}/{SID_END} in {text!r}")
        return items

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise DataError(f"layer {layer} outside [0, {self.num_layers})")


# ------------------------------------------------------------------------------------------ codes tables
ID_COLUMN = "item_id"


def code_columns(num_layers: int) -> list[str]:
    return [f"c{i + 1}" for i in range(num_layers)]


def show_id(value) -> str:
    """An item id as users wrote it (numpy scalars unwrapped), quoted when it is a string."""
    return repr(value.item() if isinstance(value, np.generic) else value)


@dataclass
class CodesTable:
    """Item ids (int64 or str objects, in table order) and their codes [N, L] (int64)."""

    ids: np.ndarray
    codes: np.ndarray

    @property
    def num_layers(self) -> int:
        return int(self.codes.shape[1])

    def as_dict(self) -> dict[str, tuple[int, ...]]:
        """item id (as a string) → codes."""
        return {
            str(i.item() if isinstance(i, np.generic) else i): tuple(int(c) for c in row)
            for i, row in zip(self.ids, self.codes)
        }

    def check(self, path: str, num_layers: Optional[int] = None, codebook_size: Optional[int] = None) -> None:
        if num_layers is not None and self.num_layers != num_layers:
            raise DataError(
                f"{path}: codes table has {self.num_layers} code columns, expected {num_layers} "
                f"(columns item_id,c1..c{num_layers})"
            )
        if codebook_size is not None:
            for j in range(self.num_layers):
                bad = (self.codes[:, j] < 0) | (self.codes[:, j] >= codebook_size)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise DataError(
                        f"{path}: row {i + 1}: field 'c{j + 1}' = {self.codes[i, j]} outside [0, {codebook_size})"
                    )


def read_codes_table(
    path: str | os.PathLike, num_layers: Optional[int] = None, codebook_size: Optional[int] = None
) -> CodesTable:
    """A codes table (csv / tsv with a header, parquet, or JSON lines with item_id, c1..cL). Item ids must be
    unique and codes non-negative integers; with `num_layers` / `codebook_size` the shape and ranges are
    checked too. Errors name the file, row and field."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: codes table not found")
    low = path.lower()
    if low.endswith((".csv", ".tsv")):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t" if low.endswith(".tsv") else ",")
            header = next(reader, None) or []
            rows = [(i + 2, dict(zip(header, r))) for i, r in enumerate(reader)]
    elif low.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: cannot read codes table ({e})") from None
        header = list(table.column_names)
        rows = [(i + 1, rec) for i, rec in enumerate(table.to_pylist())]
    else:
        from megarec.common.io import iter_rows

        rows = list(iter_rows(path))
        for _, rec in rows:
            if isinstance(rec, DataError):
                raise rec
        header = list(rows[0][1].keys()) if rows else []
    table = _codes_from_rows(path, header, rows)
    table.check(path, num_layers, codebook_size)
    return table


def _codes_from_rows(path: str, header: list[str], rows: list) -> CodesTable:
    cols = sorted((c for c in header if c.startswith("c") and c[1:].isdigit()), key=lambda c: int(c[1:]))
    if ID_COLUMN not in header or not cols or [int(c[1:]) for c in cols] != list(range(1, len(cols) + 1)):
        raise DataError(f"{path}: codes table needs columns item_id,c1..cL (got {', '.join(header) or 'none'})")
    ids: list = []
    codes = np.empty((len(rows), len(cols)), dtype=np.int64)
    seen: dict = {}
    for k, (row, rec) in enumerate(rows):
        item_id = rec.get(ID_COLUMN)
        if isinstance(item_id, str):
            item_id = item_id.strip()
        if item_id is None or item_id == "":
            raise DataError(f"{path}: row {row}: field 'item_id': empty")
        for j, c in enumerate(cols):
            value = rec.get(c)
            try:
                if isinstance(value, bool) or value is None or float(value) != int(float(value)):
                    raise ValueError
                codes[k, j] = int(float(value))
            except (TypeError, ValueError):
                raise DataError(
                    f"{path}: row {row}: field '{c}': expected a non-negative integer, got {value!r}"
                ) from None
            if codes[k, j] < 0:
                raise DataError(f"{path}: row {row}: field '{c}': expected a non-negative integer, got {value!r}")
        key = str(item_id)
        if key in seen:
            raise DataError(
                f"{path}: row {row}: field 'item_id': duplicate item id {item_id!r} (first at row {seen[key]})"
            )
        seen[key] = row
        ids.append(item_id)
    as_int = all(
        isinstance(i, (int, np.integer)) or (isinstance(i, str) and i.lstrip("-").isdigit() and str(int(i)) == i)
        for i in ids
    )
    id_array = (
        np.array([int(i) for i in ids], dtype=np.int64)
        if as_int and ids
        else np.array([str(i) for i in ids], dtype=object)
    )
    return CodesTable(id_array, codes)


def write_codes_table(path: str | os.PathLike, ids: Sequence | np.ndarray, codes: np.ndarray) -> None:
    """Write `item_id, c1..cL` atomically: csv / tsv by extension, JSON lines for .jsonl, else parquet."""
    import pyarrow as pa

    from megarec.common.atomic import atomic_path

    path = os.fspath(path)
    ids = np.asarray(ids) if not isinstance(ids, np.ndarray) else ids
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2 or len(ids) != len(codes):
        raise DataError(f"{path}: {len(ids)} item ids for codes of shape {list(codes.shape)}")
    low = path.lower()
    with atomic_path(path) as tmp:
        if low.endswith((".csv", ".tsv")):
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f, delimiter="\t" if low.endswith(".tsv") else ",")
                writer.writerow([ID_COLUMN, *code_columns(codes.shape[1])])
                for item_id, row in zip(ids, codes):
                    writer.writerow(
                        [item_id.item() if isinstance(item_id, np.generic) else item_id, *(int(c) for c in row)]
                    )
        elif low.endswith(".jsonl"):
            with open(tmp, "w", encoding="utf-8") as f:
                for item_id, row in zip(ids, codes):
                    rec = {ID_COLUMN: item_id.item() if isinstance(item_id, np.generic) else item_id}
                    rec.update({c: int(v) for c, v in zip(code_columns(codes.shape[1]), row)})
                    f.write(json.dumps(rec) + "\n")
        else:
            import pyarrow.parquet as pq

            cols = {ID_COLUMN: pa.array(ids.tolist())}
            for j, name in enumerate(code_columns(codes.shape[1])):
                cols[name] = pa.array(np.ascontiguousarray(codes[:, j]).astype(np.int32))
            pq.write_table(pa.table(cols), tmp)


def lookup_rows(table_ids: np.ndarray, query_ids: np.ndarray) -> np.ndarray:
    """Row index in `table_ids` of each query id, -1 when absent (ids of either kind: int or str)."""
    if len(table_ids) == 0:
        return np.full(len(query_ids), -1, dtype=np.int64)
    if (table_ids.dtype == object) != (query_ids.dtype == object):
        table_ids, query_ids = table_ids.astype(str).astype(object), query_ids.astype(str).astype(object)
    order = np.argsort(table_ids, kind="stable")
    sorted_ids = table_ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, query_ids), 0, len(sorted_ids) - 1)
    found = sorted_ids[pos] == query_ids
    return np.where(found, order[pos], -1).astype(np.int64)


# ------------------------------------------------------------------------------------------ code → items
def _sort_key(item) -> tuple:
    return (0, item, "") if isinstance(item, (int, np.integer)) else (1, 0, str(item))


class CodeToItems:
    """Maps a code tuple to the items that share it, most popular first (ties: smaller item id first)."""

    def __init__(
        self, item_codes: Mapping[Hashable, Sequence[int]], popularity: Optional[Mapping[Hashable, float]] = None
    ):
        pop = popularity or {}
        groups: dict[tuple[int, ...], list] = {}
        for item, codes in item_codes.items():
            groups.setdefault(tuple(int(c) for c in codes), []).append(item)
        self._items = {
            codes: sorted(items, key=lambda it: (-float(pop.get(it, 0.0)), _sort_key(it)))
            for codes, items in groups.items()
        }

    def items(self, codes: Sequence[int]) -> list:
        """Items with these codes, most popular first; empty when no item has them."""
        return list(self._items.get(tuple(int(c) for c in codes), ()))

    def rank_items(self, ranked_codes: Iterable[Sequence[int]], expand: str = "first") -> list:
        """Item ranking from a ranked list of code tuples. expand="first" keeps the most popular item of each
        tuple (the RecIF-Bench convention); expand="all" lists every item of the tuple, most popular first.
        Unknown tuples are skipped; repeated items keep their first position."""
        if expand not in ("first", "all"):
            raise ConfigError(f"expand must be 'first' or 'all', got {expand!r}")
        out: list = []
        seen: set = set()
        for codes in ranked_codes:
            items = self.items(codes)
            for it in items[:1] if expand == "first" else items:
                if it not in seen:
                    seen.add(it)
                    out.append(it)
        return out
