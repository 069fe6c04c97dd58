"""Reading item embeddings (.npy memmap or parquet, streamed in batches) and reading/writing code tables.

Embedding inputs:
  * `.npy` float array [N, D], memory-mapped; item ids from `--ids` (.npy or .txt, one per line), else from a
    sibling `<stem>.ids.npy` / `<stem>.ids.txt`, else the row number.
  * `.parquet` with an `item_id` column and an `embedding` list column (fixed width), read batch by batch.
Code tables (`item_id, c1..cL`) are parquet or csv, chosen by the file extension.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from megarec.common.errors import DataError

ID_COLUMN = "item_id"
EMBEDDING_COLUMN = "embedding"


def show_id(value) -> str:
    """An item id as users wrote it (numpy scalars unwrapped), quoted when it is a string."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _read_ids_file(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        ids = np.load(path, allow_pickle=False)
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
        raise DataError(f"{where}: field '{ID_COLUMN}': duplicate item id {show_id(uniq[dup])} "
                        f"(first at row {int(first[dup])})")


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
                x = np.asarray(self._array[s:s + batch_rows], dtype=np.float32)
                check_finite(x, s, self.ids[s:s + batch_rows], self.path)
                yield s, self.ids[s:s + batch_rows], x
            return
        start = 0
        for x in self._iter_parquet_embeddings(batch_rows):
            ids = self.ids[start:start + len(x)]
            check_finite(x, start, ids, self.path)
            yield start, ids, x
            start += len(x)

    def take(self, rows: np.ndarray, batch_rows: int = 65536) -> np.ndarray:
        """Embeddings of the given row indices (any order), float32 [len(rows), D]."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        contiguous = len(rows) > 0 and int(sorted_rows[-1]) - int(sorted_rows[0]) + 1 == len(rows) \
            and bool(np.all(np.diff(sorted_rows) == 1))
        if self._array is not None and contiguous and np.array_equal(order, np.arange(len(rows))):
            first = int(sorted_rows[0])  # a run of rows in order (e.g. all rows): copy slices, no fancy indexing
            for s in range(0, len(rows), batch_rows):
                out[s:s + batch_rows] = self._array[first + s:first + min(s + batch_rows, len(rows))]
        elif self._array is not None:
            for s in range(0, len(rows), batch_rows):
                sel = sorted_rows[s:s + batch_rows]
                out[order[s:s + batch_rows]] = np.asarray(self._array[sel], dtype=np.float32)
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
            raise DataError(f"{self.path}: row {int(rows[i])} (item_id {show_id(self.ids[rows[i]])}): "
                            f"field '{EMBEDDING_COLUMN}' contains NaN or Inf")
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
                raise DataError(f"{self.path}: row {start + i}: field '{EMBEDDING_COLUMN}' has {int(widths[i])} "
                                f"values, expected {self.dim} (the width of row 0)")
            values = pc.list_flatten(col)
            if values.null_count:
                raise DataError(f"{self.path}: rows {start}..{start + len(col) - 1}: field '{EMBEDDING_COLUMN}' "
                                "contains null values")
            x = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(col), self.dim)
            yield x
            start += len(col)


def open_embeddings(path: str | os.PathLike, ids_path: str | os.PathLike | None = None) -> EmbeddingSource:
    """Open an embedding file for streaming; validates shape, ids and columns (not values: see iter_batches)."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: embeddings file not found")
    if path.endswith(".npy"):
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise DataError(f"{path}: not a numeric .npy array ({e})") from e
        if arr.ndim != 2 or arr.shape[1] < 1:
            raise DataError(f"{path}: embeddings must be a 2-D array [items, dim], got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise DataError(f"{path}: embeddings must be numeric, got dtype {arr.dtype}")
        if ids_path is None:
            stem = path[:-len(".npy")]
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
        if not (pa.types.is_list(etype) or pa.types.is_large_list(etype) or pa.types.is_fixed_size_list(etype)) \
                or not (pa.types.is_floating(etype.value_type) or pa.types.is_integer(etype.value_type)):
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


def code_columns(num_layers: int) -> list[str]:
    return [f"c{i + 1}" for i in range(num_layers)]


def write_codes_table(path: str | os.PathLike, ids: np.ndarray, codes: np.ndarray) -> None:
    """Write `item_id, c1..cL` as parquet (default) or csv (by extension), atomically."""
    import pyarrow as pa

    from megarec.common.atomic import atomic_path

    path = str(path)
    id_arr = pa.array(ids.tolist() if ids.dtype == object else ids)
    cols = {ID_COLUMN: id_arr}
    for j, name in enumerate(code_columns(codes.shape[1])):
        cols[name] = pa.array(np.ascontiguousarray(codes[:, j]).astype(np.int32))
    table = pa.table(cols)
    with atomic_path(path) as tmp:
        if path.endswith(".csv"):
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, tmp)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)


def read_codes_table(path: str | os.PathLike, num_layers: int, codebook_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids [N], codes int64 [N, L]) from a codes table; validates columns, ranges and unique ids."""
    import pyarrow as pa

    path = str(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: codes table not found")
    try:
        if path.endswith(".csv"):
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(path)
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: cannot read codes table ({e})") from e
    need = [ID_COLUMN, *code_columns(num_layers)]
    for col in need:
        if col not in table.column_names:
            raise DataError(f"{path}: missing column '{col}' (columns: {', '.join(table.column_names)})")
    ids = table.column(ID_COLUMN).to_numpy()
    ids = ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(object)
    _check_unique_ids(ids, path)
    codes = np.empty((len(ids), num_layers), dtype=np.int64)
    for j, name in enumerate(code_columns(num_layers)):
        col = table.column(name)
        if col.null_count or not pa.types.is_integer(col.type):
            raise DataError(f"{path}: field '{name}' must be non-null integers")
        codes[:, j] = col.to_numpy()
        bad = (codes[:, j] < 0) | (codes[:, j] >= codebook_size)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{path}: row {i}: field '{name}' = {codes[i, j]} outside [0, {codebook_size})")
    return ids, codes


def lookup_rows(table_ids: np.ndarray, query_ids: np.ndarray) -> np.ndarray:
    """Row index in `table_ids` of each query id, -1 when absent (ids of either kind: int or str)."""
    if len(table_ids) == 0:
        return np.full(len(query_ids), -1, dtype=np.int64)
    if (table_ids.dtype == object) != (query_ids.dtype == object):
        table_ids, query_ids = table_ids.astype(str).astype(object), query_ids.astype(str).astype(object)
    order = np.argsort(table_ids, kind="stable")
    sorted_ids = table_ids[order]
    pos = np.searchsorted(sorted_ids, query_ids)
    pos = np.clip(pos, 0, len(sorted_ids) - 1)
    found = sorted_ids[pos] == query_ids
    return np.where(found, order[pos], -1).astype(np.int64)
