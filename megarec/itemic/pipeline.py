"""End-to-end itemic tokenizer steps behind `megarec itemic train|encode|stats`.

train:  fit centroids on a sample → encode every item (streamed) → resolve collisions → write the tokenizer
        directory (meta.json, centroids.npy, codes.parquet, stats.json).
encode: codes for (new) items with a trained tokenizer; items already in the tokenizer's codes table keep
        their codes, and new items are de-duplicated against every tuple already taken.
stats:  utilisation / collisions of a codes table, plus reconstruction error when embeddings are given.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from megarec.common.atomic import write_json
from megarec.common.errors import DataError
from megarec.common.itemic import lookup_rows, read_codes_table, show_id, write_codes_table
from megarec.common.outdir import check_out_dir, staged_dir
from megarec.itemic import dedup as dd
from megarec.itemic import stats as st
from megarec.itemic.io import EmbeddingSource
from megarec.itemic.rqkmeans import CODES_FILE, STATS_FILE, RQKMeans, encode_source, train_centroids


def _residual_fn(model: RQKMeans, source: EmbeddingSource, codes: np.ndarray, source_rows: np.ndarray):
    """rows (indices into `codes`) → residual entering the last layer, re-reading embeddings from `source`."""

    def fn(rows: np.ndarray) -> np.ndarray:
        src = source_rows[rows]
        x = model.prepare(source.take(src), 0, source.ids[src], source.path)
        return model.residual_before_last(x, codes[rows])

    return fn


def _apply_dedup(
    model: RQKMeans,
    method: str,
    source: EmbeddingSource,
    codes: np.ndarray,
    last_dist: np.ndarray,
    fixed: np.ndarray,
    source_rows: np.ndarray,
    fixed_extra: np.ndarray | None = None,
):
    """Returns (codes [N, code_layers], moved rows, new last-layer error of moved rows)."""
    none = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if method == "none":
        return codes, *none
    if method == "extra-layer":
        return dd.add_extra_layer(codes, last_dist, fixed, model.meta.codebook_size, fixed_extra), *none
    return dd.resolve_last_layer(
        codes, last_dist, fixed, model.centroids[-1], _residual_fn(model, source, codes, source_rows)
    )


def train_itemic_tokenizer(
    source: EmbeddingSource,
    out_dir: str | os.PathLike,
    *,
    layers: int = 3,
    codebook_size: int = 8192,
    iters: int = 20,
    seed: int = 0,
    max_train_samples: int | None = 500_000,
    normalization: str = "none",
    init: str = "kmeans++",
    init_samples: int | None = None,
    dedup: str = "last-layer",
    batch_rows: int | None = None,
    codes_out: str | os.PathLike | None = None,
    backend: str = "auto",
    show_progress: bool = True,
    force: bool = False,
    inputs: Iterable[tuple[str, str | None]] = (),
) -> dict:
    """Train and write a tokenizer directory; returns the stats dict (also written to stats.json).

    `backend` (auto | numpy | faiss) does the nearest-centroid assignments of training and encoding.
    `out_dir` must be missing or empty unless `force`; it is replaced only once every file is written, and
    must not be or contain any of `inputs` ((flag, path) pairs)."""
    dd.check_method(dedup)
    check_out_dir(out_dir, force=force, inputs=inputs)
    model = train_centroids(
        source,
        layers=layers,
        codebook_size=codebook_size,
        iters=iters,
        seed=seed,
        max_train_samples=max_train_samples,
        normalization=normalization,
        init=init,
        init_samples=init_samples,
        backend=backend,
        show_progress=show_progress,
    )
    enc = encode_source(model, source, batch_rows=batch_rows, backend=model.meta.backend, show_progress=show_progress)
    raw_stats = st.code_stats(enc.codes, codebook_size)
    n = len(enc.codes)
    codes, moved, new_dist = _apply_dedup(
        model, dedup, source, enc.codes, enc.last_dist, np.zeros(n, dtype=bool), np.arange(n)
    )
    model.meta.dedup = dedup
    model.meta.extra_layer = dedup == "extra-layer"
    sse_final = float(enc.layer_sse[-1] - enc.last_dist[moved].sum(dtype=np.float64) + new_dist.sum(dtype=np.float64))
    stats = {
        "num_items": n,
        "codebook_size": codebook_size,
        "dedup": dedup,
        "backend": model.meta.backend,
        "raw": {**raw_stats, "relative_mse": st.relative_mse(enc.layer_sse, enc.total_ss)},
        "final": {
            **st.code_stats(codes, codebook_size),
            "moved_items": int(len(moved)),
            "relative_mse": sse_final / enc.total_ss if enc.total_ss > 0 else float("nan"),
        },
    }
    with staged_dir(out_dir, force=force, inputs=inputs) as stage:
        codes_path = _codes_path(out_dir, codes_out, stage)
        model.meta.codes_file = os.path.relpath(codes_out, out_dir) if codes_out else CODES_FILE
        model.save(stage)
        write_codes_table(codes_path, enc.ids, codes)
        write_json(Path(stage) / STATS_FILE, stats)
    return stats


def _codes_path(out_dir, codes_out, stage: str) -> Path:
    """Where to write the codes table while `stage` stands in for `out_dir`: inside the stage when the
    table belongs in the tokenizer directory, else at --codes-out itself (written atomically)."""
    if not codes_out:
        return Path(stage) / CODES_FILE
    rel = os.path.relpath(os.path.abspath(codes_out), os.path.abspath(out_dir))
    inside = rel != os.curdir and not rel.startswith(os.pardir + os.sep) and rel != os.pardir
    return Path(stage) / rel if inside else Path(codes_out)


def encode_items(
    tok_dir: str | os.PathLike,
    source: EmbeddingSource,
    *,
    dedup: str | None = None,
    reuse_known: bool = True,
    batch_rows: int | None = None,
    backend: str = "auto",
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, codes) for the items of `source`. Known items (in the tokenizer's codes table) keep their codes
    when `reuse_known`; the rest are encoded and de-duplicated (default: the tokenizer's own method).
    `backend` auto = the nearest-centroid backend the tokenizer was trained with (numpy if faiss is missing)."""
    model = RQKMeans.load(tok_dir)
    method = dedup or model.meta.dedup
    dd.check_method(method)
    if method == "extra-layer" and not model.meta.extra_layer:
        raise DataError(f"{tok_dir}: this tokenizer has no extra layer; --dedup extra-layer needs one trained with it")
    enc = encode_source(model, source, batch_rows=batch_rows, backend=backend, show_progress=show_progress)
    n, L = len(enc.codes), model.meta.layers
    table_ids = np.zeros(0, dtype=np.int64)
    table_codes = np.zeros((0, model.meta.code_layers), dtype=np.int64)
    table_path = Path(tok_dir) / model.meta.codes_file
    if method != "none" or reuse_known:
        if table_path.is_file():
            table = read_codes_table(table_path, model.meta.code_layers, model.meta.codebook_size)
            table_ids, table_codes = table.ids, table.codes
    known = lookup_rows(table_ids, enc.ids) if reuse_known else np.full(n, -1, dtype=np.int64)
    new_rows = np.flatnonzero(known < 0)
    # the table (fixed) first, then new items; dedup only moves new items
    if method == "none":
        codes = enc.codes if not model.meta.extra_layer else np.concatenate([enc.codes, np.zeros((n, 1), np.int64)], 1)
        if reuse_known and (known >= 0).any():
            codes = codes.copy()
            codes[known >= 0] = table_codes[known[known >= 0]]
        return enc.ids, codes
    all_codes = np.concatenate([table_codes[:, :L], enc.codes[new_rows]])
    all_dist = np.concatenate([np.zeros(len(table_codes), np.float32), enc.last_dist[new_rows]])
    fixed = np.zeros(len(all_codes), dtype=bool)
    fixed[: len(table_codes)] = True
    source_rows = np.concatenate([np.full(len(table_codes), -1, np.int64), new_rows])
    fixed_extra = None
    if method == "extra-layer":
        fixed_extra = np.concatenate([table_codes[:, L], np.zeros(len(new_rows), np.int64)])
    resolved, _, _ = _apply_dedup(model, method, source, all_codes, all_dist, fixed, source_rows, fixed_extra)
    if model.meta.extra_layer and resolved.shape[1] == L:
        resolved = np.concatenate([resolved, np.zeros((len(resolved), 1), np.int64)], 1)
    codes = np.empty((n, model.meta.code_layers), dtype=np.int64)
    codes[new_rows] = resolved[len(table_codes) :]
    if (known >= 0).any():
        codes[known >= 0] = table_codes[known[known >= 0]]
    return enc.ids, codes


def compute_stats(
    tok_dir: str | os.PathLike,
    *,
    codes_path: str | os.PathLike | None = None,
    source: EmbeddingSource | None = None,
    batch_rows: int | None = None,
    show_progress: bool = True,
) -> dict:
    """Stats of a codes table (default: the tokenizer's own); with `source`, reconstruction error too."""
    from tqdm import tqdm

    from megarec.itemic import kmeans as km
    from megarec.itemic.rqkmeans import default_batch_rows

    model = RQKMeans.load(tok_dir)
    codes_path = Path(codes_path) if codes_path else Path(tok_dir) / model.meta.codes_file
    table = read_codes_table(codes_path, model.meta.code_layers, model.meta.codebook_size)
    ids, codes = table.ids, table.codes
    out = {
        "codes_file": str(codes_path),
        "codebook_size": model.meta.codebook_size,
        **st.code_stats(codes, model.meta.codebook_size),
    }
    if source is None:
        return out
    if source.dim != model.meta.dim:
        raise DataError(
            f"{source.path}: field 'embedding' has width {source.dim}, but the itemic tokenizer was "
            f"trained on width {model.meta.dim}"
        )
    batch_rows = batch_rows or default_batch_rows(source.dim)
    sse = np.zeros(model.meta.layers, dtype=np.float64)
    sum_x = np.zeros(source.dim, dtype=np.float64)
    sum_sq, n = 0.0, 0
    with tqdm(total=source.num_items, desc="stats", unit="item", disable=not show_progress) as bar:
        for start, bids, x in source.iter_batches(batch_rows):
            x = model.prepare(x, start, bids, source.path)
            rows = lookup_rows(ids, bids)
            if (rows < 0).any():
                i = int(np.argmax(rows < 0))
                raise DataError(f"{source.path}: row {start + i}: item_id {show_id(bids[i])} is not in {codes_path}")
            c = codes[rows]
            r = x.copy()
            for layer in range(model.meta.layers):
                r -= model.centroids[layer][c[:, layer]]
                sse[layer] += float(km.sq_norms(r).sum(dtype=np.float64))
            sum_x += x.sum(axis=0, dtype=np.float64)
            sum_sq += float(km.sq_norms(x).sum(dtype=np.float64))
            n += len(x)
            bar.update(len(x))
    total_ss = sum_sq - float(sum_x @ sum_x) / max(n, 1)
    out["relative_mse"] = st.relative_mse(sse, total_ss)
    out["embeddings"] = source.path
    return out
