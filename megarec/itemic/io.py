"""Reading item embeddings (.npy memmap or parquet, streamed in batches). Codes tables live in
`megarec.common.itemic`.

Embedding inputs:
  * `.npy` float array [N, D], memory-mapped; item ids from `--ids` (.npy or .txt, one per line), else from a
    sibling `<stem>.ids.npy` / `<stem>.ids.txt`, else the row number.
  * `.parquet` with an `item_id` column and an `embedding` list column (fixed width), read batch by batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from megarec.common.errors import DataError
from megarec.common.itemic import show_id

ID_COLUMN = "item_id"
NPY_MAGIC = b"\x93NUMPY"
EMBEDDING_COLUMN = "embedding"


def load_npy(path: str, mmap_mode=None) -> np.ndarray:
    """np.load of a .npy file without pickles; DataError naming the file for anything else (NumPy calls a
    file without its header "pickled data")."""
    with open(path, "rb") as f:
        magic = f.read(len(NPY_MAGIC))
    if magic != NPY_MAGIC:
        raise DataError(f"{path}: not a .npy file (no NumPy header; write it with numpy.save)")
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a numeric .npy array ({e})") from None


def _read_ids_file(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        ids = load_npy(path)
        if ids.ndim != 1:
            raise DataError(f"{path}: item ids must be a 1-D array, got shape {ids.shape}")
        return ids
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    if lines and lines[-1] == "":
        lines.pop()
    for i, line in enumerate(lines):
        if not line:
            raise DataError(f"{path}: line {i + 1}: empty item id")
    try:
        return np.array([int(x) for x in lines], dtype=np.int64)
    except ValueError:
        return np.array(lines, dtype=object)


def _check_unique_ids(ids: np.ndarray, where: str) -> None:
    uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if len(uniq) != len(ids):
        dup = int(np.argmax(counts > 1))
        raise DataError(
            f"{where}: field '{ID_COLUMN}': duplicate item id {show_id(uniq[dup])} (first at row {int(first[dup])})"
        )


def check_finite(x: np.ndarray, start: int, ids: np.ndarray | None, path: str) -> None:
    """Raise DataError naming the first row of `x` (global row `start + i`) that holds NaN or Inf."""
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        name = f" (item_id {show_id(ids[i])})" if ids is not None else ""
        raise DataError(f"{path}: row {start + i}{name}: field '{EMBEDDING_COLUMN}' contains NaN or Inf")


@dataclass
class EmbeddingSource:
    """A table of item embeddings that can be streamed in row batches or sampled by row index."""

    path: str
    num_items: int
    dim: int
    ids: np.ndarray  # [N], int64 or object (str)
    _array: np.ndarray | None = None  # memmap for .npy; None for parquet

    def iter_batches(self, batch_rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (first_row, ids, float32 embeddings [b, D]) over all rows, validated (finite, fixed width)."""
        if self._array is not None:
            for s in range(0, self.num_items, batch_rows):
                x = np.asarray(self._array[s : s + batch_rows], dtype=np.float32)
                check_finite(x, s, self.ids[s : s + batch_rows], self.path)
                yield s, self.ids[s : s + batch_rows], x
            return
        start = 0
        for x in self._iter_parquet_embeddings(batch_rows):
            ids = self.ids[start : start + len(x)]
            check_finite(x, start, ids, self.path)
            yield start, ids, x
            start += len(x)

    def take(self, rows: np.ndarray, batch_rows: int = 65536) -> np.ndarray:
        """Embeddings of the given row indices (any order), float32 [len(rows), D]."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        contiguous = (
            len(rows) > 0
            and int(sorted_rows[-1]) - int(sorted_rows[0]) + 1 == len(rows)
            and bool(np.all(np.diff(sorted_rows) == 1))
        )
        if self._array is not None and contiguous and np.array_equal(order, np.arange(len(rows))):
            first = int(sorted_rows[0])  # a run of rows in order (e.g. all rows): copy slices, no fancy indexing
            for s in range(0, len(rows), batch_rows):
                out[s : s + batch_rows] = self._array[first + s : first + min(s + batch_rows, len(rows))]
        elif self._array is not None:
            for s in range(0, len(rows), batch_rows):
                sel = sorted_rows[s : s + batch_rows]
                out[order[s : s + batch_rows]] = np.asarray(self._array[sel], dtype=np.float32)
        else:
            start = 0
            for x in self._iter_parquet_embeddings(batch_rows):
                lo, hi = np.searchsorted(sorted_rows, [start, start + len(x)])
                if hi > lo:
                    out[order[lo:hi]] = x[sorted_rows[lo:hi] - start]
                start += len(x)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{self.path}: row {int(rows[i])} (item_id {show_id(self.ids[rows[i]])}): "
                f"field '{EMBEDDING_COLUMN}' contains NaN or Inf"
            )
        return out

    def _iter_parquet_embeddings(self, batch_rows: int) -> Iterator[np.ndarray]:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        start = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=batch_rows, columns=[EMBEDDING_COLUMN]):
            col = batch.column(0)
            if col.null_count:
                i = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
                raise DataError(f"{self.path}: row {start + i}: field '{EMBEDDING_COLUMN}' is null")
            if pa.types.is_fixed_size_list(col.type):
                widths = np.full(len(col), col.type.list_size)
            else:
                widths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            wrong = widths != self.dim
            if wrong.any():
                i = int(np.argmax(wrong))
                raise DataError(
                    f"{self.path}: row {start + i}: field '{EMBEDDING_COLUMN}' has {int(widths[i])} "
                    f"values, expected {self.dim} (the width of row 0)"
                )
            values = pc.list_flatten(col)
            if values.null_count:
                raise DataError(
                    f"{self.path}: rows {start}..{start + len(col) - 1}: field '{EMBEDDING_COLUMN}' "
                    "contains null values"
                )
            x = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(col), self.dim)
            yield x
            start += len(col)


def open_embeddings(path: str | os.PathLike, ids_path: str | os.PathLike | None = None) -> EmbeddingSource:
    """Open an embedding file for streaming; validates shape, ids and columns (not values: see iter_batches)."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: embeddings file not found")
    if path.endswith(".npy"):
        arr = load_npy(path, mmap_mode="r")
        if arr.ndim != 2 or arr.shape[1] < 1:
            raise DataError(f"{path}: embeddings must be a 2-D array [items, dim], got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise DataError(f"{path}: embeddings must be numeric, got dtype {arr.dtype}")
        if ids_path is None:
            stem = path[: -len(".npy")]
            for cand in (stem + ".ids.npy", stem + ".ids.txt"):
                if os.path.isfile(cand):
                    ids_path = cand
                    break
        if ids_path is not None:
            ids = _read_ids_file(str(ids_path))
            if len(ids) != arr.shape[0]:
                raise DataError(f"{ids_path}: {len(ids)} item ids but {path} has {arr.shape[0]} rows")
            _check_unique_ids(ids, str(ids_path))
        else:
            ids = np.arange(arr.shape[0], dtype=np.int64)
        return EmbeddingSource(path, int(arr.shape[0]), int(arr.shape[1]), ids, _array=arr)
    if path.endswith(".parquet") or path.endswith(".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        if ids_path is not None:
            raise DataError(f"{path}: --ids applies to .npy inputs; parquet files carry an '{ID_COLUMN}' column")
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: cannot read parquet ({e})") from e
        names = pf.schema_arrow.names
        for col in (ID_COLUMN, EMBEDDING_COLUMN):
            if col not in names:
                raise DataError(f"{path}: missing column '{col}' (columns: {', '.join(names)})")
        etype = pf.schema_arrow.field(EMBEDDING_COLUMN).type
        if not (pa.types.is_list(etype) or pa.types.is_large_list(etype) or pa.types.is_fixed_size_list(etype)) or not (
            pa.types.is_floating(etype.value_type) or pa.types.is_integer(etype.value_type)
        ):
            raise DataError(f"{path}: field '{EMBEDDING_COLUMN}' must be a list of numbers, got {etype}")
        id_col = pq.read_table(path, columns=[ID_COLUMN]).column(0)
        if id_col.null_count:
            i = int(np.argmax(id_col.is_null().to_numpy(zero_copy_only=False)))
            raise DataError(f"{path}: row {i}: field '{ID_COLUMN}' is null")
        ids = id_col.to_numpy()
        if ids.dtype.kind not in "iu":
            ids = ids.astype(object)
        else:
            ids = ids.astype(np.int64)
        if len(ids) == 0:
            raise DataError(f"{path}: no rows")
        _check_unique_ids(ids, path)
        first = next(pf.iter_batches(batch_size=1, columns=[EMBEDDING_COLUMN])).column(0)[0]
        if not first.is_valid:
            raise DataError(f"{path}: row 0: field '{EMBEDDING_COLUMN}' is null")
        dim = len(first.values)
        if dim < 1:
            raise DataError(f"{path}: row 0: field '{EMBEDDING_COLUMN}' is empty")
        return EmbeddingSource(path, len(ids), dim, ids)
    raise DataError(f"{path}: unsupported embeddings format (use .npy or .parquet)")
