"""Itemic tokens on the data side: item codes tables, the token strings of an item
(`<|sid_begin|><s_a_12><s_b_7><s_c_300><|sid_end|>`) and the token ids of codes (via itemic.json and the
C++ interleaver). Token ids are never constants: they come from the itemic.json that vocab expansion wrote.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from megarec.common.errors import ConfigError, DataError
from megarec.itemic import codes as _codes
from megarec.itemic.codes import SID_BEGIN, SID_END, code_token, layer_letters  # noqa: F401  (re-exported)
from megarec.itemic.layout import ItemicIdFields, read_itemic_json


def all_itemic_tokens(num_layers: int, codebook_size: int) -> list[str]:
    """Every itemic token string in vocabulary order: all <s_a_*>, all <s_b_*>, ..., then begin/end."""
    out = [code_token(letter, c) for letter in layer_letters(num_layers) for c in range(codebook_size)]
    return out + [SID_BEGIN, SID_END]


def item_string(codes: Sequence[int], letters: Sequence[str] | None = None) -> str:
    """`<|sid_begin|><s_a_c1><s_b_c2>...<|sid_end|>` for one item's codes."""
    letters = letters or layer_letters(len(codes))
    if len(letters) < len(codes):
        raise ConfigError(f"{len(codes)} codes but only {len(letters)} layer letters")
    return _codes.item_string(codes, list(letters))


def items_string(codes_list: Iterable[Sequence[int]]) -> str:
    """Items concatenated with no separator."""
    return "".join(item_string(c) for c in codes_list)


@dataclass(frozen=True)
class ItemicIds(ItemicIdFields):
    """The id layout written by vocab expansion to itemic.json."""

    @classmethod
    def load(cls, path: str) -> "ItemicIds":
        path, meta = read_itemic_json(path)
        try:
            letters = meta.get("layer_letters") or layer_letters(int(meta["num_layers"]))
            ids = cls(int(meta["first_id"]), int(meta["last_id"]), int(meta["num_layers"]),
                      int(meta["codebook_size"]), int(meta["sid_begin_id"]), int(meta["sid_end_id"]),
                      tuple(letters), int(meta.get("base_vocab_size", meta["first_id"])))
        except KeyError as e:
            raise DataError(f"{path}: missing field {e}") from None
        if ids.first_id + ids.num_layers * ids.codebook_size - 1 > ids.last_id:
            raise DataError(f"{path}: first_id + num_layers*codebook_size exceeds last_id")
        return ids

    def token_ids(self, codes: np.ndarray) -> np.ndarray:
        """int32 ids of items with codes [N, L]: begin, one id per layer, end (C++ interleaver)."""
        from megarec import _cpp

        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != self.num_layers:
            raise DataError(f"expected codes of shape [N, {self.num_layers}], got {list(codes.shape)}")
        try:
            return _cpp.item_token_ids(codes, self.first_id, self.codebook_size, self.sid_begin_id, self.sid_end_id)
        except ValueError as e:
            raise DataError(str(e)) from None


def read_codes_table(path: str) -> dict[str, tuple[int, ...]]:
    """item_id → codes from a codes table (csv/tsv with header item_id,c1..cL; parquet; or JSONL)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: codes table not found")
    low = path.lower()
    if low.endswith((".csv", ".tsv")):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t" if low.endswith(".tsv") else ",")
            header = next(reader, None)
            rows = ((i + 2, dict(zip(header, r))) for i, r in enumerate(reader)) if header else iter(())
            return _codes_from_rows(path, header or [], rows)
    from megarec.common.io import iter_rows

    rows = list(iter_rows(path))
    for row, rec in rows:
        if isinstance(rec, DataError):
            raise rec
    header = list(rows[0][1].keys()) if rows else []
    return _codes_from_rows(path, header, rows)


def _codes_from_rows(path: str, header: list[str], rows) -> dict[str, tuple[int, ...]]:
    cols = [c for c in header if c.startswith("c") and c[1:].isdigit()]
    cols.sort(key=lambda c: int(c[1:]))
    if "item_id" not in header or not cols or [int(c[1:]) for c in cols] != list(range(1, len(cols) + 1)):
        raise DataError(f"{path}: codes table needs columns item_id,c1..cL (got {header})")
    out: dict[str, tuple[int, ...]] = {}
    for row, rec in rows:
        item_id = str(rec.get("item_id", "")).strip()
        if not item_id:
            raise DataError(f"{path}: row {row}: field 'item_id': empty")
        try:
            codes = tuple(int(rec[c]) for c in cols)
        except (TypeError, ValueError, KeyError):
            raise DataError(f"{path}: row {row}: field 'c1..c{len(cols)}': expected integers") from None
        if any(c < 0 for c in codes):
            raise DataError(f"{path}: row {row}: negative code")
        if item_id in out:
            raise DataError(f"{path}: row {row}: field 'item_id': duplicate item id {item_id!r}")
        out[item_id] = codes
    return out


def write_codes_table(path: str, codes: Mapping[str, Sequence[int]]) -> None:
    """Atomic CSV codes table: item_id,c1..cL."""
    from megarec.common.io import atomic_open

    num_layers = len(next(iter(codes.values()))) if codes else 0
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item_id"] + [f"c{i + 1}" for i in range(num_layers)])
        for item_id, cs in codes.items():
            w.writerow([item_id, *cs])


def placeholder_codes(item_ids: Iterable[str], num_layers: int, codebook_size: int,
                      seed: int = 0) -> dict[str, tuple[int, ...]]:
    """Deterministic hash codes for items that have no itemic tokenizer codes yet (unique per item;
    they carry no semantics: replace them with RQ-KMeans codes for real training)."""
    out: dict[str, tuple[int, ...]] = {}
    used: set[tuple[int, ...]] = set()
    capacity = codebook_size ** num_layers
    for item_id in item_ids:
        if len(used) >= capacity:
            raise ConfigError(f"{num_layers} layers x {codebook_size} codes cannot give unique codes to all items")
        salt = 0
        while True:
            h = hashlib.blake2b(f"{seed}:{item_id}:{salt}".encode(), digest_size=16).digest()
            value = int.from_bytes(h, "little")
            codes = []
            for _ in range(num_layers):
                codes.append(value % codebook_size)
                value //= codebook_size
            codes_t = tuple(codes)
            if codes_t not in used:
                break
            salt += 1
        used.add(codes_t)
        out[item_id] = codes_t
    return out
