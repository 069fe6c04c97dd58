"""Itemic vocabulary: token layout on the real Qwen3 tokenizer, ItemicLayout, and embedding expansion."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

from megarec.common.errors import ConfigError, DataError
from megarec.common.itemic import ItemicLayout, itemic_token_strings
from megarec.itemic.expand import expand_checkpoint
from megarec.itemic.vocab import add_itemic_tokens

from conftest import run_cli

HIDDEN = 16


@pytest.fixture(scope="module")
def base_tokenizer(qwen3_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)


def test_qwen3_itemic_id_range(qwen3_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
    layout = add_itemic_tokens(tok, 3, 8192)
    assert (layout.first_id, layout.last_id) == (151669, 176246)
    assert (layout.sid_begin_id, layout.sid_end_id) == (176245, 176246)
    assert layout.num_new_tokens == 24578 and len(tok) == 176247
    ids = tok.convert_tokens_to_ids(["<s_a_0>", "<s_a_8191>", "<s_b_0>", "<s_c_8191>"])
    assert ids == [151669, 159860, 159861, 176244]
    item = layout.item_to_string((12, 0, 8191))
    assert item == "<|sid_begin|><s_a_12><s_b_0><s_c_8191><|sid_end|>"
    ids = tok(item).input_ids
    assert ids == [176245, 151681, 159861, 176244, 176246] == layout.item_ids((12, 0, 8191))
    assert tok.decode(ids) == item and layout.ids_to_item(ids) == (12, 0, 8191)
    text = f"I watched {item}{layout.item_to_string((1, 2, 3))} twice."
    enc = tok(text).input_ids
    assert sum(layout.is_itemic(i) for i in enc) == 10
    assert tok.decode(enc) == text and tok.decode(enc, skip_special_tokens=True) == text
    assert layout.string_to_items(text) == [(12, 0, 8191), (1, 2, 3)]


def test_layout_methods(tmp_path):
    lay = ItemicLayout.create(100, 2, 4, padded_vocab_size=128)
    assert (lay.first_id, lay.sid_begin_id, lay.last_id) == (100, 108, 109)
    assert lay.token_id(1, 3) == 107 and lay.code_of(105) == (1, 1)
    assert list(lay.layer_id_range(1)) == [104, 105, 106, 107]
    assert lay.items_ids([(0, 1), (3, 2)]) == [108, 100, 105, 109, 108, 103, 106, 109]
    assert lay.ids_to_items([108, 100, 105, 109, 108, 103, 106, 109]) == [(0, 1), (3, 2)]
    assert [lay.is_itemic(i) for i in (99, 100, 109, 110)] == [False, True, True, False]
    for bad in ([108, 104, 100, 109], [100, 105, 109], [108, 100, 105, 108], [108, 100, 99, 109]):
        with pytest.raises(DataError, match="malformed item ids"):
            lay.ids_to_item(bad)
    with pytest.raises(DataError, match="outside"):
        lay.token_id(0, 4)
    with pytest.raises(DataError, match="expected 2"):
        lay.item_ids((1, 2, 3))
    for bad in (
        "<|sid_begin|><s_b_1><s_a_1><|sid_end|>",
        "<|sid_begin|><s_a_1><|sid_end|>",
        "<|sid_begin|><s_a_1><s_b_4><|sid_end|>",
        "<|sid_begin|><s_a_1> <s_b_2><|sid_end|>",
        "<|sid_begin|><s_a_01><s_b_2><|sid_end|>",
    ):
        with pytest.raises(DataError, match="malformed item"):
            lay.string_to_items(bad)
    with pytest.raises(DataError, match="unbalanced"):
        lay.string_to_items("x <|sid_begin|><s_a_1><s_b_2>")
    lay.save(tmp_path)
    assert ItemicLayout.load(tmp_path) == lay == ItemicLayout.load(tmp_path / "itemic.json")
    raw = json.load(open(tmp_path / "itemic.json"))
    raw["last_id"] = 110
    json.dump(raw, open(tmp_path / "itemic.json", "w"))
    with pytest.raises(DataError, match="field 'last_id' is 110"):
        ItemicLayout.load(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        ItemicLayout.load(tmp_path / "nope")


def test_token_string_validation():
    assert itemic_token_strings(2, 2) == ["<s_a_0>", "<s_a_1>", "<s_b_0>", "<s_b_1>", "<|sid_begin|>", "<|sid_end|>"]
    assert itemic_token_strings(26, 1)[25] == "<s_z_0>"
    with pytest.raises(ConfigError, match="27 itemic layers, but layer letters a..z allow at most 26"):
        itemic_token_strings(27, 4)
    with pytest.raises(ConfigError, match="codebook size must be >= 1, got 0"):
        itemic_token_strings(3, 0)
    with pytest.raises(ConfigError, match=">= 1"):
        itemic_token_strings(0, 4)


# ---- model expansion -------------------------------------------------------------------------------------


def _structured_rows(n, rng, shift):
    """Rows with a non-zero mean and a correlated covariance, so matching them is a real test."""
    a = torch.from_numpy(rng.normal(size=(HIDDEN, HIDDEN)) * 0.05)
    z = torch.from_numpy(rng.normal(size=(n, HIDDEN)))
    return (shift + z @ a).float()


def make_base(path, tokenizer_dir, *, tied: bool):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(
        vocab_size=151936,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg)
    rng = np.random.default_rng(0)
    used = 151669
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[:used] = _structured_rows(used, rng, 0.3)
        emb[used:] = 0.0  # unused padding rows as a base checkpoint might have them: identical copies
        if not tied:
            out = model.get_output_embeddings().weight
            out[:used] = _structured_rows(used, rng, -0.5)
            out[used:] = 7.0
    model.save_pretrained(path)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), path)
    return model


def check_mvn_rows(old: torch.Tensor, new: torch.Tensor):
    """new rows ~ N(mean(old), cov(old)): mean within 5 standard errors per dimension; covariance within 4× the
    expected RMS Frobenius error of a sample covariance, E‖Ĉ−C‖²_F = ((tr C)² + ‖C‖²_F) / n for Gaussian rows."""
    old, new = old.double(), new.double()
    n = new.shape[0]
    mean, cov = old.mean(0), torch.cov(old.T)
    se = (torch.diagonal(cov) / n).sqrt()
    assert torch.all((new.mean(0) - mean).abs() < 5 * se), (new.mean(0) - mean) / se
    expected_rms = math.sqrt((torch.trace(cov) ** 2 + (cov**2).sum()) / n)
    err = torch.linalg.norm(torch.cov(new.T) - cov)
    assert err < 4 * expected_rms, (err, expected_rms)
    assert torch.unique(new, dim=0).shape[0] == n  # no copied rows
    old_rows = {r.tobytes() for r in old.float().numpy()}
    assert not any(r.tobytes() in old_rows for r in new.float().numpy())


@pytest.fixture(scope="module")
def expanded(tmp_path_factory, qwen3_tokenizer_dir):
    root = tmp_path_factory.mktemp("expand")
    out = {}
    for tied in (True, False):
        base = root / f"base_tied{tied}"
        base_model = make_base(base, qwen3_tokenizer_dir, tied=tied)
        layout = expand_checkpoint(
            base, root / f"exp_tied{tied}", num_layers=3, codebook_size=8192, pad_to_multiple=128, seed=11
        )
        out[tied] = (base, base_model, root / f"exp_tied{tied}", layout)
    return out


@pytest.mark.parametrize("tied", [True, False])
def test_expand_embeddings(expanded, tied):
    from transformers import AutoModelForCausalLM

    _, base_model, out, layout = expanded[tied]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert layout.padded_vocab_size == 176256 == model.config.vocab_size  # 176247 rounded up to 128
    emb = model.get_input_embeddings().weight.detach()
    base_emb = base_model.get_input_embeddings().weight.detach()
    assert emb.shape == (176256, HIDDEN)
    assert torch.equal(emb[:151669], base_emb[:151669])
    new = emb[151669:]  # itemic rows + the base's unused padding rows + new padding rows
    assert not (new == 0).all(dim=1).any()  # base padding rows were re-initialised
    check_mvn_rows(base_emb[:151669], new)
    out_w = model.get_output_embeddings().weight.detach()
    if tied:
        assert model.config.tie_word_embeddings and torch.equal(out_w, emb)
    else:
        base_out = base_model.get_output_embeddings().weight.detach()
        assert out_w.data_ptr() != emb.data_ptr()
        assert torch.equal(out_w[:151669], base_out[:151669])
        assert not (out_w[151669:] == 7.0).all(dim=1).any()
        check_mvn_rows(base_out[:151669], out_w[151669:])  # its own statistics (mean -0.5, not +0.3)
        assert (out_w[151669:].mean(0) + 0.5).abs().max() < 0.05


def test_expanded_checkpoint_files(expanded, qwen3_tokenizer_dir, base_tokenizer):
    from transformers import AutoTokenizer

    base, _, out, layout = expanded[False]
    assert json.load(open(out / "itemic.json")) == {
        "first_id": 151669,
        "last_id": 176246,
        "num_layers": 3,
        "codebook_size": 8192,
        "sid_begin_id": 176245,
        "sid_end_id": 176246,
        "layer_letters": ["a", "b", "c"],
        "base_vocab_size": 151669,
        "padded_vocab_size": 176256,
        "seed": 11,
    }
    assert ItemicLayout.load(out) == layout
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 176247
    item = layout.item_to_string((5, 6, 7))
    ids = tok(item).input_ids
    assert len(ids) == 5 and all(layout.first_id <= i <= layout.last_id for i in ids)
    assert tok.decode(ids) == item and layout.ids_to_item(ids) == (5, 6, 7)
    msgs = [{"role": "user", "content": "Recommend one."}]
    assert tok.chat_template == base_tokenizer.chat_template
    assert tok.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False
    ) == base_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert tok("Hello, world!").input_ids == [9707, 11, 1879, 0]
    assert not [n for n in os.listdir(out.parent) if n.startswith(".") and n.endswith(".tmp")]  # no staging left


def test_seed_controls_new_rows(expanded, tmp_path):
    from safetensors.torch import load_file

    base, _, out, _ = expanded[True]
    expand_checkpoint(base, tmp_path / "same", num_layers=3, codebook_size=8192, seed=11)
    expand_checkpoint(base, tmp_path / "other", num_layers=3, codebook_size=8192, seed=12)
    key = "model.embed_tokens.weight"
    ref = load_file(out / "model.safetensors")[key]
    assert torch.equal(load_file(tmp_path / "same" / "model.safetensors")[key], ref)
    other = load_file(tmp_path / "other" / "model.safetensors")[key]
    assert torch.equal(other[:151669], ref[:151669]) and not torch.equal(other[151669:], ref[151669:])


def test_expand_bad_inputs(tmp_path, expanded):
    for model_type in ("gpt2", "llama"):
        d = tmp_path / model_type
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": model_type, "vocab_size": 100}))
        with pytest.raises(
            DataError,
            match=rf"config.json: field 'model_type' is '{model_type}'; expand-vocab "
            r"supports Qwen3",
        ):
            expand_checkpoint(d, tmp_path / "o", num_layers=3, codebook_size=8)
    with pytest.raises(DataError, match="config.json: not found"):
        expand_checkpoint(tmp_path / "empty", tmp_path / "o", num_layers=3, codebook_size=8)
    base = expanded[True][0]
    with pytest.raises(ConfigError, match="27 itemic layers"):
        expand_checkpoint(base, tmp_path / "o", num_layers=27, codebook_size=8)
    with pytest.raises(ConfigError, match="codebook size must be >= 1, got 0"):
        expand_checkpoint(base, tmp_path / "o", num_layers=3, codebook_size=0)
    with pytest.raises(DataError, match=r"already contains <s_a_0> \(id 151669\)"):
        expand_checkpoint(expanded[True][2], tmp_path / "o", num_layers=3, codebook_size=8)
    assert not (tmp_path / "o").exists()


def test_cli_expand_vocab(expanded, tmp_path):
    base = expanded[False][0]
    res = run_cli(
        [
            "expand-vocab",
            "--hf-dir",
            str(base),
            "--out",
            str(tmp_path / "e"),
            "--layers",
            "2",
            "--codebook-size",
            "100",
            "--pad-to-multiple",
            "64",
        ]
    )
    assert res.returncode == 0, res.stderr
    lay = ItemicLayout.load(tmp_path / "e")
    assert (lay.first_id, lay.last_id, lay.padded_vocab_size) == (151669, 151870, 151872)
    res = run_cli(
        ["expand-vocab", "--hf-dir", str(base), "--out", str(tmp_path / "f"), "--layers", "27", "--codebook-size", "4"]
    )
    assert res.returncode == 2
    want = "megarec expand-vocab: error: 27 itemic layers, but layer letters a..z allow at most 26"
    assert res.stderr.strip() == want
