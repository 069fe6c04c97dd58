"""`megarec init-model`: a random Qwen3 HF checkpoint sized by the tokenizer, ready for `expand-vocab`."""

from __future__ import annotations

import json

import torch

from conftest import run_cli

ARCH = [
    "--preset",
    "qwen3-small",
    "--num-layers",
    "2",
    "--hidden-size",
    "32",
    "--ffn-hidden-size",
    "64",
    "--num-attention-heads",
    "4",
    "--num-query-groups",
    "2",
    "--head-dim",
    "8",
]


def test_init_model_shape_seed_and_expand(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megarec.tokenizer.qwen3_offline import build_qwen3_tokenizer

    qwen3_tokenizer_dir = build_qwen3_tokenizer(tmp_path / "tok", bpe_ranks=2048)

    res = run_cli(["init-model", "--tokenizer", qwen3_tokenizer_dir, "--out", str(tmp_path / "a"), *ARCH])
    assert res.returncode == 0, res.stderr
    cfg = json.load(open(tmp_path / "a" / "config.json"))
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert cfg["model_type"] == "qwen3" and cfg["vocab_size"] == len(tok) == 2048 + 26
    assert (
        cfg["num_hidden_layers"],
        cfg["hidden_size"],
        cfg["intermediate_size"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["head_dim"],
        cfg["tie_word_embeddings"],
    ) == (2, 32, 64, 4, 2, 8, True)
    assert cfg["eos_token_id"] == tok.eos_token_id and cfg["pad_token_id"] == tok.pad_token_id
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    std = model.model.embed_tokens.weight.std().item()
    assert abs(std - 0.02) < 0.001  # the normal init of --init-std over 66k draws

    # same seed -> bit-identical weights; another seed -> different ones
    run_cli(["init-model", "--tokenizer", qwen3_tokenizer_dir, "--out", str(tmp_path / "b"), *ARCH])
    run_cli(["init-model", "--tokenizer", qwen3_tokenizer_dir, "--out", str(tmp_path / "c"), *ARCH, "--seed", "1"])
    a, b, c = (load_file(str(tmp_path / d / "model.safetensors")) for d in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])

    # an existing checkpoint is never overwritten silently
    res = run_cli(["init-model", "--tokenizer", qwen3_tokenizer_dir, "--out", str(tmp_path / "a"), *ARCH])
    assert res.returncode == 2 and "not empty" in res.stderr

    res = run_cli(
        [
            "expand-vocab",
            "--hf-dir",
            str(tmp_path / "a"),
            "--out",
            str(tmp_path / "x"),
            "--layers",
            "2",
            "--codebook-size",
            "4",
        ]
    )
    assert res.returncode == 0, res.stderr
    meta = json.load(open(tmp_path / "x" / "itemic.json"))
    assert meta["first_id"] == 2074 and meta["last_id"] == 2074 + 2 * 4 + 2 - 1
