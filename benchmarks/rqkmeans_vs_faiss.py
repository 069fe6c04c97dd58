"""megarec RQ-KMeans vs the reference approach (plain residual k-means with `faiss.Kmeans` per layer).

Both run on the same seeded, clustered synthetic embeddings (default 200,000 × 256) with the same number of
layers, codebook size, Lloyd iterations and training rows:

  (a) reference: per layer `faiss.Kmeans(d, K, niter=iters, seed=seed)` on the residuals (faiss' own random
      initialisation and empty-cluster splitting), codes = nearest centroid (`IndexFlatL2.search`),
      no collision handling;
  (b) megarec: `train_centroids` (k-means++ seeding, Lloyd with early stop) with the chosen nearest-centroid
      backend(s), then `encode_source` + the default collision resolution (`--dedup last-layer`).

Train time covers fitting all layers (for the reference also assigning the training rows to get the next
layer's residuals; megarec does the same inside `train_centroids`). Encode time covers coding every item
(for megarec including collision resolution). Printed per method: train / encode seconds, relative
reconstruction error Σ‖x − x̂‖² / Σ‖x − mean‖², collision rate (items whose full tuple is shared),
per-layer codebook utilisation, and megarec / reference ratios.

    .venv/bin/python benchmarks/rqkmeans_vs_faiss.py [--n 200000 --dim 256 --layers 3 --codebook-size 256]
                                                     [--iters 20 --seed 0 --backends auto] [--repeats 1]

The default 3 × 256 takes about 2-4 minutes on 2 shared CPU cores (3 × 8192 at 200k rows would take hours:
k-means++ seeding and Lloyd steps grow linearly with the codebook size).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megarec.itemic import kmeans as km  # noqa: E402
from megarec.itemic import stats as st  # noqa: E402


def synthetic_embeddings(n: int, dim: int, seed: int, clusters: int, zipf: float = 0.5, subclusters: int = 8,
                         latent: int = 32) -> np.ndarray:
    """Clustered float32 embeddings with a category → sub-category → item hierarchy: `clusters` top centres
    (N(0, 1) per coordinate, Zipf-weighted so popular regions are dense), `subclusters` sub-centres around each
    (scale 0.5), items around their sub-centre along a shared `latent`-dimensional subspace (scale 0.3), plus
    isotropic noise (scale 0.05)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, clusters + 1) ** zipf
    top = rng.standard_normal((clusters, dim)).astype(np.float32)
    sub = top[:, None, :] + 0.5 * rng.standard_normal((clusters, subclusters, dim)).astype(np.float32)
    sub = sub.reshape(-1, dim)
    basis = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T.astype(np.float32)  # [latent, dim], orthonormal
    basis *= 0.3 * np.sqrt(dim / latent)
    labels = rng.choice(clusters, size=n, p=weights / weights.sum()) * subclusters + rng.integers(subclusters, size=n)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 65536):
        lab = labels[s:s + 65536]
        z = rng.standard_normal((len(lab), latent)).astype(np.float32)
        x[s:s + 65536] = sub[lab] + z @ basis + 0.05 * rng.standard_normal((len(lab), dim)).astype(np.float32)
    return x


def total_ss(x: np.ndarray) -> float:
    mean = x.mean(axis=0, dtype=np.float64)
    return float(km.sq_norms(x).sum(dtype=np.float64) - len(x) * mean @ mean)


def run_reference(x: np.ndarray, layers: int, k: int, iters: int, seed: int, n_train: int) -> dict:
    """Plain residual k-means with faiss.Kmeans per layer (faiss defaults except niter/seed/training rows)."""
    import faiss

    n, dim = x.shape
    rng = np.random.default_rng(seed)
    rows = np.arange(n) if n_train >= n else np.sort(rng.choice(n, size=n_train, replace=False))
    t0 = time.perf_counter()
    r = x[rows].copy()
    centroids = []
    for layer in range(layers):
        # max_points_per_centroid: train on all n_train rows (faiss would otherwise subsample to 256·K rows)
        kmeans = faiss.Kmeans(dim, k, niter=iters, seed=seed + layer, verbose=False,
                              max_points_per_centroid=-(-len(r) // k))
        kmeans.train(r)
        cent = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
        index = faiss.IndexFlatL2(dim)
        index.add(cent)
        _, lab = index.search(r, 1)
        r -= cent[lab[:, 0]]
        centroids.append(cent)
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    codes = np.empty((n, layers), dtype=np.int64)
    sse = 0.0
    for s in range(0, n, 131072):
        r = x[s:s + 131072].copy()
        for layer, cent in enumerate(centroids):
            index = faiss.IndexFlatL2(dim)
            index.add(cent)
            _, lab = index.search(r, 1)
            codes[s:s + len(r), layer] = lab[:, 0]
            r -= cent[lab[:, 0]]
        sse += float(km.sq_norms(r).sum(dtype=np.float64))
    encode_s = time.perf_counter() - t0
    return {"train_s": train_s, "encode_s": encode_s, "rel_err": sse / total_ss(x), "codes": codes,
            "raw_collision_rate": st.collisions(codes)["collision_rate"], "moved": 0}


def run_megarec(path: str, layers: int, k: int, iters: int, seed: int, n_train: int, backend: str,
                dedup: str) -> dict:
    from megarec.itemic.io import open_embeddings
    from megarec.itemic.pipeline import _apply_dedup
    from megarec.itemic.rqkmeans import encode_source, train_centroids

    source = open_embeddings(path)
    t0 = time.perf_counter()
    model = train_centroids(source, layers=layers, codebook_size=k, iters=iters, seed=seed,
                            max_train_samples=n_train, backend=backend, show_progress=False)
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    enc = encode_source(model, source, backend=model.meta.backend, show_progress=False)
    n = len(enc.codes)
    codes, moved, new_dist = _apply_dedup(model, dedup, source, enc.codes, enc.last_dist,
                                          np.zeros(n, dtype=bool), np.arange(n))
    encode_s = time.perf_counter() - t0
    sse = float(enc.layer_sse[-1] - enc.last_dist[moved].sum(dtype=np.float64) + new_dist.sum(dtype=np.float64))
    return {"train_s": train_s, "encode_s": encode_s, "rel_err": sse / enc.total_ss, "codes": codes,
            "raw_collision_rate": st.collisions(enc.codes)["collision_rate"], "moved": int(len(moved)),
            "backend": model.meta.backend, "iters_run": model.meta.iters_run}


def best_of(repeats: int, fn):
    """Run fn `repeats` times; keep the result with the smallest train + encode time."""
    runs = [fn() for _ in range(repeats)]
    return min(runs, key=lambda r: r["train_s"] + r["encode_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="Items (default 200000).")
    ap.add_argument("--dim", type=int, default=256, help="Embedding width (default 256).")
    ap.add_argument("--layers", type=int, default=3, help="Residual layers (default 3).")
    ap.add_argument("--codebook-size", type=int, default=256, help="Codes per layer (default 256).")
    ap.add_argument("--iters", type=int, default=20, help="Lloyd iterations per layer, both methods (default 20).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the data and of both methods (default 0).")
    ap.add_argument("--clusters", type=int, default=None, help="Top-level clusters in the data (default n / 200).")
    ap.add_argument("--train-samples", type=int, default=None,
                    help="Rows both methods fit centroids on (default all n).")
    ap.add_argument("--backends", default="auto",
                    help="Comma-separated megarec --backend values to run (auto, numpy, faiss; default auto).")
    ap.add_argument("--dedup", choices=["last-layer", "extra-layer", "none"], default="last-layer",
                    help="megarec collision resolution (default last-layer, as `itemic train`).")
    ap.add_argument("--repeats", type=int, default=1, help="Runs per method; the fastest is reported (default 1).")
    args = ap.parse_args()

    import faiss

    n_train = min(args.n, args.train_samples or args.n)
    clusters = args.clusters or max(2, args.n // 200)
    x = synthetic_embeddings(args.n, args.dim, args.seed, clusters)
    blas = "?"
    try:
        from threadpoolctl import threadpool_info

        blas = ",".join(f"{i['internal_api']}×{i['num_threads']}" for i in threadpool_info())
    except ImportError:
        pass
    print(f"data: {args.n} × {args.dim} float32, {clusters} Zipf-weighted clusters × 8 sub-clusters, seed {args.seed}; "
          f"{args.layers} layers × {args.codebook_size} codes, {args.iters} iters, {n_train} training rows, "
          f"megarec --dedup {args.dedup}")
    print(f"threads: faiss OpenMP {faiss.omp_get_max_threads()}, numpy {blas}; cpus {os.cpu_count()}; "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}; faiss {faiss.__version__}, "
          f"numpy {np.__version__}", flush=True)

    with tempfile.TemporaryDirectory(prefix="rqkmeans_bench_") as tmp:
        path = os.path.join(tmp, "emb.npy")
        np.save(path, x)
        results = {"reference (faiss.Kmeans)": best_of(args.repeats, lambda: run_reference(
            x, args.layers, args.codebook_size, args.iters, args.seed, n_train))}
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            res = best_of(args.repeats, lambda: run_megarec(path, args.layers, args.codebook_size, args.iters,
                                                            args.seed, n_train, backend, args.dedup))
            results[f"megarec --backend {backend} ({res['backend']})"] = res

    ref = results["reference (faiss.Kmeans)"]
    for r in results.values():
        r["collision_rate"] = st.collisions(r["codes"])["collision_rate"]
        r["util"] = [lay["utilisation"] for lay in st.layer_usage(r["codes"][:, :args.layers], args.codebook_size)]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.3f}" if b > 0 else ("1.000" if a == 0 else "inf")

    name_w = max(len(k) for k in results)
    print(f"\n{'method':<{name_w}}  {'train s':>8}  {'encode s':>8}  {'rel err':>7}  {'collide':>7}  "
          f"{'raw coll':>8}  {'moved':>6}  utilisation per layer")
    for name, r in results.items():
        util = " ".join(f"{u:.3f}" for u in r["util"])
        print(f"{name:<{name_w}}  {r['train_s']:8.1f}  {r['encode_s']:8.1f}  {r['rel_err']:7.4f}  "
              f"{r['collision_rate']:7.4f}  {r['raw_collision_rate']:8.4f}  {r['moved']:6d}  {util}")
    print(f"\n{'ratio megarec / reference':<{name_w}}  {'train':>8}  {'encode':>8}  {'rel err':>7}  {'collide':>7}")
    for name, r in results.items():
        if r is ref:
            continue
        print(f"{name:<{name_w}}  {ratio(r['train_s'], ref['train_s']):>8}  {ratio(r['encode_s'], ref['encode_s']):>8}"
              f"  {ratio(r['rel_err'], ref['rel_err']):>7}  {ratio(r['collision_rate'], ref['collision_rate']):>7}")
    for name, r in results.items():
        if "iters_run" in r:
            print(f"{name}: Lloyd iterations run per layer {r['iters_run']}")
    print(f"load average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
