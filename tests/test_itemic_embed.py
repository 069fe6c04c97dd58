"""`megarec itemic embed`: real offline MiniLM sentence embeddings of item text, ready for `itemic train`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megarec.common.errors import DataError
from megarec.itemic.embed import SentenceEncoder, embed_texts, ensure_minilm, item_texts_from_jsonl

from conftest import run_cli

ITEMS = [
    ("m1", "Toy Story (1995). Genres: Animation, Children's, Comedy."),
    ("m2", "Toy Story 2 (1999). Genres: Animation, Children's, Comedy."),
    ("m3", "Schindler's List (1993). Genres: Drama, War."),
    ("m4", "Saving Private Ryan (1998). Genres: Action, Drama, War."),
    ("m5", "A much longer item description that needs several more word pieces than the others to be encoded."),
]


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder(ensure_minilm(), threads=1)


def test_embeddings_are_normalised_semantic_and_batch_independent(encoder):
    texts = [t for _, t in ITEMS]
    one_by_one = embed_texts(encoder, texts, batch_size=1, progress=False)
    batched = embed_texts(encoder, texts, batch_size=64, progress=False)
    assert one_by_one.shape == (5, 384) and one_by_one.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    # padding is excluded from the mean, so batching changes nothing beyond fp32 summation order
    np.testing.assert_allclose(batched, one_by_one, atol=2e-5)
    sim = batched @ batched.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]  # the two Toy Story films are nearest
    assert sim[2, 3] > sim[2, 0] and sim[2, 3] > sim[2, 1]  # the two war dramas are nearest


def test_cli_writes_embeddings_that_itemic_train_reads(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"item_id": i, "caption": t}) + "\n" for i, t in ITEMS))
    out = tmp_path / "emb" / "items.npy"
    res = run_cli(["itemic", "embed", "--items", str(items), "--out", str(out), "--batch-size", "2"])
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "emb" / "items.ids.txt").read_text().split() == [i for i, _ in ITEMS]
    from megarec.itemic.io import open_embeddings

    src = open_embeddings(str(out), None)
    assert [str(x) for x in src.ids] == [i for i, _ in ITEMS]
    res = run_cli(
        [
            "itemic",
            "train",
            "--embeddings",
            str(out),
            "--out",
            str(tmp_path / "tok"),
            "--layers",
            "2",
            "--codebook-size",
            "4",
            "--seed",
            "0",
        ]
    )
    assert res.returncode == 0, res.stderr


def test_bad_items_file_names_row_and_field(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"item_id": "a", "caption": "x"}) + "\n" + json.dumps({"item_id": "b"}) + "\n")
    with pytest.raises(DataError, match=r"items.jsonl: row 2: field 'caption'"):
        item_texts_from_jsonl(str(items))
    res = run_cli(["itemic", "embed", "--items", str(items), "--out", str(tmp_path / "e.npy")])
    assert res.returncode == 2 and "row 2" in res.stderr
    assert not (tmp_path / "e.npy").exists()
