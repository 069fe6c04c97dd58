"""RQ-KMeans itemic tokenizer: cluster recovery, seeds/iters, streaming, collisions, encode, stats, bad input."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megarec.common.errors import ConfigError, DataError
from megarec.common.itemic import read_codes_table
from megarec.itemic import kmeans as km
from megarec.itemic.io import open_embeddings
from megarec.itemic.pipeline import compute_stats, encode_items, train_itemic_tokenizer
from megarec.itemic.rqkmeans import RQKMeans

from conftest import run_cli

QUIET = dict(show_progress=False)


def clustered(n_clusters=8, per=30, dim=16, seed=0, spread=20.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)) * spread
    labels = np.repeat(np.arange(n_clusters), per)
    return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def save_npy(tmp_path, x, name="emb.npy", ids=None):
    path = tmp_path / name
    np.save(path, x)
    if ids is not None:
        np.save(tmp_path / name.replace(".npy", ".ids.npy"), ids)
    return str(path)


def save_parquet(path, ids, x):
    pq.write_table(pa.table({"item_id": ids, "embedding": [list(map(float, r)) for r in x]}), path)
    return str(path)


def codes_of(tok_dir, layers):
    meta = RQKMeans.load(tok_dir).meta
    table = read_codes_table(os.path.join(tok_dir, meta.codes_file), layers, meta.codebook_size)
    return table.ids, table.codes


def test_layer1_recovers_clusters(tmp_path):
    x, labels = clustered()
    src = open_embeddings(save_npy(tmp_path, x))
    stats = train_itemic_tokenizer(
        src, tmp_path / "tok", layers=2, codebook_size=8, iters=10, seed=0, dedup="none", **QUIET
    )
    _, codes = codes_of(tmp_path / "tok", 2)
    c1 = codes[:, 0]
    # exact up to a permutation: each true cluster maps to one code, and the 8 codes are distinct
    mapping = {int(lab): set(c1[labels == lab].tolist()) for lab in range(8)}
    assert all(len(v) == 1 for v in mapping.values())
    assert len({next(iter(v)) for v in mapping.values()}) == 8
    assert stats["raw"]["layers"][0]["utilisation"] == 1.0
    assert stats["raw"]["relative_mse"][0] < 0.01  # clusters explain > 99% of the variance
    meta = json.load(open(tmp_path / "tok" / "meta.json"))
    assert (meta["layers"], meta["codebook_size"], meta["dim"], meta["seed"], meta["iters"]) == (2, 8, 16, 0, 10)
    assert meta["normalization"] == "none" and meta["code_layers"] == 2
    assert np.load(tmp_path / "tok" / "centroids.npy").shape == (2, 8, 16)


def test_kmeans_plusplus_separated_points_one_per_cluster():
    x, labels = clustered(n_clusters=8, per=5, spread=100.0)
    cent = km.kmeans_plusplus(x, 8, np.random.default_rng(3))
    # D² seeding on far-apart clusters picks one seed per cluster
    nearest_cluster = km.assign(cent, np.stack([x[labels == c].mean(0) for c in range(8)]))[0]
    assert sorted(nearest_cluster.tolist()) == list(range(8))


def check_seed_and_iters(tmp_path, **train_kwargs) -> None:
    """Tokenizers a, b (same seed), c (another seed) and d (no Lloyd steps) on the same random rows:
    the seed reproduces and matters, `iters` bounds the Lloyd steps and they lower the error."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    src = open_embeddings(save_npy(tmp_path, x))
    common = dict(layers=2, codebook_size=16, dedup="none", **train_kwargs, **QUIET)
    s_a = train_itemic_tokenizer(src, tmp_path / "a", iters=5, seed=7, **common)
    train_itemic_tokenizer(src, tmp_path / "b", iters=5, seed=7, **common)
    train_itemic_tokenizer(src, tmp_path / "c", iters=5, seed=8, **common)
    s_0 = train_itemic_tokenizer(src, tmp_path / "d", iters=0, seed=7, **common)
    cents = {k: np.load(tmp_path / k / "centroids.npy") for k in "abcd"}
    assert np.array_equal(cents["a"], cents["b"])
    assert not np.allclose(cents["a"], cents["c"])
    assert not np.allclose(cents["a"], cents["d"])
    assert all(1 <= n <= 5 for n in json.load(open(tmp_path / "a" / "meta.json"))["iters_run"])
    assert json.load(open(tmp_path / "d" / "meta.json"))["iters_run"] == [0, 0]
    # Lloyd steps only lower the layer-1 error of the seeding they start from (same seed → same seeds)
    assert s_a["raw"]["relative_mse"][0] < s_0["raw"]["relative_mse"][0]


def test_seed_and_iters_take_effect(tmp_path):
    check_seed_and_iters(tmp_path)
    assert np.array_equal(codes_of(tmp_path / "a", 2)[1], codes_of(tmp_path / "b", 2)[1])


def test_streaming_batches_and_sampled_training(tmp_path):
    x, _ = clustered(per=25, dim=12, seed=2)
    src = open_embeddings(save_npy(tmp_path, x))
    train_itemic_tokenizer(
        src,
        tmp_path / "t",
        layers=3,
        codebook_size=8,
        iters=4,
        seed=0,
        dedup="none",
        max_train_samples=64,
        batch_rows=7,
        **QUIET,
    )
    meta = json.load(open(tmp_path / "t" / "meta.json"))
    assert meta["train_samples"] == 64 and meta["num_items"] == 200
    ids, codes = codes_of(tmp_path / "t", 3)
    assert np.array_equal(ids, np.arange(200)) and codes.shape == (200, 3)
    # batch size does not change codes
    _, again = encode_items(tmp_path / "t", src, dedup="none", reuse_known=False, batch_rows=1000, **QUIET)
    assert np.array_equal(again, codes)


def test_encode_training_items_equals_training_codes(tmp_path):
    x, _ = clustered(per=6, dim=10, seed=4)  # ≤ 8 items per layer-1 code: collisions are resolvable
    ids = np.array([f"item-{i}" for i in range(len(x))], dtype=object)
    path = save_parquet(tmp_path / "items.parquet", ids, x)
    src = open_embeddings(path)
    train_itemic_tokenizer(src, tmp_path / "raw", layers=2, codebook_size=8, iters=5, seed=0, dedup="none", **QUIET)
    t_ids, t_codes = codes_of(tmp_path / "raw", 2)
    assert list(t_ids) == list(ids)
    e_ids, e_codes = encode_items(tmp_path / "raw", src, reuse_known=False, **QUIET)
    assert list(e_ids) == list(ids) and np.array_equal(e_codes, t_codes)
    # with de-duplication: known items keep their table codes
    train_itemic_tokenizer(src, tmp_path / "dd", layers=2, codebook_size=8, iters=5, seed=0, **QUIET)
    _, dd_codes = codes_of(tmp_path / "dd", 2)
    assert np.array_equal(encode_items(tmp_path / "dd", src, **QUIET)[1], dd_codes)


def duplicated_points(tmp_path, copies=3, dim=6, seed=5):
    """8 far-apart centres, each with two points centre ± o (same o everywhere), each point `copies` times.

    Layer 1 (K=8) finds the centres (2·copies items each); layer 2 sees only the residuals ±o, so raw code
    tuples collide exactly within each group of copies."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim)) * 20
    o = rng.normal(size=dim)
    base = np.concatenate([centres + o, centres - o]).astype(np.float32)
    x = np.repeat(base, copies, axis=0)
    return open_embeddings(save_npy(tmp_path, x, "dup.npy")), x


def test_last_layer_dedup_makes_tuples_unique(tmp_path):
    src, x = duplicated_points(tmp_path)
    raw = train_itemic_tokenizer(
        src, tmp_path / "none", layers=2, codebook_size=8, iters=5, seed=0, dedup="none", **QUIET
    )
    assert raw["raw"]["collisions"]["collision_rate"] == 1.0  # every item has 2 identical twins
    stats = train_itemic_tokenizer(src, tmp_path / "ll", layers=2, codebook_size=8, iters=5, seed=0, **QUIET)
    assert stats["final"]["collisions"]["collision_rate"] == 0.0
    assert stats["final"]["moved_items"] == 32  # 2 of each triple move
    _, raw_codes = codes_of(tmp_path / "none", 2)
    _, codes = codes_of(tmp_path / "ll", 2)
    assert len({tuple(c) for c in codes.tolist()}) == len(codes)
    assert np.array_equal(codes[:, 0], raw_codes[:, 0])  # prefixes never change
    # a moved item sits on the nearest last-layer code that no other item of its prefix holds
    model = RQKMeans.load(tmp_path / "ll")
    moved = np.flatnonzero((codes != raw_codes).any(axis=1))
    r = model.residual_before_last(x[moved], codes[moved])
    order, _ = km.sorted_candidates(r, model.centroids[-1])
    for row, cands in zip(moved, order):
        taken = {int(c[1]) for i, c in enumerate(codes) if i != row and c[0] == codes[row, 0]}
        nearer = cands[: list(cands).index(codes[row, 1])]
        assert set(nearer.tolist()) <= taken
    # reconstruction error accounts for the moves
    assert stats["final"]["relative_mse"] > stats["raw"]["relative_mse"][-1]
    again = compute_stats(tmp_path / "ll", source=src, **QUIET)
    assert again["relative_mse"][-1] == pytest.approx(stats["final"]["relative_mse"], rel=1e-4)
    assert again["collisions"]["collision_rate"] == 0.0


def test_extra_layer_dedup(tmp_path):
    src, _ = duplicated_points(tmp_path)
    stats = train_itemic_tokenizer(
        src, tmp_path / "ex", layers=2, codebook_size=8, iters=5, seed=0, dedup="extra-layer", **QUIET
    )
    meta = json.load(open(tmp_path / "ex" / "meta.json"))
    assert meta["extra_layer"] is True and meta["code_layers"] == 3
    _, codes = codes_of(tmp_path / "ex", 3)
    assert len({tuple(c) for c in codes.tolist()}) == len(codes)
    assert sorted(codes[:, 2].tolist()) == sorted([0, 1, 2] * 16)  # each triple numbered 0, 1, 2
    assert stats["final"]["moved_items"] == 0
    assert stats["final"]["relative_mse"] == pytest.approx(stats["raw"]["relative_mse"][-1])


def test_encode_new_items_avoids_taken_tuples(tmp_path):
    src, x = duplicated_points(tmp_path, copies=1)
    train_itemic_tokenizer(src, tmp_path / "tok", layers=2, codebook_size=8, iters=5, seed=0, **QUIET)
    t_ids, t_codes = codes_of(tmp_path / "tok", 2)
    # new items: exact copies of 5 known embeddings under new ids, plus 2 known items
    new_x = np.concatenate([x[:5], x[10:12]])
    new_ids = np.array([1000, 1001, 1002, 1003, 1004, 10, 11])
    nsrc = open_embeddings(save_npy(tmp_path, new_x, "new.npy", ids=new_ids))
    ids, codes = encode_items(tmp_path / "tok", nsrc, **QUIET)
    assert list(ids) == list(new_ids)
    assert np.array_equal(codes[5:], t_codes[10:12])
    all_tuples = [tuple(c) for c in t_codes.tolist()] + [tuple(c) for c in codes[:5].tolist()]
    assert len(set(all_tuples)) == len(all_tuples)
    raw_ids, raw = encode_items(tmp_path / "tok", nsrc, dedup="none", reuse_known=False, **QUIET)
    assert np.array_equal(raw[:5, 0], codes[:5, 0])  # same prefix, only the last code moved


def test_prefix_overflow_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.repeat(rng.normal(size=(1, 4)), 12, axis=0), rng.normal(size=(20, 4)) * 5])
    src = open_embeddings(save_npy(tmp_path, x.astype(np.float32)))
    with pytest.raises(DataError, match="need more than 8 last-layer codes; use --dedup extra-layer"):
        train_itemic_tokenizer(src, tmp_path / "t", layers=2, codebook_size=8, iters=3, seed=0, **QUIET)


def test_l2_normalisation(tmp_path):
    x, labels = clustered(per=10, dim=8)
    src = open_embeddings(save_npy(tmp_path, x * 100))
    train_itemic_tokenizer(
        src, tmp_path / "n", layers=1, codebook_size=8, iters=5, seed=0, dedup="none", normalization="l2", **QUIET
    )
    cent = np.load(tmp_path / "n" / "centroids.npy")[0]
    assert np.all(np.linalg.norm(cent, axis=1) <= 1.0 + 1e-5)
    x[3] = 0
    zsrc = open_embeddings(save_npy(tmp_path, x, "zero.npy"))
    with pytest.raises(DataError, match=r"zero.npy: row 3 \(item_id 3\): field 'embedding' is all zeros"):
        encode_items(tmp_path / "n", zsrc, **QUIET)


def test_bad_inputs(tmp_path):
    x, _ = clustered(per=4, dim=8)
    # missing column
    pq.write_table(pa.table({"item_id": [1, 2], "emb": [[1.0], [2.0]]}), tmp_path / "nocol.parquet")
    with pytest.raises(DataError, match=r"nocol.parquet: missing column 'embedding' \(columns: item_id, emb\)"):
        open_embeddings(tmp_path / "nocol.parquet")
    # NaN, named by row and item id
    bad = x.copy()
    bad[5, 2] = np.nan
    src = open_embeddings(save_parquet(tmp_path / "nan.parquet", [f"i{i}" for i in range(len(x))], bad))
    with pytest.raises(DataError, match=r"nan.parquet: row 5 \(item_id 'i5'\): field 'embedding' contains NaN"):
        train_itemic_tokenizer(src, tmp_path / "t", layers=1, codebook_size=4, iters=2, **QUIET)
    bad = x.copy()
    bad[7, 0] = np.inf
    src = open_embeddings(save_npy(tmp_path, bad, "inf.npy"))
    with pytest.raises(DataError, match=r"inf.npy: row 7 \(item_id 7\): field 'embedding' contains NaN or Inf"):
        train_itemic_tokenizer(src, tmp_path / "t", layers=1, codebook_size=4, iters=2, **QUIET)
    # ragged embedding list
    pq.write_table(pa.table({"item_id": [1, 2], "embedding": [[1.0, 2.0], [3.0]]}), tmp_path / "ragged.parquet")
    src = open_embeddings(tmp_path / "ragged.parquet")
    with pytest.raises(DataError, match=r"ragged.parquet: row 1: field 'embedding' has 1 values, expected 2"):
        list(src.iter_batches(10))
    # too few items for the codebook
    src = open_embeddings(save_npy(tmp_path, x[:5], "few.npy"))
    with pytest.raises(DataError, match=r"few.npy: 5 items, but a codebook of size 8 needs at least 8"):
        train_itemic_tokenizer(src, tmp_path / "t", layers=1, codebook_size=8, iters=2, **QUIET)
    # width mismatch against a trained tokenizer
    good = open_embeddings(save_npy(tmp_path, x, "good.npy"))
    train_itemic_tokenizer(good, tmp_path / "tok", layers=1, codebook_size=4, iters=2, dedup="none", **QUIET)
    wide = open_embeddings(save_npy(tmp_path, np.ones((3, 9), np.float32), "wide.npy"))
    with pytest.raises(
        DataError,
        match=r"wide.npy: field 'embedding' has width 9, but the itemic tokenizer was "
        r"trained on width 8",
    ):
        encode_items(tmp_path / "tok", wide, **QUIET)
    # ids: wrong length, duplicates
    np.save(tmp_path / "short_ids.npy", np.arange(3))
    with pytest.raises(DataError, match="short_ids.npy: 3 item ids but .*good.npy has 32 rows"):
        open_embeddings(tmp_path / "good.npy", tmp_path / "short_ids.npy")
    (tmp_path / "dup_ids.txt").write_text("\n".join(["a"] * 2 + [f"b{i}" for i in range(30)]) + "\n")
    with pytest.raises(DataError, match=r"dup_ids.txt: field 'item_id': duplicate item id 'a'"):
        open_embeddings(tmp_path / "good.npy", tmp_path / "dup_ids.txt")
    with pytest.raises(DataError, match="unsupported embeddings format"):
        (tmp_path / "x.csv").write_text("1,2\n")
        open_embeddings(tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="--max-train-samples"):
        train_itemic_tokenizer(good, tmp_path / "t", layers=1, codebook_size=8, max_train_samples=4, **QUIET)


def test_cli_train_encode_stats(tmp_path):
    x, labels = clustered(per=6, dim=8)
    ids = [f"v{i}" for i in range(len(x))]
    emb = save_parquet(tmp_path / "items.parquet", ids, x)
    tok = tmp_path / "tok"
    res = run_cli(
        [
            "itemic",
            "train",
            "--embeddings",
            emb,
            "--out",
            str(tok),
            "--layers",
            "2",
            "--codebook-size",
            "8",
            "--iters",
            "5",
            "--seed",
            "3",
            "--codes-out",
            str(tmp_path / "codes.csv"),
        ]
    )
    assert res.returncode == 0, res.stderr
    assert "collision rate" in res.stdout
    assert sorted(os.listdir(tok)) == ["centroids.npy", "meta.json", "stats.json"]
    assert open(tmp_path / "codes.csv").readline().strip() == "item_id,c1,c2"
    res = run_cli(
        ["itemic", "encode", "--tokenizer", str(tok), "--embeddings", emb, "--out", str(tmp_path / "e.parquet")]
    )
    assert res.returncode == 0, res.stderr
    e = pq.read_table(tmp_path / "e.parquet").to_pydict()
    table = read_codes_table(tmp_path / "codes.csv", 2, 8)
    t_codes = table.codes
    assert e["item_id"] == ids and np.array_equal(np.stack([e["c1"], e["c2"]], 1), t_codes)
    res = run_cli(["itemic", "stats", "--tokenizer", str(tok), "--embeddings", emb, "--out", str(tmp_path / "s.json")])
    assert res.returncode == 0, res.stderr
    stats = json.load(open(tmp_path / "s.json"))
    assert stats["collisions"]["collision_rate"] == 0.0 and len(stats["relative_mse"]) == 2
    assert stats["layers"][0]["used_codes"] == 8
    res = run_cli(
        [
            "itemic",
            "encode",
            "--tokenizer",
            str(tok),
            "--embeddings",
            str(tmp_path / "missing.npy"),
            "--out",
            str(tmp_path / "o.parquet"),
        ]
    )
    assert res.returncode == 2
    want = f"megarec itemic: error: {tmp_path / 'missing.npy'}: embeddings file not found"
    assert res.stderr.strip().splitlines() == [want]


# ---- nearest-centroid backends (numpy / faiss), faster update and grouping paths ---------------------------
HAS_FAISS = km.faiss_available()
needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="faiss is not importable")
BACKENDS = ["numpy", pytest.param("faiss", marks=needs_faiss)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_recover_clusters(tmp_path, backend):
    x, labels = clustered(n_clusters=8, per=40, dim=16, seed=6)
    src = open_embeddings(save_npy(tmp_path, x))
    stats = train_itemic_tokenizer(
        src, tmp_path / "tok", layers=2, codebook_size=8, iters=10, seed=0, dedup="none", backend=backend, **QUIET
    )
    _, codes = codes_of(tmp_path / "tok", 2)
    mapping = {lab: set(codes[labels == lab, 0].tolist()) for lab in range(8)}
    assert all(len(v) == 1 for v in mapping.values())  # exact recovery up to a permutation
    assert len({next(iter(v)) for v in mapping.values()}) == 8
    assert stats["raw"]["relative_mse"][0] < 0.01 and stats["backend"] == backend
    meta = json.load(open(tmp_path / "tok" / "meta.json"))
    assert meta["backend"] == backend
    assert meta["iters_run"][0] < 10  # converged: early stop works with either backend
    # encode (auto = the training backend) reproduces the training codes
    assert np.array_equal(encode_items(tmp_path / "tok", src, dedup="none", reuse_known=False, **QUIET)[1], codes)


@needs_faiss
def test_faiss_backend_seed_iters_and_agreement(tmp_path):
    check_seed_and_iters(tmp_path, backend="faiss")
    # same seed, same seeding and Lloyd steps: the numpy backend gives the same tokenizer on clustered data
    y, _ = clustered(n_clusters=8, per=40, dim=16, seed=3)
    ysrc = open_embeddings(save_npy(tmp_path, y, "y.npy"))
    for b in ("numpy", "faiss"):
        train_itemic_tokenizer(
            ysrc, tmp_path / b, layers=3, codebook_size=8, iters=8, seed=2, dedup="none", backend=b, **QUIET
        )
    assert np.array_equal(codes_of(tmp_path / "numpy", 3)[1], codes_of(tmp_path / "faiss", 3)[1])
    np.testing.assert_allclose(
        np.load(tmp_path / "numpy" / "centroids.npy"), np.load(tmp_path / "faiss" / "centroids.npy"), atol=1e-4
    )


@needs_faiss
def test_assign_backends_agree_including_ties():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    cent = rng.normal(size=(64, 32)).astype(np.float32)
    cent[10] = cent[3]  # exact duplicate centroid: either index is a right answer
    x[:5] = cent[3]
    l_np, d_np = km.assign(x, cent, backend="numpy")
    l_fs, d_fs = km.assign(x, cent, backend="faiss")
    exact = ((x[:, None, :].astype(np.float64) - cent[None].astype(np.float64)) ** 2).sum(-1)
    best = exact.min(1)
    for lab in (l_np, l_fs):  # each is a nearest centroid up to float32 rounding
        assert np.all(exact[np.arange(len(x)), lab] <= best + 1e-4 * (1 + best))
    differ = l_np != l_fs
    assert set(np.flatnonzero(differ).tolist()) <= set(np.flatnonzero(np.isin(l_np, [3, 10])).tolist())
    assert np.isin(l_fs[:5], [3, 10]).all() and d_fs[:5].max() < 1e-3
    assert l_fs.dtype == np.int64 and d_fs.dtype == np.float32 and (d_fs >= 0).all()
    np.testing.assert_allclose(d_np, d_fs, rtol=1e-4, atol=1e-3)
    empty = km.assign(x[:0], cent, backend="faiss")
    assert empty[0].shape == (0,) and empty[1].shape == (0,)


def test_backend_resolution_and_missing_faiss(tmp_path, monkeypatch):
    if HAS_FAISS:
        assert km.resolve_backend("auto", work=km.AUTO_FAISS_MIN_WORK) == "faiss"
        assert km.resolve_backend("auto", work=km.AUTO_FAISS_MIN_WORK - 1) == "numpy"  # too small to pay off
    assert km.resolve_backend("numpy") == "numpy"
    with pytest.raises(ConfigError, match="--backend must be one of auto, numpy, faiss"):
        km.resolve_backend("gpu")
    x, _ = clustered(per=5, dim=8)
    src = open_embeddings(save_npy(tmp_path, x))
    train_itemic_tokenizer(
        src, tmp_path / "tok", layers=1, codebook_size=8, iters=2, dedup="none", backend="numpy", **QUIET
    )
    meta_path = tmp_path / "tok" / "meta.json"
    meta = json.load(open(meta_path))
    meta["backend"] = "faiss"  # as if trained with faiss on another machine
    meta_path.write_text(json.dumps(meta))
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    assert not km.faiss_available() and km.resolve_backend("auto") == "numpy"
    with pytest.raises(ConfigError, match=r"--backend faiss needs the faiss package.*pip install faiss-cpu"):
        km.resolve_backend("faiss")
    with pytest.raises(ConfigError, match="--backend faiss needs the faiss package"):
        train_itemic_tokenizer(src, tmp_path / "t2", layers=1, codebook_size=8, iters=2, backend="faiss", **QUIET)
    # encode's auto falls back to numpy; an explicit faiss request fails clearly
    assert encode_items(tmp_path / "tok", src, dedup="none", reuse_known=False, **QUIET)[1].shape == (40, 1)
    with pytest.raises(ConfigError, match="--backend faiss needs the faiss package"):
        encode_items(tmp_path / "tok", src, backend="faiss", **QUIET)


def test_cli_backend_flag_and_missing_faiss_error(tmp_path):
    x, _ = clustered(per=6, dim=8)
    emb = save_npy(tmp_path, x)
    res = run_cli(
        [
            "itemic",
            "train",
            "--embeddings",
            emb,
            "--out",
            str(tmp_path / "tok"),
            "--layers",
            "2",
            "--codebook-size",
            "8",
            "--iters",
            "3",
            "--backend",
            "numpy",
        ]
    )
    assert res.returncode == 0, res.stderr
    assert "(numpy backend)" in res.stdout
    assert json.load(open(tmp_path / "tok" / "meta.json"))["backend"] == "numpy"
    fake = tmp_path / "nofaiss"
    fake.mkdir()
    (fake / "faiss.py").write_text("raise ImportError('No module named faiss (test stub)')\n")
    res = run_cli(
        [
            "itemic",
            "train",
            "--embeddings",
            emb,
            "--out",
            str(tmp_path / "t2"),
            "--codebook-size",
            "8",
            "--backend",
            "faiss",
        ],
        env={"PYTHONPATH": str(fake)},
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "megarec itemic: error: --backend faiss needs the faiss package, which cannot be imported (No module named "
        "faiss (test stub)); install faiss-cpu (pip install faiss-cpu) or use --backend numpy / auto"
    ]


def test_kmeans_incremental_update_matches_plain_lloyd():
    """The Lloyd loop updates cluster sums with the rows that changed cluster only; check it against a
    from-scratch mean computation driven by the same assignments."""
    x, _ = clustered(n_clusters=12, per=50, dim=6, seed=9, spread=3.0)  # overlapping: many rows move
    k, iters = 12, 6
    cent, done = km.kmeans(x, k, iters=iters, rng=np.random.default_rng(4))
    # replay: the same seeding (16·k rows sampled, then k-means++ with the same generator), then plain Lloyd
    rng = np.random.default_rng(4)
    ref = km.kmeans_plusplus(x[np.sort(rng.choice(len(x), size=16 * k, replace=False))], k, rng)
    prev, moved = None, []
    for _ in range(done):
        lab, _ = km.assign(x, ref)
        if prev is not None:
            moved.append(int((lab != prev).sum()))
        prev = lab
        for c in range(k):
            assert (lab == c).any()  # no empty clusters here: the replay needs no re-seeding
            ref[c] = x[lab == c].astype(np.float64).mean(0)
    assert done >= 3 and any(0 < m < len(x) // 2 for m in moved)  # the incremental path ran
    np.testing.assert_allclose(cent, ref, rtol=1e-5, atol=1e-5)


def test_tuple_groups_and_contiguous_take(tmp_path):
    from megarec.itemic.stats import tuple_groups

    rng = np.random.default_rng(0)
    wide = rng.integers(0, 2**22, size=(40, 3))  # spans multiply past 2^62: the np.unique(axis=0) path
    for codes in (
        rng.integers(0, 4, size=(500, 3)),
        np.concatenate([wide, wide[::2]]),
        np.concatenate([rng.integers(0, 3, size=(30, 2)), np.full((30, 1), 2**62)], 1),
    ):
        _, inv, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
        g, c = tuple_groups(codes)
        assert np.array_equal(g, inv.reshape(-1)) and np.array_equal(c, counts)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    src = open_embeddings(save_npy(tmp_path, x))
    for rows in (np.arange(50), np.arange(10, 30), np.arange(30)[::-1], np.array([3, 4, 4, 6]), np.array([], int)):
        assert np.array_equal(src.take(rows, batch_rows=7), x[rows])
