"""megarec RQ-KMeans vs the reference approach (plain residual k-means with `faiss.Kmeans` per layer).

Both run on the same seeded, clustered synthetic embeddings (default 200,000 × 256, see
`synthetic_embeddings`) with the same layers, codebook size, Lloyd iterations and training rows:

  (a) reference: per layer `faiss.Kmeans(d, K, niter=iters, seed=seed + layer)` on the residuals — faiss'
      own random initialisation and empty-cluster splitting; `max_points_per_centroid` raised so it trains
      on all training rows like megarec (faiss would otherwise subsample 256·K rows) — codes = nearest
      centroid (`IndexFlatL2.search`), no collision handling;
  (b) megarec: `train_centroids` (k-means++ seeding, Lloyd with early stop) with each requested
      `--backend`, then `encode_source` + the default collision resolution (`--dedup last-layer`).

Train time covers fitting all layers, including the assignment of the training rows that gives the next
layer's residuals (both methods). Encode time covers coding every item (for megarec: reading the .npy the
way `itemic train` does, validation, error statistics, and collision resolution, whose share is printed as
`(dedup)`). Printed per method: train / encode / total seconds,
relative reconstruction error Σ‖x − x̂‖² / Σ‖x − mean‖² after collision resolution (`rel err`) and
before (`raw err`), collision rate (items whose full tuple is shared with another item) after and before
resolution, items moved by it, per-layer codebook utilisation, and megarec / reference ratios.

    .venv/bin/python benchmarks/rqkmeans_vs_faiss.py [--n 200000 --dim 256 --layers 3 --codebook-size 256]
                                                     [--iters 20 --seed 0 --backends auto] [--repeats 1]

The default 3 × 256 takes 15-20 s per method on 2 CPU cores (3 × 1024: about a minute per method). Lloyd
steps and k-means++ seeding grow linearly with the codebook size, so 3 × 8192 at 200k rows takes tens of
minutes per method.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megarec.itemic import kmeans as km  # noqa: E402
from megarec.itemic import stats as st  # noqa: E402


def synthetic_embeddings(
    n: int,
    dim: int,
    seed: int,
    clusters: int,
    zipf: float = 0.5,
    latent: int = 16,
    scale: tuple[float, float] = (0.5, 1.0),
    noise: float = 0.05,
) -> np.ndarray:
    """Clustered float32 embeddings of low intrinsic dimension, like real item embeddings: a mixture of
    `clusters` Gaussians in a `latent`-dimensional space (centres N(0, 1), per-cluster scale U(`scale`),
    Zipf(`zipf`) cluster weights so popular regions are dense), mapped into `dim` dimensions by a random
    orthonormal map (scaled so unit latent variance gives unit variance per embedding coordinate), plus
    isotropic noise (`noise` per coordinate)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, clusters + 1) ** zipf
    centres = rng.standard_normal((clusters, latent)).astype(np.float32)
    spread = rng.uniform(*scale, size=clusters).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T.astype(np.float32)  # [latent, dim], orthonormal
    basis *= np.sqrt(dim / latent)
    labels = rng.choice(clusters, size=n, p=weights / weights.sum())
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 65536):
        lab = labels[s : s + 65536]
        z = centres[lab] + spread[lab, None] * rng.standard_normal((len(lab), latent)).astype(np.float32)
        x[s : s + 65536] = z @ basis + noise * rng.standard_normal((len(lab), dim)).astype(np.float32)
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
        kmeans = faiss.Kmeans(
            dim, k, niter=iters, seed=seed + layer, verbose=False, max_points_per_centroid=-(-len(r) // k)
        )
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
        r = x[s : s + 131072].copy()
        for layer, cent in enumerate(centroids):
            index = faiss.IndexFlatL2(dim)
            index.add(cent)
            _, lab = index.search(r, 1)
            codes[s : s + len(r), layer] = lab[:, 0]
            r -= cent[lab[:, 0]]
        sse += float(km.sq_norms(r).sum(dtype=np.float64))
    encode_s = time.perf_counter() - t0
    err = sse / total_ss(x)
    dedup_s = 0.0
    return {
        "train_s": train_s,
        "encode_s": encode_s,
        "dedup_s": dedup_s,
        "rel_err": err,
        "raw_rel_err": err,
        "codes": codes,
        "raw_collision_rate": st.collisions(codes)["collision_rate"],
        "moved": 0,
    }


def run_megarec(path: str, layers: int, k: int, iters: int, seed: int, n_train: int, backend: str, dedup: str) -> dict:
    from megarec.common.errors import DataError
    from megarec.itemic.io import open_embeddings
    from megarec.itemic.pipeline import _apply_dedup
    from megarec.itemic.rqkmeans import encode_source, train_centroids

    source = open_embeddings(path)
    t0 = time.perf_counter()
    model = train_centroids(
        source,
        layers=layers,
        codebook_size=k,
        iters=iters,
        seed=seed,
        max_train_samples=n_train,
        backend=backend,
        show_progress=False,
    )
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    enc = encode_source(model, source, backend=model.meta.backend, show_progress=False)
    t1 = time.perf_counter()
    n = len(enc.codes)
    # a tiny codebook can overflow a method (more than K items share a prefix / a tuple): fall back as
    # `itemic train` suggests, and say so in the table
    for method in dict.fromkeys([dedup, "extra-layer", "none"]):
        try:
            codes, moved, new_dist = _apply_dedup(
                model, method, source, enc.codes, enc.last_dist, np.zeros(n, dtype=bool), np.arange(n)
            )
            break
        except DataError as e:
            print(f"megarec --backend {backend}: --dedup {method} failed: {e}", flush=True)
    dedup = method
    encode_s, dedup_s = time.perf_counter() - t0, time.perf_counter() - t1
    sse = float(enc.layer_sse[-1] - enc.last_dist[moved].sum(dtype=np.float64) + new_dist.sum(dtype=np.float64))
    return {
        "train_s": train_s,
        "encode_s": encode_s,
        "dedup_s": dedup_s,
        "rel_err": sse / enc.total_ss,
        "raw_rel_err": float(enc.layer_sse[-1] / enc.total_ss),
        "codes": codes,
        "raw_collision_rate": st.collisions(enc.codes)["collision_rate"],
        "moved": int(len(moved)),
        "backend": model.meta.backend,
        "iters_run": model.meta.iters_run,
        "dedup": dedup,
    }


def assign_sweep(n: int, dim: int, seed: int, sizes: list[int], repeats: int = 4) -> None:
    """Time one nearest-centroid pass (`km.assign`) with each backend: the measurement behind `--backend auto`."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    print(f"\nnearest-centroid pass over {n} × {dim} rows, best of {repeats} (ms):")
    print(f"{'K':>6}  {'rows·K·D':>9}  {'numpy':>8}  {'faiss':>8}  {'numpy/faiss':>11}")
    for k in sizes:
        cent = x[rng.choice(n, size=k, replace=False)].copy()
        times = {}
        for backend in ("numpy", "faiss"):
            runs = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                km.assign(x, cent, backend=backend)
                runs.append(time.perf_counter() - t0)
            times[backend] = min(runs)
        print(
            f"{k:>6}  {n * k * dim:9.1e}  {1e3 * times['numpy']:8.1f}  {1e3 * times['faiss']:8.1f}  "
            f"{times['numpy'] / times['faiss']:11.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="Items (default 200000).")
    ap.add_argument("--dim", type=int, default=256, help="Embedding width (default 256).")
    ap.add_argument("--layers", type=int, default=3, help="Residual layers (default 3).")
    ap.add_argument("--codebook-size", type=int, default=256, help="Codes per layer (default 256).")
    ap.add_argument("--iters", type=int, default=20, help="Lloyd iterations per layer, both methods (default 20).")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the data and of both methods (default 0).")
    ap.add_argument("--clusters", type=int, default=None, help="Gaussian clusters in the data (default n / 200).")
    ap.add_argument(
        "--train-samples", type=int, default=None, help="Rows both methods fit centroids on (default all n)."
    )
    ap.add_argument(
        "--backends",
        default="auto",
        help="Comma-separated megarec --backend values to run (auto, numpy, faiss; default auto).",
    )
    ap.add_argument(
        "--dedup",
        choices=["last-layer", "extra-layer", "none"],
        default="last-layer",
        help="megarec collision resolution (default last-layer, as `itemic train`).",
    )
    ap.add_argument(
        "--assign-sweep",
        default=None,
        metavar="K,K,...",
        help="Instead of the comparison, time one nearest-centroid pass per backend for these codebook "
        "sizes on --n × --dim random rows (e.g. 16,64,256,1024,4096).",
    )
    ap.add_argument(
        "--repeats", type=int, default=1, help="Runs per method, interleaved; the fastest is reported (default 1)."
    )
    args = ap.parse_args()

    import faiss

    if args.assign_sweep:
        print(
            f"threads: faiss OpenMP {faiss.omp_get_max_threads()}; cpus {os.cpu_count()}; load average "
            f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}"
        )
        assign_sweep(args.n, args.dim, args.seed, [int(k) for k in args.assign_sweep.split(",")], max(args.repeats, 4))
        return
    n_train = min(args.n, args.train_samples or args.n)
    clusters = args.clusters or max(2, args.n // 200)
    x = synthetic_embeddings(args.n, args.dim, args.seed, clusters)
    blas = "?"
    try:
        from threadpoolctl import threadpool_info

        blas = ",".join(f"{i['internal_api']}×{i['num_threads']}" for i in threadpool_info())
    except ImportError:
        pass
    print(
        f"data: {args.n} × {args.dim} float32, {clusters} Zipf-weighted clusters in a 16-d latent space, "
        f"seed {args.seed}; "
        f"{args.layers} layers × {args.codebook_size} codes, {args.iters} iters, {n_train} training rows, "
        f"megarec --dedup {args.dedup}"
    )
    print(
        f"threads: faiss OpenMP {faiss.omp_get_max_threads()}, numpy {blas}; cpus {os.cpu_count()}; "
        f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}; faiss {faiss.__version__}, "
        f"numpy {np.__version__}",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="rqkmeans_bench_") as tmp:
        path = os.path.join(tmp, "emb.npy")
        np.save(path, x)
        methods = {
            "reference": lambda: run_reference(x, args.layers, args.codebook_size, args.iters, args.seed, n_train)
        }
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            methods[backend] = functools.partial(
                run_megarec, path, args.layers, args.codebook_size, args.iters, args.seed, n_train, backend, args.dedup
            )
        # repeats interleave the methods (slow drifts in machine load hit all alike); the fastest run is kept
        best: dict[str, dict] = {}
        for _ in range(max(args.repeats, 1)):
            for key, fn in methods.items():
                res = fn()
                if key not in best or res["train_s"] + res["encode_s"] < best[key]["train_s"] + best[key]["encode_s"]:
                    best[key] = res
        results = {"reference (faiss.Kmeans)": best.pop("reference")}
        for backend, res in best.items():
            extra = "" if res["dedup"] == args.dedup else f", {res['dedup']}"
            results[f"megarec --backend {backend} ({res['backend']}{extra})"] = res

    ref = results["reference (faiss.Kmeans)"]
    for r in results.values():
        r["collision_rate"] = st.collisions(r["codes"])["collision_rate"]
        r["util"] = [lay["utilisation"] for lay in st.layer_usage(r["codes"][:, : args.layers], args.codebook_size)]

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.3f}" if b > 0 else ("1.000" if a == 0 else "inf")

    name_w = max(len(k) for k in results)
    print(
        f"\n{'method':<{name_w}}  {'train s':>7}  {'encode s':>8}  {'(dedup)':>7}  {'total s':>7}  {'rel err':>7}  "
        f"{'raw err':>7}  {'collide':>7}  {'raw coll':>8}  {'moved':>6}  utilisation per layer"
    )
    for name, r in results.items():
        util = " ".join(f"{u:.3f}" for u in r["util"])
        print(
            f"{name:<{name_w}}  {r['train_s']:7.1f}  {r['encode_s']:8.2f}  {r['dedup_s']:7.2f}  "
            f"{r['train_s'] + r['encode_s']:7.1f}  "
            f"{r['rel_err']:7.4f}  {r['raw_rel_err']:7.4f}  {r['collision_rate']:7.4f}  "
            f"{r['raw_collision_rate']:8.4f}  {r['moved']:6d}  {util}"
        )
    print(
        f"\n{'ratio megarec / reference':<{name_w}}  {'train':>7}  {'encode':>8}  {'total':>7}  {'rel err':>7}  "
        f"{'collide':>7}"
    )
    for name, r in results.items():
        if r is ref:
            continue
        print(
            f"{name:<{name_w}}  {ratio(r['train_s'], ref['train_s']):>7}  {ratio(r['encode_s'], ref['encode_s']):>8}"
            f"  {ratio(r['train_s'] + r['encode_s'], ref['train_s'] + ref['encode_s']):>7}"
            f"  {ratio(r['rel_err'], ref['rel_err']):>7}  {ratio(r['collision_rate'], ref['collision_rate']):>7}"
        )
    for name, r in results.items():
        if "iters_run" in r:
            print(f"{name}: Lloyd iterations run per layer {r['iters_run']}")
    print(f"load average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
