"""File helpers shared by the data tools: atomic writes and row iteration over JSONL / parquet files
that keeps the file name and 1-based row number of every record (for error messages)."""

from __future__ import annotations

import gzip
import json
import os
from typing import Any, Iterable, Iterator

from megarec.common.atomic import atomic_open, temp_path, write_json  # noqa: F401  (atomic writes, re-exported)
from megarec.common.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


def json_error(e: Exception) -> str:
    """The whole reason a JSON text failed to parse, with its position: `json.JSONDecodeError`'s own message
    ("Invalid control character at: line 1 column 10 (char 9)"), or where the bytes are not UTF-8."""
    if isinstance(e, UnicodeDecodeError):
        return f"not UTF-8 (byte 0x{e.object[e.start]:02x} at position {e.start})"
    return str(e)


def write_jsonl(path: str, records: Iterable[dict]) -> int:
    """Atomically write records as JSON lines (UTF-8, not ASCII-escaped); returns the count."""
    n = 0
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")))
            fh.write("\n")
            n += 1
    return n


def file_format(path: str) -> str:
    """'jsonl' or 'parquet' from the file name; DataError otherwise."""
    low = path.lower()
    if low.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if low.endswith(JSONL_SUFFIXES):
        return "jsonl"
    raise DataError(f"{path}: unknown file type (expected one of {', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)})")


def open_text(path: str):
    """Text handle for a plain or gzip-compressed file."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def iter_rows(path: str, *, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, Any]]:
    """(row, record) for rows [start, stop) of a JSONL or parquet file; row numbers are 1-based.

    A JSONL line that is not valid JSON yields a DataError *instance* as its record, so callers can
    choose to fail or skip. Blank JSONL lines count as rows but are not yielded.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    if file_format(path) == "parquet":
        yield from _iter_parquet(path, start, stop)
        return
    with open_text(path) as fh:
        for index, line in enumerate(fh):
            if index < start:
                continue
            if stop is not None and index >= stop:
                break
            if not line.strip():
                continue
            try:
                yield index + 1, json.loads(line)
            except json.JSONDecodeError as e:
                yield index + 1, DataError(f"{path}: row {index + 1}: invalid JSON ({json_error(e)})")


def _iter_parquet(path: str, start: int, stop: int | None) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    row = 0
    for group in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(group).num_rows
        if row + n <= start:
            row += n
            continue
        if stop is not None and row >= stop:
            break
        for rec in pf.read_row_group(group).to_pylist():
            if row >= start and (stop is None or row < stop):
                yield row + 1, rec
            row += 1


def count_rows(path: str) -> int:
    """Number of rows (JSONL lines, parquet rows) without parsing records."""
    if file_format(path) == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    n = 0
    last = b"\n"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (0 if last == b"\n" else 1)


def read_records(path: str) -> Iterator[tuple[int, dict]]:
    """(row, dict) for every row; raises DataError for invalid JSON or a non-object row."""
    for row, rec in iter_rows(path):
        if isinstance(rec, DataError):
            raise rec
        if not isinstance(rec, dict):
            raise DataError(f"{path}: row {row}: expected a JSON object, got {type(rec).__name__}")
        yield row, rec
