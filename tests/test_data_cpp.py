"""The C++ helpers (megarec._cpp) on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from megarec import _cpp


def test_best_fit_pack_hand_case():
    order, offsets = _cpp.best_fit_pack(np.array([5, 3, 4, 2, 1, 6]), 8)
    packs = [order[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    # decreasing: 6→new, 5→new, 4→new, 3→best fit is the pack with 3 left (5), 2→pack with 2 left (6), 1→pack of 4
    assert packs == [[3, 5], [0, 1], [2, 4]]


def test_best_fit_pack_properties():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=500)
    order, offsets = _cpp.best_fit_pack(lengths, 128)
    assert sorted(order.tolist()) == list(range(500))  # every sample exactly once
    sums = np.add.reduceat(lengths[order], offsets[:-1])
    assert sums.max() <= 128
    assert len(sums) <= int(np.ceil(lengths.sum() / 128)) + 30  # close to the lower bound
    for a, b in zip(offsets[:-1], offsets[1:]):
        assert list(order[a:b]) == sorted(order[a:b])  # ascending inside a pack
    again = _cpp.best_fit_pack(lengths, 128)
    assert np.array_equal(again[0], order) and np.array_equal(again[1], offsets)


def test_best_fit_pack_rejects_overlong():
    with pytest.raises(ValueError, match="length 9 > capacity 8"):
        _cpp.best_fit_pack(np.array([3, 9]), 8)


def test_assistant_loss_mask_hand_case():
    # header = [1, 2, 3], end = 7; doc 0 has two assistant spans, doc 1 an unterminated one
    ids = np.array([5, 1, 2, 3, 9, 9, 7, 0, 1, 2, 3, 7, 8, 1, 2, 3, 4], np.int32)
    mask, spans, open_ = _cpp.assistant_loss_mask(ids, np.array([0, 13, 17]), [1, 2, 3], 7)
    assert mask.tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    assert spans.tolist() == [2, 1] and open_.tolist() == [0, 1]


def test_item_token_ids():
    ids = _cpp.item_token_ids(np.array([[1, 2, 3], [0, 0, 15]]), 1000, 16, 2000, 2001)
    assert ids.tolist() == [2000, 1001, 1018, 1035, 2001, 2000, 1000, 1016, 1047, 2001]
    with pytest.raises(ValueError, match="item 1 layer 2: code 16 outside"):
        _cpp.item_token_ids(np.array([[1, 2, 3], [0, 0, 16]]), 1000, 16, 2000, 2001)


def test_build_index_matches_megatron_writer(tmp_path):
    from megatron.core.datasets.indexed_dataset import _IndexWriter

    lengths = np.array([3, 1, 4, 1, 5], np.int32)
    docs = np.array([0, 2, 5], np.int64)
    for dtype in (np.int32, np.uint16, np.uint8):
        ref = tmp_path / f"ref_{np.dtype(dtype).name}.idx"
        with _IndexWriter(str(ref), dtype) as w:
            w.write(lengths.tolist(), None, docs.tolist())
        code = {np.int32: 4, np.uint16: 8, np.uint8: 1}[dtype]
        assert _cpp.build_index(lengths, docs, code) == ref.read_bytes()
    with pytest.raises(ValueError):
        _cpp.build_index(lengths, np.array([0, 2, 4]), 4)


def test_concat_documents():
    ids, lengths = _cpp.concat_documents([[1, 2], [], np.array([3]), [4]], np.array([3, 1, 0]), 9)
    assert ids.tolist() == [1, 2, 3, 9, 4, 9, 9] and lengths.tolist() == [4, 2, 1]
    ids, lengths = _cpp.concat_documents([[1]], np.array([1]), -1)
    assert ids.tolist() == [1] and lengths.tolist() == [1]


def _hand_encoder(**extra):
    """Byte-level BPE where byte b has id b; merges "hi"→300, " hi"→301, "aa"→302, "aaa"→303; added tokens
    <a>→500, <ab>→501."""
    merges = [(ord("h"), ord("i"), 300), (ord(" "), 300, 301), (ord("a"), ord("a"), 302), (302, ord("a"), 303)]
    return _cpp.TextEncoder([(b"<a>", 500), (b"<ab>", 501)], {"byte_ids": list(range(256)), "merges": merges, **extra})


def test_text_encoder_bpe_and_pretokenizer_hand_cases():
    enc = _hand_encoder()
    assert enc.has_bpe
    cases = {
        "hi hi": [300, 301],  # pre-tokens "hi", " hi"
        "aaaa": [302, 302],  # lowest rank, leftmost first: aa|a|a → aa|aa
        "aaa": [303],
        "it's": [105, 116, 39, 115],  # "it", "'s"
        "x<ab>y<a>": [120, 501, 121, 500],  # added tokens: leftmost-longest
        "<a": [60, 97],  # not a token: "<a" is one pre-token, no merge
        "a  \n\n b": [97, 32, 32, 10, 10, 32, 98],  # "a", "  \n\n", " b"
        "a   ": [97, 32, 32, 32],  # trailing whitespace stays whole
        "a   hi": [97, 32, 32, 301],  # "a", "  ", " hi": one space goes to the word
    }
    for text, ids in cases.items():
        assert enc.encode_text(text) == (ids, []), text
    # non-ASCII chunks are holes for the Rust tokenizer; added tokens are still split off around them
    assert enc.encode_text("é<a>z") == ([-1, 500, 122], ["é"])
    assert enc.encode_text("héllo hi") == ([-1], ["héllo hi"])
    # without BPE only the added tokens are resolved
    split_only = _cpp.TextEncoder([(b"<a>", 500)])
    assert not split_only.has_bpe and split_only.encode_text("hi<a>hi") == ([-1, 500, -1], ["hi", "hi"])


def test_text_encoder_normalized_tokens_and_ignore_merges():
    enc = _hand_encoder(normalized_added=[(b"<n>", 503)], whole_words={b"aaaa": 600})
    assert enc.encode_text("a<n>aaaa") == ([97, 503, 600], [])  # whole vocabulary words skip the merges
    assert enc.encode_text("aaa") == ([303], [])
    assert enc.encode_text("é<n>") == ([-1], ["é<n>"])  # matched by the Rust tokenizer, after NFC


def test_text_encoder_plan_and_fill():
    enc = _hand_encoder()
    plan, holes = enc.plan(["hi", [7, 8], "é", np.array([9]), "é hi"], np.array([2, 2, 1]))
    assert holes == ["é", "é hi"]
    ids, lengths = plan.fill([[200, 201], [202, 301]], 1)
    assert ids.tolist() == [300, 7, 8, 1, 200, 201, 9, 1, 202, 301, 1] and lengths.tolist() == [4, 4, 3]
    ids, lengths = plan.fill([[200], []], -1)
    assert ids.tolist() == [300, 7, 8, 200, 9] and lengths.tolist() == [3, 2, 0]
    with pytest.raises(ValueError, match="expected 2 hole encodings, got 1"):
        plan.fill([[1]], 1)
    with pytest.raises(ValueError, match=r"sum\(piece_counts\)=3 but 2 pieces"):
        enc.plan(["a", "b"], np.array([3]))


def test_streamed_index_matches_builder():
    import io

    from megarec.data.indexed import index_bytes, write_index_stream

    chunks = [np.array([3, 1], np.int32), np.zeros(0, np.int32), np.array([4, 1, 5], np.int32)]
    for dtype in (np.int32, np.uint16, np.uint8):
        out = io.BytesIO()
        write_index_stream(out, lambda: iter(chunks), 5, np.dtype(dtype))
        assert out.getvalue() == index_bytes(np.concatenate(chunks), np.arange(6), np.dtype(dtype))
    with pytest.raises(ValueError, match="expected 6 sequence lengths, got 5"):
        write_index_stream(io.BytesIO(), lambda: iter(chunks), 6, np.dtype(np.int32))
