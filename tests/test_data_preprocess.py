"""`megarec preprocess`: Megatron-Core reads back exactly the HF tokenizer's ids (+EOD); chat loss masks line
up with the assistant spans of the Qwen3 chat format; packing keeps every sample once within capacity;
interrupted runs resume byte-identically; bad rows fail clearly or are skipped into a reject file; the C++
batch encoder (added tokens, ASCII byte-level BPE) gives exactly the Rust tokenizer's ids."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from megarec.common.errors import DataError
from megarec.data.preprocess import ABORT_ENV, PreprocessOptions, run_preprocess

from conftest import run_cli
from data_helpers import itemic_tokenizer, read_dataset, write_jsonl

TEXTS = [
    "Hello, world!",
    "Recommendation with itemic tokens <|sid_begin|><s_a_1><s_b_2><s_c_3><|sid_end|> works.",
    "中文文本也可以。",
    "  leading spaces and\nnewlines\n\n",
    "x" * 300,
    "Numbers 12345 and symbols #$%",
]

CHATS = [
    [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Recommend a video."},
        {"role": "assistant", "content": "<|sid_begin|><s_a_4><s_b_0><s_c_9><|sid_end|>"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Describe <|sid_begin|><s_a_1><s_b_1><s_c_1><|sid_end|>."},
        {"role": "assistant", "content": "A short video about cooking pasta."},
    ],
    [{"role": "user", "content": "Will the user like it? Answer yes or no."}, {"role": "assistant", "content": "yes"}],
]


@pytest.fixture(scope="module")
def tok_dir(qwen3_tokenizer_dir, tmp_path_factory):
    return itemic_tokenizer(qwen3_tokenizer_dir, str(tmp_path_factory.getbasetemp() / "qwen3_itemic"))


@pytest.fixture(scope="module")
def hf(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)


def _opts(inputs, tok_dir, prefix, **kw):
    return PreprocessOptions(inputs=[str(p) for p in inputs], tokenizer=tok_dir, output_prefix=str(prefix), **kw)


def _bytes(prefix):
    return {ext: open(f"{prefix}{ext}", "rb").read() for ext in (".bin", ".idx")}


def test_text_matches_hf_tokenizer_through_megatron(tmp_path, tok_dir, hf):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    src = write_jsonl(str(tmp_path / "a.jsonl"), [{"text": t} for t in TEXTS])
    res = run_preprocess(_opts([src], tok_dir, tmp_path / "out", workers=2, shard_rows=2))
    eod = hf.convert_tokens_to_ids("<|endoftext|>")
    assert eod == 151643 and res.documents == len(TEXTS) and res.shards == 3
    ds = IndexedDataset(str(tmp_path / "out_text_document"))
    assert ds.index.dtype == np.int32 and len(ds) == len(TEXTS)
    assert list(ds.document_indices) == list(range(len(TEXTS) + 1))
    for i, text in enumerate(TEXTS):
        assert ds[i].tolist() == hf(text)["input_ids"] + [eod]
    assert hf("Hello, world!")["input_ids"] == [9707, 11, 1879, 0]  # the real Qwen3 vocabulary


def test_segments_parquet_and_itemic_segments(tmp_path, tok_dir, hf):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "segments": [
                {"type": "text", "text": "User liked "},
                {"type": "itemic", "codes": [[1, 2, 3], [4, 5, 6]]},
                {"type": "text", "text": " and then searched for cats."},
            ]
        },
        {"segments": [{"type": "text", "text": "Plain "}, {"type": "text", "text": "text."}]},
    ]
    pq.write_table(
        pa.Table.from_pylist([{"segments": json.dumps(r["segments"])} for r in rows]), tmp_path / "x.parquet"
    )
    src = write_jsonl(str(tmp_path / "x.jsonl"), rows)
    run_preprocess(_opts([src], tok_dir, tmp_path / "seg", kind="segments"))
    expected = [
        hf(
            "User liked <|sid_begin|><s_a_1><s_b_2><s_c_3><|sid_end|><|sid_begin|><s_a_4><s_b_5><s_c_6>"
            "<|sid_end|> and then searched for cats."
        )["input_ids"],
        hf("Plain text.")["input_ids"],
    ]
    eod = hf.convert_tokens_to_ids("<|endoftext|>")
    assert read_dataset(str(tmp_path / "seg_text_document")) == [e + [eod] for e in expected]
    # parquet rows with a JSON-string column are rejected with a clear reason (segments must be a list)
    with pytest.raises(DataError, match=r"x.parquet: row 1: field 'segments': expected a non-empty list"):
        run_preprocess(_opts([tmp_path / "x.parquet"], tok_dir, tmp_path / "pq", kind="segments"))
    pq.write_table(pa.Table.from_pylist([{"text": t} for t in TEXTS[:3]]), tmp_path / "t.parquet")
    run_preprocess(_opts([tmp_path / "t.parquet"], tok_dir, tmp_path / "pqt", shard_rows=2))
    assert read_dataset(str(tmp_path / "pqt_text_document")) == [hf(t)["input_ids"] + [eod] for t in TEXTS[:3]]


def _expected_chat(hf, messages):
    """Ids and mask built independently: character spans of assistant turns in the rendered text, mapped
    to tokens through the tokenizer's offsets."""
    rendered = hf.apply_chat_template(messages, tokenize=False)
    header, end = "<|im_start|>assistant\n", "<|im_end|>"
    spans, pos = [], 0
    while (start := rendered.find(header, pos)) >= 0:
        stop = rendered.index(end, start) + len(end)
        spans.append((start + len(header), stop))
        pos = stop
    enc = hf(rendered, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(a <= s and e <= b for a, b in spans)) for s, e in enc["offset_mapping"]]
    return enc["input_ids"], mask, rendered


def test_chat_loss_mask_lines_up_with_assistant_spans(tmp_path, tok_dir, hf):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    src = write_jsonl(str(tmp_path / "chat.jsonl"), [{"messages": m} for m in CHATS])
    run_preprocess(_opts([src], tok_dir, tmp_path / "chat", workers=2, shard_rows=1))
    text = IndexedDataset(str(tmp_path / "chat_text_document"))
    mask = IndexedDataset(str(tmp_path / "chat_loss_mask_document"))
    assert mask.index.dtype == np.uint8 and np.array_equal(text.sequence_lengths, mask.sequence_lengths)
    eod = hf.convert_tokens_to_ids("<|endoftext|>")
    im_start, im_end = hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    for i, messages in enumerate(CHATS):
        ids, exp_mask, rendered = _expected_chat(hf, messages)
        assert text[i].tolist() == ids + [eod]
        assert mask[i].tolist() == exp_mask + [0]
        got_ids, got_mask = text[i], mask[i]
        # token-level checks: header tokens never trained, first assistant token and <|im_end|> trained
        n_assistant = sum(m["role"] == "assistant" for m in messages)
        starts = [
            k
            for k in range(len(got_ids) - 2)
            if got_ids[k] == im_start and hf.decode(got_ids[k + 1 : k + 3]) == "assistant\n"
        ]
        assert len(starts) == n_assistant
        for k in starts:
            assert got_mask[k : k + 3].tolist() == [0, 0, 0] and got_mask[k + 3] == 1
            close = k + 3 + list(got_ids[k + 3 :]).index(im_end)
            assert got_mask[k + 3 : close + 1].all() and got_mask[close + 1] == 0  # "\n" after <|im_end|>
        trained = hf.decode(got_ids[got_mask.astype(bool)])
        assert trained.endswith(messages[-1]["content"] + "<|im_end|>")
    assert "Hello! How can I help?<|im_end|>" in hf.decode(text[1][mask[1].astype(bool)])


def test_assistant_header_is_kept_whole(tmp_path, tok_dir, hf):
    """Content starting with a newline would merge with the header's "\\n" if the rendered text were tokenised
    in one piece; the header is tokenised on its own (as at generation time) and the mask stays exact."""
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "\nfirst answer"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "second"},
    ]
    src = write_jsonl(str(tmp_path / "nl.jsonl"), [{"messages": messages}])
    run_preprocess(_opts([src], tok_dir, tmp_path / "nl"))
    ids = read_dataset(str(tmp_path / "nl_text_document"))[0]
    mask = read_dataset(str(tmp_path / "nl_loss_mask_document"))[0]
    trained = [t for t, m in zip(ids, mask) if m]
    assert hf.decode(trained) == "\nfirst answer<|im_end|><think>\n\n</think>\n\nsecond<|im_end|>"
    rendered = hf.apply_chat_template(messages, tokenize=False)
    assert hf.decode(ids[:-1]) == rendered


def test_packing_every_sample_once_within_capacity(tmp_path, tok_dir, hf):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "video", "cat"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 60)))) for _ in range(120)]
    src = write_jsonl(str(tmp_path / "p.jsonl"), [{"text": t} for t in texts])
    run_preprocess(_opts([src], tok_dir, tmp_path / "flat", shard_rows=50))
    res = run_preprocess(
        _opts([src], tok_dir, tmp_path / "packed", shard_rows=50, pack=True, seq_length=128, workers=2)
    )
    flat = read_dataset(str(tmp_path / "flat_text_document"))
    ds = IndexedDataset(str(tmp_path / "packed_text_document"))
    packed = [ds[i].tolist() for i in range(len(ds))]
    assert sorted(map(tuple, packed)) == sorted(map(tuple, flat))  # every sample exactly once, intact
    docs = ds.document_indices
    pack_tokens = [int(ds.sequence_lengths[a:b].sum()) for a, b in zip(docs[:-1], docs[1:])]
    assert max(pack_tokens) <= 128 and res.packs == len(pack_tokens) == len(docs) - 1
    assert sum(pack_tokens) >= 0.85 * 128 * len(pack_tokens)  # best fit fills packs well
    assert all(seq[-1] == hf.convert_tokens_to_ids("<|endoftext|>") for seq in packed)
    # over-long samples: fail names the row, skip rejects it
    long_src = write_jsonl(str(tmp_path / "long.jsonl"), [{"text": "short"}, {"text": "word " * 400}])
    with pytest.raises(DataError, match=r"long.jsonl: row 2: sample has \d+ tokens .* longer than --seq-length 128"):
        run_preprocess(_opts([long_src], tok_dir, tmp_path / "long", pack=True, seq_length=128))
    res = run_preprocess(_opts([long_src], tok_dir, tmp_path / "long", pack=True, seq_length=128, on_error="skip"))
    assert res.documents == 1 and res.rejected == 1
    rej = [json.loads(x) for x in open(tmp_path / "long.rejects.jsonl")]
    assert rej[0]["row"] == 2 and rej[0]["file"].endswith("long.jsonl") and "longer than" in rej[0]["reason"]


def test_interrupted_run_resumes_byte_identical(tmp_path, tok_dir, monkeypatch):
    rows = [
        {"messages": CHATS[i % 3]}
        if i % 5
        else {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(60)
    ]
    src = write_jsonl(str(tmp_path / "c.jsonl"), rows)
    # Many small shards: the pool keeps encoding after the main process stops at shard 3, and with few shards a
    # loaded machine could finish them all before the pool is terminated.
    kw = dict(shard_rows=2, pack=True, seq_length=256)
    run_preprocess(_opts([src], tok_dir, tmp_path / "clean" / "x", **kw))
    monkeypatch.setenv(ABORT_ENV, "3")
    with pytest.raises(KeyboardInterrupt):
        run_preprocess(_opts([src], tok_dir, tmp_path / "resumed" / "x", workers=2, **kw))
    assert not os.path.exists(tmp_path / "resumed" / "x_text_document.bin")
    done = [f for f in os.listdir(tmp_path / "resumed" / "x.parts") if f.endswith(".done.json")]
    assert 3 <= len(done) < 30
    monkeypatch.delenv(ABORT_ENV)
    res = run_preprocess(_opts([src], tok_dir, tmp_path / "resumed" / "x", workers=2, **kw))
    assert res.resumed_shards == len(done) and res.shards == 30
    for name in ("x_text_document", "x_loss_mask_document"):
        assert _bytes(tmp_path / "resumed" / name) == _bytes(tmp_path / "clean" / name)
    assert not os.path.exists(tmp_path / "resumed" / "x.parts")


def test_bad_rows_fail_or_skip(tmp_path, tok_dir, hf):
    lines = [
        json.dumps({"text": "good one"}),
        "{not json",
        json.dumps({"txt": "missing"}),
        json.dumps({"text": 42}),
        json.dumps({"text": "good two"}),
        json.dumps(["a", "list"]),
    ]
    src = write_jsonl(str(tmp_path / "bad.jsonl"), lines)
    proc = run_cli(
        [
            "preprocess",
            "--input",
            src,
            "--tokenizer",
            tok_dir,
            "--output-prefix",
            str(tmp_path / "b"),
            "--kind",
            "text",
        ],
        timeout=300,
    )
    assert proc.returncode == 2
    err = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(err) == 1 and "bad.jsonl: row 2: invalid JSON" in err[0] and "Traceback" not in proc.stderr
    proc = run_cli(
        [
            "preprocess",
            "--input",
            src,
            "--tokenizer",
            tok_dir,
            "--output-prefix",
            str(tmp_path / "b"),
            "--kind",
            "text",
            "--on-error",
            "skip",
            "--workers",
            "2",
            "--shard-rows",
            "2",
        ],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rejected 4 rows" in proc.stdout and "tokens/s" in proc.stdout
    rejects = [json.loads(x) for x in open(tmp_path / "b.rejects.jsonl")]
    assert [r["row"] for r in rejects] == [2, 3, 4, 6] and all(r["file"] == src for r in rejects)
    assert "field 'text': missing" in rejects[1]["reason"] and "expected a string" in rejects[2]["reason"]
    eod = hf.convert_tokens_to_ids("<|endoftext|>")
    assert read_dataset(str(tmp_path / "b_text_document")) == [
        hf(t)["input_ids"] + [eod] for t in ("good one", "good two")
    ]
    summary = json.load(open(tmp_path / "b.preprocess.json"))
    assert summary["rejected"] == 4 and summary["documents"] == 2 and summary["eod_id"] == eod
    chat_src = write_jsonl(str(tmp_path / "nochat.jsonl"), [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match=r"nochat.jsonl: row 1: field 'messages': no assistant message"):
        run_preprocess(_opts([chat_src], tok_dir, tmp_path / "nochat"))


def test_small_vocab_uses_uint16_and_workers_agree(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXTS * 3, trainers.WordLevelTrainer(special_tokens=["[UNK]", "</s>"]))
    tok.enable_truncation(max_length=4)  # saved in tokenizer.json; documents must still come out whole
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    src = write_jsonl(str(tmp_path / "a.jsonl"), [{"text": t} for t in TEXTS * 5])
    # TEXTS hold itemic strings this word-level tokenizer lacks: tokenised as plain text only when asked to
    with pytest.raises(DataError, match=r"a.jsonl: row 2: field 'text': <\|sid_begin\|> .* has no itemic tokens"):
        run_preprocess(_opts([src], str(tmp_path / "tok"), tmp_path / "one", shard_rows=4))
    kw = dict(shard_rows=4, allow_unknown_itemic=True)
    run_preprocess(_opts([src], str(tmp_path / "tok"), tmp_path / "one", **kw))
    run_preprocess(_opts([src], str(tmp_path / "tok"), tmp_path / "two", workers=2, **kw))
    assert _bytes(tmp_path / "one_text_document") == _bytes(tmp_path / "two_text_document")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(tmp_path / "one_text_document"))
    assert ds.index.dtype == np.uint16 and ds[0][-1] == tok.token_to_id("</s>")  # EOD = eos when no <|endoftext|>
    tok.no_truncation()
    assert [ds[i].tolist() for i in range(2)] == [tok.encode(t).ids + [tok.token_to_id("</s>")] for t in TEXTS[:2]]
    assert len(ds[1]) > 5
    from megarec.data.hf_tokenizer import FastTokenizer

    assert not FastTokenizer(str(tmp_path / "tok")).text_encoder().has_bpe  # WordLevel: Rust does the text


def _fuzz_texts(seed: int, n: int) -> list[str]:
    import random

    rng = random.Random(seed)
    pools = [
        [chr(c) for c in range(0x20, 0x7F)] + ["\t", "\n", "\r"],
        list(" \t\n\r'sSrReEvVlLtTmMdD"),
        list("aaab 0123456789.,!?\n"),
        list(" \t\n\r'sSaxZ09.,!-_<>|")
        + [
            "<|im_start|>",
            "<|im_end|>",
            "<s_a_1>",
            "<s_b_15>",
            "<|sid_begin|>",
            "<|sid_end|>",
            "<s_a_16>",
            "'re",
            "\r\n",
            "é",
            "中",
            "\x0b",
            "\x0c",
            "\x1c",
            "\x00",
            "\x7f",
            "ſ",
            "K",
            "e\u0301",
        ],
    ]
    out = []
    for _ in range(n):
        pool = rng.choice(pools)
        out.append("".join(rng.choice(pool) for _ in range(rng.choice([1, 2, 5, 20, 80]))))
    return out + ["x" * 3000, "ab" * 1000, " " * 500 + "a", "\n" * 300, "1" * 200, "=" * 400 + "\n\n", *TEXTS]


@pytest.mark.parametrize("which", ["itemic", "qwen3"])
def test_cpp_encoder_gives_the_rust_tokenizer_ids(which, tok_dir, qwen3_tokenizer_dir):
    """The C++ encoder (added-token split + ASCII byte-level BPE, non-ASCII chunks left to Rust) on random
    strings built from the pre-tokenizer's tricky characters, contractions, added tokens and non-ASCII."""
    from megarec.data.hf_tokenizer import FastTokenizer

    tok = FastTokenizer(tok_dir if which == "itemic" else qwen3_tokenizer_dir)
    enc = tok.text_encoder()
    assert enc.has_bpe  # Qwen3 layout; the itemic copy's tokens were added with normalized=True
    texts = _fuzz_texts(0, 3000)
    plan, holes = enc.plan(texts, np.ones(len(texts), dtype=np.int64))
    hole_ids = [e.ids for e in tok.backend.encode_batch_fast(holes, add_special_tokens=False)]
    ids, lengths = plan.fill(hole_ids, -1)
    expected = [e.ids for e in tok.backend.encode_batch_fast(texts, add_special_tokens=False)]
    got = [x.tolist() for x in np.split(ids, np.cumsum(lengths)[:-1])]
    assert got == expected
    assert 0 < len(holes) < len(texts) // 2 and sum(map(len, expected)) > 40000
    # pure ASCII texts never reach the Rust tokenizer
    allowed = {chr(c) for c in range(0x20, 0x7F)} | set("\t\n\r")
    ascii_only = [t for t in texts if set(t) <= allowed]
    assert len(ascii_only) > 1500 and enc.plan(ascii_only, np.ones(len(ascii_only), dtype=np.int64))[1] == []


def test_fast_encoder_modes_and_batch_size_do_not_change_bytes(tmp_path, tok_dir, monkeypatch):
    """Default (C++ BPE), MEGAREC_FAST_ENCODER=split (added tokens only) and =0 (Rust for everything), and
    batches of one row instead of 512, all write the same bytes."""
    import megarec.data.preprocess as pp
    from megarec.data.hf_tokenizer import FAST_ENCODER_ENV

    seg_rows = [
        {
            "segments": [
                {"type": "text", "text": f"{t} liked "},
                {"type": "itemic", "codes": [[1, 2, 3]]},
                {"type": "text", "text": "<|sid_begin|><s_a_4><s_b_5><s_c_6><|sid_end|> next"},
            ]
        }
        for t in TEXTS
    ]
    inputs = {
        "text": [{"text": t} for t in TEXTS + _fuzz_texts(1, 40) if t.strip()],
        "segments": seg_rows,
        "messages": [{"messages": m} for m in CHATS],
    }
    runs = {}
    for mode in ("1", "split", "0", "batch1"):
        monkeypatch.setenv(FAST_ENCODER_ENV, "1" if mode == "batch1" else mode)
        if mode == "batch1":
            monkeypatch.setattr(pp, "ENCODE_BATCH", 1)
        for kind, rows in inputs.items():
            src = write_jsonl(str(tmp_path / f"{kind}.jsonl"), rows)
            # the fuzz texts hold codes beyond the codebook: their plain-text split is part of what must agree
            opts = _opts(
                [src], tok_dir, tmp_path / f"{mode}_{kind}", kind=kind, shard_rows=7, allow_unknown_itemic=True
            )
            run_preprocess(opts)
            runs[mode, kind] = _bytes(tmp_path / f"{mode}_{kind}_text_document")
            if kind == "messages":
                runs[mode, "mask"] = _bytes(tmp_path / f"{mode}_{kind}_loss_mask_document")
    for key in ("text", "segments", "messages", "mask"):
        assert runs["1", key] == runs["split", key] == runs["0", key] == runs["batch1", key], key
