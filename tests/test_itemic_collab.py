"""Collaborative item embeddings (training split only), their fusion with text, and code-prefix purity."""

from __future__ import annotations

import numpy as np
import pytest

from megarec.common.errors import ConfigError
from megarec.itemic.collab import cooccurrence_embeddings, cooccurrence_matrix, fuse, prefix_purity


def test_cooccurrence_counts_are_windowed_and_distance_weighted():
    m = cooccurrence_matrix([[0, 1, 2], [2, 3]], 4, window=2)
    want = np.zeros((4, 4))
    for a, b, w in ((0, 1, 1.0), (1, 2, 1.0), (0, 2, 0.5), (2, 3, 1.0)):
        want[a, b] += w
        want[b, a] += w
    assert np.array_equal(m, want)
    assert np.array_equal(cooccurrence_matrix([[0, 1, 2]], 3, window=1)[0], [0.0, 1.0, 0.0])
    with pytest.raises(ConfigError):
        cooccurrence_matrix([[0, 1]], 2, window=0)


def test_items_watched_together_get_close_embeddings_and_unseen_items_zero():
    rng = np.random.default_rng(0)
    # two groups of items that are only ever watched within their group; item 8 is never watched
    seqs = [list(rng.permutation(g)) for _ in range(50) for g in ([0, 1, 2, 3], [4, 5, 6, 7])]
    e = cooccurrence_embeddings(seqs, 9, dim=4, window=3)
    assert e.shape == (9, 4) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e[:8], axis=1), 1.0, atol=1e-5) and not e[8].any()
    sim = e[:8] @ e[:8].T
    within = np.mean([sim[i, j] for i in range(8) for j in range(8) if i != j and i // 4 == j // 4])
    across = np.mean([sim[i, j] for i in range(8) for j in range(8) if i // 4 != j // 4])
    assert within > 0.5 > across


def test_fuse_shares_and_purity():
    text = np.array([[3.0, 4.0], [1.0, 0.0]])
    collab = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    f = fuse(text, collab, 0.25)
    assert f.shape == (2, 5)
    assert np.allclose(f[0], [np.sqrt(0.75) * 0.6, np.sqrt(0.75) * 0.8, 0.0, np.sqrt(0.25), 0.0])
    assert np.allclose(f[1], [np.sqrt(0.75), 0.0, 0.0, 0.0, 0.0])  # unseen item: text only
    with pytest.raises(ConfigError):
        fuse(text, collab, 1.5)
    codes = {"a": (0, 0), "b": (0, 1), "c": (1, 0), "d": (1, 1)}
    p = prefix_purity(codes, [["a", "b", "c"], ["c", "d"]])
    # pairs a-b (same first code), b-c (different), c-d (same);
    # popularity a1 b1 c2 d1 -> P(c1 equal) = (2/5)^2 + (3/5)^2
    assert p["pairs"] == 3 and p["prefix1_cooccur"] == pytest.approx(2 / 3)
    assert p["prefix1_random"] == pytest.approx(0.16 + 0.36) and p["prefix2_cooccur"] == 0.0


def test_collab_cli_learns_only_from_the_leave_one_out_training_part(tmp_path):
    """`itemic collab` output == fuse(text, embeddings of the training prefixes): the benchmark's validation and
    test items of each user (the last two) never shape the item codes."""
    from megarec.itemic.embed import write_embeddings
    from megarec.rawdata.loo import largest_domain, training_sequences
    from megarec.rawdata.sources import load_source

    from conftest import run_cli

    log = load_source("synthetic", on_error="drop").log
    ids = sorted(log.items)
    text = np.random.default_rng(0).standard_normal((len(ids), 8)).astype(np.float32)
    write_embeddings(str(tmp_path / "text.npy"), ids, text)
    out = tmp_path / "fused.npy"
    r = run_cli(
        ["itemic", "collab", "--source", "synthetic", "--embeddings", str(tmp_path / "text.npy"), "--out", str(out)]
        + ["--weight", "0.3", "--dim", "4", "--window", "3"]
    )
    assert r.returncode == 0, r.stderr
    train = training_sequences(log, largest_domain(log))
    assert train and all(len(s) >= 1 for s in train)
    row = {it: k for k, it in enumerate(ids)}
    expected = fuse(text, cooccurrence_embeddings([[row[i] for i in s] for s in train], len(ids), dim=4, window=3), 0.3)
    np.testing.assert_array_equal(np.load(out), expected.astype(np.float32))
    assert (tmp_path / "fused.ids.txt").read_text().split("\n")[:-1] == ids
