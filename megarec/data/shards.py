"""Input shards for parallel, resumable preprocessing: fixed row ranges of the input files.

A plain JSONL file is scanned once for line starts, so a worker seeks straight to its byte range; gzip
JSONL cannot be seeked and forms one shard per file; parquet shards are row ranges (row groups skipped).
The plan depends only on the inputs and --shard-rows, so a resumed run gets the same shards.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Optional

import numpy as np

from megarec.common.errors import DataError
from megarec.common.io import file_format, iter_rows, json_error

SCAN_BLOCK = 1 << 24


@dataclass(frozen=True)
class Shard:
    index: int
    path: str
    fmt: str  # "jsonl", "jsonl.gz", "parquet"
    start_row: int  # 0-based, inclusive
    stop_row: int  # exclusive
    byte_start: Optional[int] = None
    byte_end: Optional[int] = None

    @property
    def rows(self) -> int:
        return self.stop_row - self.start_row

    def to_dict(self) -> dict:
        return asdict(self)


def _jsonl_boundaries(path: str, shard_rows: int) -> tuple[list[int], int, int]:
    """(byte offsets where shards start, number of lines, file size)."""
    starts = [0]
    lines = 0
    size = os.path.getsize(path)
    pos = 0
    last_byte = b"\n"
    with open(path, "rb") as f:
        while True:
            block = f.read(SCAN_BLOCK)
            if not block:
                break
            nl = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
            # line numbers (1-based count of lines finished) after each newline in this block
            done = lines + 1 + np.arange(len(nl))
            for k in np.flatnonzero(done % shard_rows == 0):
                starts.append(pos + int(nl[k]) + 1)
            lines += len(nl)
            pos += len(block)
            last_byte = block[-1:]
    if last_byte != b"\n" and size:
        lines += 1
    if starts[-1] >= size and len(starts) > 1:
        starts.pop()
    return starts, lines, size


def plan_shards(paths: list[str], shard_rows: int) -> list[Shard]:
    if shard_rows < 1:
        raise DataError("--shard-rows must be >= 1")
    shards: list[Shard] = []
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path}: input file not found")
        fmt = file_format(path)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            n = pq.ParquetFile(path).metadata.num_rows
            for a in range(0, n, shard_rows):
                shards.append(Shard(len(shards), path, "parquet", a, min(n, a + shard_rows)))
        elif path.endswith(".gz"):
            from megarec.common.io import count_rows

            shards.append(Shard(len(shards), path, "jsonl.gz", 0, count_rows(path)))
        else:
            starts, lines, size = _jsonl_boundaries(path, shard_rows)
            for k, b in enumerate(starts):
                end = starts[k + 1] if k + 1 < len(starts) else size
                a = k * shard_rows
                shards.append(Shard(len(shards), path, "jsonl", a, min(lines, a + shard_rows), b, end))
    return shards


def read_shard(shard: Shard) -> Iterator[tuple[int, Any]]:
    """(1-based row, record or DataError for unparsable JSON) for every non-blank row of the shard."""
    if shard.fmt != "jsonl":
        yield from iter_rows(shard.path, start=shard.start_row, stop=shard.stop_row)
        return
    with open(shard.path, "rb") as f:  # streamed line by line: memory does not grow with the shard
        f.seek(shard.byte_start)
        remaining = shard.byte_end - shard.byte_start
        row = shard.start_row
        for line in f:
            if remaining <= 0:
                break
            remaining -= len(line)
            row += 1
            if row > shard.stop_row:
                break
            if not line.strip():
                continue
            try:
                yield row, json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                yield row, DataError(f"{shard.path}: row {row}: invalid JSON ({json_error(e)})")
