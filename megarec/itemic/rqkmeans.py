"""Residual k-means (RQ-KMeans) itemic tokenizer: train centroids layer by layer, encode items to code tuples.

Layer 1 clusters the (optionally L2-normalised) embeddings; layer l clusters what is left after subtracting
the chosen centroids of layers 1..l-1. Centroids are fitted on a random training subset
(`max_train_samples`); codes for all items come from a streamed, batched assignment pass with the final
centroids, which is exactly what `encode` does later, so training items re-encode to the same codes.

A tokenizer directory holds `meta.json`, `centroids.npy` (float32 [layers, K, D]), the codes table
(`codes.parquet`: item_id, c1..cL) and `stats.json`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from megarec.common.atomic import save_npy, write_json
from megarec.common.errors import ConfigError, DataError
from megarec.common.itemic import show_id
from megarec.itemic import kmeans as km
from megarec.itemic.io import EmbeddingSource, load_npy

META_FILE = "meta.json"
CENTROIDS_FILE = "centroids.npy"
CODES_FILE = "codes.parquet"
STATS_FILE = "stats.json"
FORMAT = "megarec-rqkmeans"
NORMALIZATIONS = ("none", "l2")
INITS = ("kmeans++", "random")


def default_batch_rows(dim: int) -> int:
    """Rows per streamed batch: about 128 MB of float32 embeddings."""
    return max(1024, (1 << 25) // max(dim, 1))


@dataclass
class RQMeta:
    layers: int  # k-means layers
    codebook_size: int
    dim: int
    seed: int
    iters: int
    normalization: str
    init: str = "kmeans++"
    backend: str = "numpy"  # nearest-centroid backend used in training (numpy | faiss); encode's auto reuses it
    dedup: str = "last-layer"
    extra_layer: bool = False  # dedup added a disambiguation code (not a k-means layer) after the last layer
    num_items: int = 0
    train_samples: int = 0
    iters_run: list[int] = field(default_factory=list)
    source: str = ""
    codes_file: str = CODES_FILE
    format: str = FORMAT
    version: int = 1

    @property
    def code_layers(self) -> int:
        """Codes per item (= itemic token layers): k-means layers plus the optional extra layer."""
        return self.layers + int(self.extra_layer)


@dataclass
class RQKMeans:
    meta: RQMeta
    centroids: np.ndarray  # float32 [layers, K, D]

    # ---- persistence ----------------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_npy(out / CENTROIDS_FILE, self.centroids.astype(np.float32))
        meta = asdict(self.meta)
        meta["code_layers"] = self.meta.code_layers
        write_json(out / META_FILE, meta)

    @classmethod
    def load(cls, tok_dir: str | os.PathLike) -> "RQKMeans":
        import json

        meta_path = Path(tok_dir) / META_FILE
        if not meta_path.is_file():
            raise DataError(f"{meta_path}: not found (not an itemic tokenizer directory)")
        try:
            raw = json.loads(meta_path.read_text("utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{meta_path}: invalid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise DataError(f"{meta_path}: expected a JSON object")
        if raw.get("format") != FORMAT:
            raise DataError(f"{meta_path}: field 'format' is {raw.get('format')!r}, expected {FORMAT!r}")
        raw.pop("code_layers", None)
        try:
            meta = RQMeta(**raw)
        except TypeError as e:
            raise DataError(f"{meta_path}: unexpected fields ({e})") from e
        cent_path = Path(tok_dir) / CENTROIDS_FILE
        if not cent_path.is_file():
            raise DataError(f"{cent_path}: not found (`megarec itemic train` writes it beside {META_FILE})")
        centroids = load_npy(str(cent_path))
        if centroids.shape != (meta.layers, meta.codebook_size, meta.dim):
            raise DataError(
                f"{cent_path}: shape {centroids.shape} does not match {META_FILE} "
                f"({meta.layers}, {meta.codebook_size}, {meta.dim})"
            )
        return cls(meta, centroids.astype(np.float32, copy=False))

    # ---- encoding ---------------------------------------------------------------------------------------
    def prepare(self, x: np.ndarray, first_row: int, ids: np.ndarray, path: str) -> np.ndarray:
        """Apply the tokenizer's normalisation to a raw embedding batch."""
        if x.shape[1] != self.meta.dim:
            raise DataError(
                f"{path}: field 'embedding' has width {x.shape[1]}, but the itemic tokenizer was "
                f"trained on width {self.meta.dim}"
            )
        return normalize(x, self.meta.normalization, first_row, ids, path)

    def encode_batch(
        self, x: np.ndarray, backend: str = "numpy", work: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Codes [n, layers] and the squared residual norm after each layer [n, layers] for normalised rows.

        `work`: optional float32 scratch of at least [n, D] for the residuals (reused across batches, it saves
        paging in a fresh batch-sized array each time)."""
        n = len(x)
        codes = np.empty((n, self.meta.layers), dtype=np.int64)
        err = np.empty((n, self.meta.layers), dtype=np.float32)
        if work is None or len(work) < n:
            r = np.array(x, dtype=np.float32, copy=True)
        else:
            r = work[:n]
            np.copyto(r, x, casting="same_kind")
        for layer, cent in enumerate(self.centroids):
            lab, dist = km.assign(r, cent, backend=backend)
            codes[:, layer] = lab
            km.subtract_assigned(r, cent, lab)
            err[:, layer] = dist
        return codes, err

    def residual_before_last(self, x: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Residual entering the last k-means layer for normalised rows `x` with the given codes."""
        r = np.array(x, dtype=np.float32, copy=True)
        for layer in range(self.meta.layers - 1):
            r -= self.centroids[layer][codes[:, layer]]
        return r

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """Sum of the chosen centroids (the k-means layers of `codes`)."""
        out = np.zeros((len(codes), self.meta.dim), dtype=np.float32)
        for layer in range(self.meta.layers):
            out += self.centroids[layer][codes[:, layer]]
        return out


def normalize(x: np.ndarray, how: str, first_row: int, ids: np.ndarray, path: str) -> np.ndarray:
    if how == "none":
        return x
    if how == "l2":
        norms = np.sqrt(km.sq_norms(x))
        zero = norms == 0
        if zero.any():
            i = int(np.argmax(zero))
            raise DataError(
                f"{path}: row {first_row + i} (item_id {show_id(ids[i])}): field 'embedding' is all zeros "
                "and cannot be L2-normalised"
            )
        return x / norms[:, None]
    raise ConfigError(f"unknown normalisation {how!r} (choose from {', '.join(NORMALIZATIONS)})")


def encode_backend(model: RQKMeans, backend: str = "auto") -> str:
    """Backend for encoding with a trained tokenizer: `auto` = the one it was trained with (so training items
    re-encode bit-for-bit), falling back to numpy when faiss is not importable."""
    if backend == "auto":
        return "faiss" if model.meta.backend == "faiss" and km.faiss_available() else "numpy"
    return km.resolve_backend(backend)


def validate_params(layers: int, codebook_size: int, iters: int, normalization: str, init: str) -> None:
    if layers < 1:
        raise ConfigError(f"--layers must be >= 1, got {layers}")
    if codebook_size < 2:
        raise ConfigError(f"--codebook-size must be >= 2, got {codebook_size}")
    if iters < 0:
        raise ConfigError(f"--iters must be >= 0, got {iters}")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"--normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    if init not in INITS:
        raise ConfigError(f"--init must be one of {', '.join(INITS)}, got {init!r}")


def train_centroids(
    source: EmbeddingSource,
    *,
    layers: int,
    codebook_size: int,
    iters: int,
    seed: int,
    max_train_samples: int | None,
    normalization: str = "none",
    init: str = "kmeans++",
    init_samples: int | None = None,
    backend: str = "auto",
    show_progress: bool = True,
) -> RQKMeans:
    """Fit residual k-means centroids on a random subset of at most `max_train_samples` items.

    `backend` (auto | numpy | faiss) does the nearest-centroid assignments; seeding, seed and iterations are
    the same for both. The resolved backend is recorded in the model's meta."""
    from tqdm import tqdm

    validate_params(layers, codebook_size, iters, normalization, init)
    n = source.num_items
    if n < codebook_size:
        raise DataError(
            f"{source.path}: {n} items, but a codebook of size {codebook_size} needs at least "
            f"{codebook_size} items to train"
        )
    if max_train_samples is not None and max_train_samples < codebook_size:
        raise ConfigError(f"--max-train-samples ({max_train_samples}) must be >= --codebook-size ({codebook_size})")
    rng = np.random.default_rng(seed)
    n_train = n if max_train_samples is None else min(n, max_train_samples)
    backend = km.resolve_backend(backend, work=n_train * codebook_size * source.dim)
    rows = np.arange(n) if n_train == n else np.sort(rng.choice(n, size=n_train, replace=False))
    x = source.take(rows)
    model = RQKMeans(
        RQMeta(
            layers=layers,
            codebook_size=codebook_size,
            dim=source.dim,
            seed=seed,
            iters=iters,
            normalization=normalization,
            init=init,
            backend=backend,
            num_items=n,
            train_samples=n_train,
            source=os.path.abspath(source.path),
        ),
        np.zeros((layers, codebook_size, source.dim), dtype=np.float32),
    )
    r = model.prepare(x, 0, source.ids[rows], source.path)  # `x` is a fresh array: residuals overwrite it
    r = np.ascontiguousarray(r, dtype=np.float32)
    with tqdm(total=layers * iters, desc="rq-kmeans", unit="iter", disable=not show_progress) as bar:
        for layer in range(layers):
            bar.set_postfix(layer=layer + 1)
            cent, done = km.kmeans(
                r,
                codebook_size,
                iters=iters,
                rng=rng,
                init=init,
                init_samples=init_samples,
                progress=bar,
                backend=backend,
            )
            bar.update(iters - done)
            model.centroids[layer] = cent
            model.meta.iters_run.append(done)
            lab, _ = km.assign(r, cent, backend=backend)
            km.subtract_assigned(r, cent, lab)
    return model


@dataclass
class EncodeResult:
    ids: np.ndarray  # [N]
    codes: np.ndarray  # int64 [N, layers] raw nearest-centroid codes
    last_dist: np.ndarray  # float32 [N] squared residual norm after the last layer (per-item error)
    layer_sse: np.ndarray  # float64 [layers] total squared residual after each layer
    total_ss: float  # total sum of squares around the mean (of normalised embeddings)


def encode_source(
    model: RQKMeans,
    source: EmbeddingSource,
    *,
    batch_rows: int | None = None,
    backend: str = "auto",
    show_progress: bool = True,
) -> EncodeResult:
    """Stream all items of `source` through the tokenizer (batched); also accumulates reconstruction error.

    `backend`: see `encode_backend` (auto = the backend the tokenizer was trained with)."""
    from tqdm import tqdm

    if source.dim != model.meta.dim:
        raise DataError(
            f"{source.path}: field 'embedding' has width {source.dim}, but the itemic tokenizer was "
            f"trained on width {model.meta.dim}"
        )
    backend = encode_backend(model, backend)
    batch_rows = batch_rows or default_batch_rows(source.dim)
    n = source.num_items
    codes = np.empty((n, model.meta.layers), dtype=np.int64)
    last = np.empty(n, dtype=np.float32)
    sse = np.zeros(model.meta.layers, dtype=np.float64)
    sum_x = np.zeros(source.dim, dtype=np.float64)
    sum_sq = 0.0
    work = np.empty((min(batch_rows, n), source.dim), dtype=np.float32)
    with tqdm(total=n, desc="encode", unit="item", disable=not show_progress) as bar:
        for start, ids, x in source.iter_batches(batch_rows):
            x = model.prepare(x, start, ids, source.path)
            c, err = model.encode_batch(x, backend, work)
            codes[start : start + len(x)] = c
            last[start : start + len(x)] = err[:, -1]
            sse += err.sum(axis=0, dtype=np.float64)
            sum_x += x.sum(axis=0, dtype=np.float64)
            sum_sq += float(km.sq_norms(x).sum(dtype=np.float64))
            bar.update(len(x))
    total_ss = sum_sq - float(sum_x @ sum_x) / max(n, 1)
    return EncodeResult(source.ids, codes, last, sse, total_ss)
