"""Plain k-means: k-means++ seeding, Lloyd iterations, batched nearest-centroid assignment.

Seeding, the Lloyd loop (early stop, empty-cluster re-seeding) and the centroid update are megarec's own
NumPy code. Only the nearest-centroid search — the O(n·K·D) part — has two backends:

* ``numpy``: ||x||² − 2x·c + ||c||² through BLAS matrix products in float32, in row chunks sized so the
  [chunk, K] distance block stays around 64 MB;
* ``faiss``: `faiss.knn` (exhaustive L2, BLAS blocks with a fused arg-min), when faiss-cpu is installed.

Both compute the same float32 squared distances up to rounding (exact ties go to the lower index, as far as
the matrix product computes equal distances equally), so a seed gives the same run with either backend
except for rows whose two nearest centroids are within float32 rounding of each other. faiss is optional:
it is imported only when that backend is used.
"""

from __future__ import annotations

import numpy as np

from megarec.common.errors import ConfigError

BACKENDS = ("auto", "numpy", "faiss")
# `auto` uses faiss from this many multiply-adds (rows × K × D) per assignment pass: below it a whole
# 3-layer, 20-iteration run takes ~0.1 s either way and faiss' savings do not repay its ~40 ms import.
AUTO_FAISS_MIN_WORK = 1 << 24

_BLOCK_FLOATS = 1 << 24  # elements of one [rows, K] distance block (64 MB in float32)


def _chunk_rows(k: int) -> int:
    return max(256, _BLOCK_FLOATS // max(k, 1))


def sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x, dtype=np.float64).astype(np.float32)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def import_faiss():
    """The faiss module, or a ConfigError saying how to get it."""
    try:
        import faiss
    except ImportError as e:
        raise ConfigError(
            f"--backend faiss needs the faiss package, which cannot be imported ({e}); install "
            "faiss-cpu (pip install faiss-cpu) or use --backend numpy / auto"
        ) from e
    return faiss


def resolve_backend(backend: str, work: int | None = None) -> str:
    """'numpy' or 'faiss'. `auto` means faiss when it is importable and one assignment pass does at least
    AUTO_FAISS_MIN_WORK multiply-adds (`work` = rows × K × D; None = large), else numpy: faiss' search
    measured 1.1-2.5x faster than the NumPy path at every size tried (K = 16 … 4096, 2 cores; see
    docs/itemic.md). `faiss` fails with a ConfigError when faiss is missing."""
    if backend == "numpy":
        return "numpy"
    if backend == "faiss":
        import_faiss()
        return "faiss"
    if backend == "auto":
        big = work is None or work >= AUTO_FAISS_MIN_WORK
        return "faiss" if big and faiss_available() else "numpy"
    raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def assign(
    x: np.ndarray, centroids: np.ndarray, *, c_sq: np.ndarray | None = None, backend: str = "numpy"
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid for each row: (labels int64 [n], squared distances float32 [n])."""
    if backend == "faiss":
        return _assign_faiss(x, centroids)
    if backend != "numpy":
        raise ValueError(f"unresolved k-means backend {backend!r}")
    n, k = len(x), len(centroids)
    c_sq = sq_norms(centroids) if c_sq is None else c_sq
    labels = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float32)
    step = _chunk_rows(k)
    for s in range(0, n, step):
        xb = x[s : s + step]
        d = xb @ centroids.T
        d *= -2.0
        d += c_sq[None, :]
        lab = np.argmin(d, axis=1)
        labels[s : s + step] = lab
        best = d[np.arange(len(xb)), lab] + sq_norms(xb)
        dist[s : s + step] = np.maximum(best, 0.0)
    return labels, dist


def _assign_faiss(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    faiss = import_faiss()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    dist, labels = faiss.knn(x, np.ascontiguousarray(centroids, dtype=np.float32), 1)
    return labels[:, 0].astype(np.int64, copy=False), np.maximum(dist[:, 0], 0.0)


def subtract_assigned(r: np.ndarray, centroids: np.ndarray, labels: np.ndarray, chunk: int = 4096) -> None:
    """r -= centroids[labels], in place, in row chunks (small cache-friendly temporaries, not one [n, D])."""
    for s in range(0, len(r), chunk):
        r[s : s + chunk] -= centroids[labels[s : s + chunk]]


def sorted_candidates(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row, all centroid indices ordered nearest first, and the matching squared distances."""
    d = sq_norms(x)[:, None] - 2.0 * (x @ centroids.T) + sq_norms(centroids)[None, :]
    order = np.argsort(d, axis=1, kind="stable")
    return order, np.maximum(np.take_along_axis(d, order, axis=1), 0.0)


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator, n_trials: int = 1) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each centre is a row drawn with probability ∝ D².

    `n_trials` > 1 gives the greedy variant (best of several draws). It is not the default: on residual
    layers it prefers rows sitting at the origin (exact zero residuals), which starts one giant cluster."""
    n = len(x)
    x_sq = sq_norms(x)
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    first = int(rng.integers(n))
    centres[0] = x[first]
    closest = np.maximum(x_sq - 2.0 * (x @ x[first]) + x_sq[first], 0.0).astype(np.float32)
    for c in range(1, k):
        cum = np.cumsum(closest, dtype=np.float64)
        potential = cum[-1]
        if potential <= 0.0:  # fewer distinct points than centres: pad with random points
            cand = rng.integers(n, size=1)
        else:
            cand = np.minimum(np.searchsorted(cum, rng.random(n_trials) * potential, side="right"), n - 1)
        d = x @ x[cand].T
        d *= -2.0
        d += x_sq[:, None]
        d += x_sq[cand][None, :]
        np.maximum(d, 0.0, out=d)
        np.minimum(d, closest[:, None], out=d)
        best = int(np.argmin(d.sum(axis=0, dtype=np.float64)))
        centres[c] = x[cand[best]]
        closest = np.ascontiguousarray(d[:, best])
    return centres


def random_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct training rows chosen uniformly (faiss' default seeding)."""
    return x[np.sort(rng.choice(len(x), size=k, replace=False))].astype(np.float32, copy=True)


def _cluster_sums(
    x: np.ndarray, labels: np.ndarray, k: int, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster float64 sums [k, D] and counts [k] of the rows of `x` (all rows, or the sorted `rows`).

    Each sum adds its rows in row order, one contiguous reduction per cluster (np.add.reduceat over axis 0 is
    about 10x slower); rows are grouped by a stable radix sort of the labels (16-bit keys when k allows)."""
    lab = labels if rows is None else labels[rows]
    counts = np.bincount(lab, minlength=k)
    order = np.argsort(lab.astype(np.uint16) if k <= 1 << 16 else lab, kind="stable")
    if rows is not None:
        order = rows[order]
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    ends = np.cumsum(counts)
    for c in np.flatnonzero(counts).tolist():
        np.add.reduce(x[order[ends[c] - counts[c] : ends[c]]], axis=0, dtype=np.float64, out=sums[c])
    return sums, counts


def _move_centroids(
    x: np.ndarray, sums: np.ndarray, counts: np.ndarray, dist: np.ndarray, centroids: np.ndarray
) -> int:
    """Centroids := cluster means; empty clusters take the rows farthest from their centroid.

    Returns the number of empty clusters that were re-seeded."""
    nonempty = counts > 0
    centroids[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
    empty = np.flatnonzero(~nonempty)
    if len(empty):
        far = np.argsort(-dist, kind="stable")[: len(empty)]
        centroids[empty[: len(far)]] = x[far]
    return len(empty)


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    iters: int,
    rng: np.random.Generator,
    init: str = "kmeans++",
    init_samples: int | None = None,
    progress=None,
    backend: str = "numpy",
) -> tuple[np.ndarray, int]:
    """Cluster rows of `x` into k centroids. Returns (centroids float32 [k, D], Lloyd iterations run).

    `iters` Lloyd steps (assign, then move centroids) run unless assignments stop changing earlier.
    k-means++ seeds from a random subset of `init_samples` rows (default 16·k; its cost is O(k · rows · D)).
    `backend` ('numpy' or 'faiss', see `resolve_backend`) does the assignments; all else is the same."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if init == "kmeans++":
        seed_rows = x
        init_samples = max(k, init_samples if init_samples is not None else 16 * k)
        if init_samples < len(x):
            seed_rows = x[np.sort(rng.choice(len(x), size=init_samples, replace=False))]
        centroids = kmeans_plusplus(seed_rows, k, rng)
    elif init == "random":
        centroids = random_init(x, k, rng)
    else:
        raise ValueError(f"unknown k-means init {init!r}")
    prev = sums = counts = None
    done = 0
    for _ in range(iters):
        labels, dist = assign(x, centroids, backend=backend)
        if prev is None:
            sums, counts = _cluster_sums(x, labels, k)
        else:
            moved = np.flatnonzero(labels != prev)
            if len(moved) == 0:
                break
            if 2 * len(moved) >= len(x):
                sums, counts = _cluster_sums(x, labels, k)
            else:  # update the sums with the rows that changed cluster only (few, after the first steps)
                s_in, c_in = _cluster_sums(x, labels, k, moved)
                s_out, c_out = _cluster_sums(x, prev, k, moved)
                sums += s_in
                sums -= s_out
                counts += c_in - c_out
        _move_centroids(x, sums, counts, dist, centroids)
        prev = labels
        done += 1
        if progress is not None:
            progress.update(1)
    return centroids, done
