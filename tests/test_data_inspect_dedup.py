"""`megarec data inspect` and `megarec data dedup`."""

from __future__ import annotations

import json

import pytest

from megarec.data.dedup import DedupOptions, dedup_files
from megarec.data.preprocess import PreprocessOptions, run_preprocess

from conftest import run_cli
from data_helpers import itemic_tokenizer, write_jsonl


def test_inspect_shows_counts_histogram_and_itemic_tokens(qwen3_tokenizer_dir, tmp_path_factory, tmp_path):
    tok = itemic_tokenizer(qwen3_tokenizer_dir, str(tmp_path_factory.getbasetemp() / "qwen3_itemic"))
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Recommend something {i}"},
                {"role": "assistant", "content": "<|sid_begin|><s_a_1><s_b_2><s_c_3><|sid_end|>"},
            ]
        }
        for i in range(12)
    ]
    src = write_jsonl(str(tmp_path / "c.jsonl"), rows)
    run_preprocess(PreprocessOptions([src], tok, str(tmp_path / "c"), pack=True, seq_length=128))
    from megarec.data.inspect import inspect_dataset

    text = inspect_dataset(str(tmp_path / "c"), samples=2)
    assert "12 sequences" in text and "length histogram" in text and "packs:" in text
    assert "loss mask" in text and "⟦<think>" in text
    assert "<|sid_begin|><s_a_1><s_b_2><s_c_3><|sid_end|><|im_end|>⟧" in text
    proc = run_cli(["data", "inspect", str(tmp_path / "c_text_document"), "--samples", "1"], timeout=120)
    assert proc.returncode == 0 and "12 sequences" in proc.stdout
    proc = run_cli(["data", "inspect", str(tmp_path / "missing")], timeout=120)
    assert proc.returncode == 2 and "no indexed dataset" in proc.stderr


def test_dedup_drops_near_duplicates(tmp_path):
    base = "the user watched a long cooking video about pasta and then liked a travel vlog on island hopping"
    eval_rows = [
        {"messages": [{"role": "user", "content": base}, {"role": "assistant", "content": "ok"}]},
        {"text": "completely different evaluation text about finance budgeting and saving tips for students"},
    ]
    train_rows = [
        {"text": base + " ok"},  # near duplicate of eval 0
        {"segments": [{"type": "text", "text": base.replace("pasta", "ravioli") + " ok"}]},  # near dup
        {"text": "a fresh training sample on gardening and bonsai trees in small apartments today"},
        {"text": "completely different evaluation text about finance budgeting and saving tips for students"},
    ]
    ev = write_jsonl(str(tmp_path / "eval.jsonl"), eval_rows)
    tr = write_jsonl(str(tmp_path / "train.jsonl"), train_rows)
    report = dedup_files(DedupOptions(train=[tr], eval=[ev], out=str(tmp_path / "out"), threshold=0.6, ngram=3))
    kept = [json.loads(x) for x in open(tmp_path / "out" / "train.jsonl")]
    assert kept == [train_rows[2]]
    assert report["dropped"] == 3 and report["files"][0]["rows"] == 4
    proc = run_cli(
        ["data", "dedup", "--train", tr, "--eval", ev, "--out", str(tmp_path / "o2"), "--threshold", "0.95"],
        timeout=120,
    )
    assert proc.returncode == 0 and "dropped" in proc.stdout
    with pytest.raises(Exception, match="threshold"):
        dedup_files(DedupOptions(train=[tr], eval=[ev], out=str(tmp_path / "o3"), threshold=0))
