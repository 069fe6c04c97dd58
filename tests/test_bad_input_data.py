"""Bad data inputs and unwritable outputs: every case is exit 2 with one stderr line naming the file, row, field or
key, and nothing outside the command's output created, changed or lost (tests/bad_input.py is the yardstick).

Shared inputs (tokenizers, an itemic tokenizer, indexed datasets, a `data build` output, a tiny HF model) are
built once per module; each case copies what it needs into its own directory, runs there, and the directory is
compared before and after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from bad_input import Case, changed, one_error_line, snapshot
from conftest import REPO, run_cli
from data_helpers import itemic_tokenizer, random_chats, write_jsonl

TINY = os.path.join(REPO, "configs", "pretrain", "tiny_cpu.yaml")
SHARED: dict = {}  # filled by the module fixture `shared`
FROZEN: list = []  # directories made unwritable by a case, made writable again after it


# --- shared inputs ---------------------------------------------------------------------------------------------


def _swapped_tokenizer(src: str, out: str) -> str:
    """A copy of `src` with the ids of two ordinary tokens exchanged: same size, other ids."""
    shutil.copytree(src, out)
    path = os.path.join(out, "tokenizer.json")
    spec = json.load(open(path, encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    a, b = "hello", "world"
    vocab[a], vocab[b] = vocab[b], vocab[a]
    json.dump(spec, open(path, "w", encoding="utf-8"), ensure_ascii=False)
    return out


@pytest.fixture(scope="module")
def shared(qwen3_tokenizer_dir, tmp_path_factory):
    from megarec.data.preprocess import PreprocessOptions, run_preprocess
    from megarec.itemic.io import open_embeddings
    from megarec.itemic.pipeline import train_itemic_tokenizer
    from megarec.models.hf_init import init_hf_model
    from megarec.models.qwen3.presets import get_preset

    root = tmp_path_factory.mktemp("bad_input_data")
    s = SHARED
    s["tok"] = qwen3_tokenizer_dir
    s["itok"] = itemic_tokenizer(qwen3_tokenizer_dir, str(root / "itemic_tok"))  # + 3 x 16 itemic tokens
    s["swapped_tok"] = _swapped_tokenizer(qwen3_tokenizer_dir, str(root / "swapped_tok"))
    texts = write_jsonl(str(root / "texts.jsonl"), [{"text": f"row {i}: " + "hello world " * 10} for i in range(200)])
    run_preprocess(PreprocessOptions([texts], qwen3_tokenizer_dir, str(root / "ds" / "text")))
    s["ds"] = str(root / "ds")  # text_text_document.{bin,idx}, text.preprocess.json
    chats = write_jsonl(str(root / "chats.jsonl"), random_chats(40, 0, max_words=6))
    run_preprocess(PreprocessOptions([chats], qwen3_tokenizer_dir, str(root / "chat" / "chat"), kind="messages"))
    s["chat"] = str(root / "chat")
    rng = np.random.default_rng(0)
    emb = root / "emb.npy"
    np.save(emb, rng.normal(size=(64, 8)).astype(np.float32))
    s["emb"] = str(emb)
    train_itemic_tokenizer(
        open_embeddings(str(emb)),
        root / "itemic",
        layers=2,
        codebook_size=4,
        iters=3,
        dedup="none",
        show_progress=False,
    )
    s["itemic"] = str(root / "itemic")
    arch = get_preset("qwen3-tiny").replace(num_layers=1)
    init_hf_model(qwen3_tokenizer_dir, str(root / "base"), arch)
    s["base"] = str(root / "base")
    proc = run_cli(
        ["data", "build", "--source", "synthetic", "--num-users", "20", "--num-items", "60", "--out", "build"],
        cwd=str(root),
    )
    assert proc.returncode == 0, proc.stderr
    s["build"] = str(root / "build")
    return s


# --- helpers that put inputs into a case's directory ----------------------------------------------------------


def copy(tmp, key: str, name: str | None = None) -> str:
    """Copy shared input `key` (file or directory) into `tmp`; returns its name there."""
    src = SHARED[key]
    name = name or os.path.basename(src)
    (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(tmp, name))
    return name


def text_ds(tmp, *, bin_bytes=None, idx_bytes=None, summary=True, mask_bin_bytes=None, which="ds") -> str:
    """The shared text (or chat) dataset in `tmp/<which>`, optionally truncated; returns its dataset prefix."""
    d = copy(tmp, which)
    stem = "text" if which == "ds" else "chat"
    prefix = os.path.join(d, f"{stem}_text_document")
    for path, size in (
        (prefix + ".bin", bin_bytes),
        (prefix + ".idx", idx_bytes),
        (os.path.join(d, f"{stem}_loss_mask_document.bin"), mask_bin_bytes),
    ):
        if size is not None:
            os.truncate(os.path.join(tmp, path), size)
    if not summary:
        os.unlink(os.path.join(tmp, d, f"{stem}.preprocess.json"))
    return prefix


def write(tmp, name: str, text: str) -> str:
    with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
        f.write(text)
    return name


def rows(tmp, name: str, records: list) -> str:
    return write(tmp, name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


def freeze(tmp, name: str) -> str:
    """A directory this process cannot write in, for real: chmod for a normal user, the immutable attribute for
    root (whom permission bits do not stop); skips when neither works here."""
    path = os.path.join(tmp, name)
    os.makedirs(path)
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
    elif shutil.which("chattr") is None or subprocess.run(["chattr", "+i", path], capture_output=True).returncode:
        pytest.skip("cannot make a read-only directory here (root without chattr +i)")
    FROZEN.append(path)
    if os.access(path, os.W_OK):
        pytest.skip("the directory is still writable")
    return name


def thaw() -> None:
    while FROZEN:
        path = FROZEN.pop()
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", path], capture_output=True)
        os.chmod(path, 0o755)


def pretrain(data_path: str, tokenizer: str, *extra: str) -> list[str]:
    return [
        "pretrain",
        "--config",
        TINY,
        f"data.data_path={data_path}",
        f"data.tokenizer={tokenizer}",
        "model.vocab_size=151936",
        "train.steps=2",
        "train.seq_length=32",
        "train.micro_batch_size=1",
        "train.global_batch_size=2",
        "train.eval_interval=0",
        "checkpoint.save_interval=0",
        "logging.progress=false",
        "logging.wandb_mode=disabled",
        "logging.run_dir=run",
        *extra,
    ]


def preprocess(inp: str, tok: str, prefix: str = "out", *extra: str) -> list[str]:
    return ["preprocess", "--input", inp, "--tokenizer", tok, "--output-prefix", prefix, *extra]


ITEMIC_SEGMENTS = {"segments": [{"type": "text", "text": "liked <|sid_begin|><s_a_7><s_b_1><s_c_2><|sid_end|>"}]}
BEYOND_CODEBOOK = {
    "messages": [
        {"role": "user", "content": "Next item?"},
        {"role": "assistant", "content": "<|sid_begin|><s_a_3><s_b_16><s_c_2><|sid_end|>"},
    ]
}


def _earlier_output_then(tmp, records) -> list[str]:
    """An earlier preprocess output under prefix `out` (must survive untouched), then a bad run into it."""
    for name in ("text_text_document.bin", "text_text_document.idx", "text.preprocess.json"):
        shutil.copy(os.path.join(SHARED["ds"], name), os.path.join(tmp, name.replace("text", "out", 1)))
    return preprocess(rows(tmp, "it.jsonl", records), SHARED["tok"], "out", "--kind", "segments")


# --- the matrix ------------------------------------------------------------------------------------------------

CASES = [
    # 1. unwritable outputs, refused before any work
    Case(
        "preprocess-prefix-below-a-file",
        lambda t: preprocess(
            rows(t, "t.jsonl", [{"text": "hi"}]), SHARED["tok"], os.path.join(write(t, "afile", "x"), "sub", "out")
        ),
        ("--output-prefix afile/sub/out", "afile is a file, not a directory"),
    ),
    Case(
        "preprocess-prefix-in-read-only-dir",
        lambda t: preprocess(rows(t, "t.jsonl", [{"text": "hi"}]), SHARED["tok"], os.path.join(freeze(t, "ro"), "out")),
        ("--output-prefix ro/out", "cannot write in", "/ro"),
    ),
    Case(
        "data-build-out-in-read-only-dir",
        lambda t: ["data", "build", "--source", "synthetic", "--out", os.path.join(freeze(t, "ro"), "build")],
        ("--out ro/build", "cannot write in"),
    ),
    Case(
        "init-model-out-below-a-file",
        lambda t: ["init-model", "--tokenizer", SHARED["tok"], "--out", os.path.join(write(t, "afile", "x"), "m")],
        ("--out afile/m", "afile is a file, not a directory"),
    ),
    # 2. truncated or corrupt indexed datasets, found before Megatron loads them
    Case(
        "inspect-truncated-bin-without-summary",
        lambda t: ["data", "inspect", text_ds(t, bin_bytes=1000, summary=False)],
        ("ds/text_text_document.bin", "1000 bytes", "truncated"),
    ),
    Case(
        "inspect-truncated-idx",
        lambda t: ["data", "inspect", text_ds(t, idx_bytes=1500)],
        ("ds/text_text_document.idx", "1500 bytes", "truncated"),
    ),
    Case(
        "inspect-missing-prefix",
        lambda t: ["data", "inspect", "nowhere/x"],
        ("nowhere/x", "no indexed dataset"),
    ),
    Case(
        "pretrain-truncated-bin",
        lambda t: pretrain(text_ds(t, bin_bytes=1000), SHARED["tok"]),
        ("data.data_path", "ds/text_text_document.bin", "truncated"),
    ),
    Case(
        "pretrain-truncated-idx",
        lambda t: pretrain(text_ds(t, idx_bytes=40), SHARED["tok"]),
        ("data.data_path", "ds/text_text_document.idx", "truncated"),
    ),
    Case(
        "pretrain-truncated-loss-mask",
        lambda t: pretrain(text_ds(t, which="chat", mask_bin_bytes=100), SHARED["tok"], "data.loss_mask=true"),
        ("data.loss_mask", "chat/chat_loss_mask_document.bin", "truncated"),
    ),
    # 3. itemic tokenizer directory without centroids.npy
    Case(
        "itemic-encode-without-centroids",
        lambda t: [
            "itemic", "encode", "--tokenizer", _no_centroids(t), "--embeddings", SHARED["emb"], "--out", "codes.csv"
        ],
        ("itemic/centroids.npy", "not found"),
    ),
    Case(
        "expand-vocab-without-centroids",
        lambda t: ["expand-vocab", "--hf-dir", SHARED["base"], "--itemic-tokenizer", _no_centroids(t), "--out", "x"],
        ("itemic/centroids.npy", "not found"),
    ),
    # 4. init-model with a tokenizer that does not exist
    Case(
        "init-model-missing-tokenizer",
        lambda t: ["init-model", "--tokenizer", "/nonexistent", "--out", "m"],
        ("--tokenizer /nonexistent", "not found"),
    ),
    # 5. itemic text the tokenizer would split into ordinary pieces
    Case(
        "preprocess-itemic-text-plain-tokenizer",
        lambda t: _earlier_output_then(t, [{"segments": [{"type": "text", "text": "plain"}]}, ITEMIC_SEGMENTS]),
        ("it.jsonl: row 2", "segments[0].text", "<|sid_begin|>", "no itemic tokens", "--allow-unknown-itemic-tokens"),
    ),
    Case(
        "preprocess-code-beyond-codebook",
        lambda t: preprocess(rows(t, "chat.jsonl", [BEYOND_CODEBOOK]), SHARED["itok"]),
        ("chat.jsonl: row 1", "messages[1].content", "<s_b_16>", "codebook size 16"),
    ),
    # 6. pretrain with another tokenizer than preprocess used
    Case(
        "pretrain-tokenizer-of-another-size",
        lambda t: pretrain(text_ds(t), SHARED["itok"]),
        ("data.tokenizer=", "ds/text_text_document", "151669 entries", "151719"),
    ),
    Case(
        "pretrain-tokenizer-same-size-other-ids",
        lambda t: pretrain(text_ds(t), SHARED["swapped_tok"]),
        ("data.tokenizer=", "swapped_tok", "other tokens"),
    ),
    # 7. init-model architectures no checkpoint can have
    Case(
        "init-model-heads-not-multiple-of-kv-groups",
        lambda t: [
            "init-model", "--tokenizer", SHARED["tok"], "--out", "m", "--num-attention-heads", "3",
            "--num-query-groups", "2",
        ],
        ("num_attention_heads=3", "num_query_groups=2"),
    ),
    Case(
        "init-model-hidden-size-zero",
        lambda t: ["init-model", "--tokenizer", SHARED["tok"], "--out", "m", "--hidden-size", "0"],
        ("hidden_size=0",),
    ),
    # 8. data build
    Case(
        "data-build-zero-users",
        lambda t: ["data", "build", "--source", "synthetic", "--num-users", "0", "--out", "b"],
        ("--num-users", "0"),
    ),
    Case(
        "data-build-codes-for-few-items",
        lambda t: [
            "data", "build", "--source", "synthetic", "--num-users", "20", "--num-items", "60",
            "--codes", _few_codes(t), "--out", "b",
        ],
        ("--codes codes4.csv", "56 of 60 items", "interactions", "--on-error drop"),
    ),
    Case(
        "data-build-into-an-earlier-build",
        lambda t: ["data", "build", "--source", "synthetic", "--split", "loo", "--out", copy(t, "build")],
        ("--out build", "not empty", "--force"),
    ),
    # 9. a dataset without documents
    Case(
        "preprocess-text-empty-file",
        lambda t: preprocess(write(t, "empty.jsonl", ""), SHARED["tok"], "out", "--kind", "text"),
        ("empty.jsonl", "empty file"),
    ),
    Case(
        "preprocess-blank-lines-only",
        lambda t: preprocess(write(t, "blank.jsonl", "\n\n\n"), SHARED["tok"], "out", "--kind", "text"),
        ("blank.jsonl", "no documents", "3 rows are blank"),
    ),
    Case(
        "preprocess-every-row-rejected",
        lambda t: preprocess(
            rows(t, "t.jsonl", [{"text": ""}, {"text": 3}]), SHARED["tok"], "out", "--on-error", "skip"
        ),
        ("t.jsonl", "no documents", "all 2 rows were rejected"),
    ),
    # 10. messages that say what is wrong
    Case(
        "preprocess-json-control-character",
        lambda t: preprocess(rows(t, "t.jsonl", [{"text": "ok"}, '{"text": "a\tb"}']), SHARED["tok"]),
        ("t.jsonl: row 2", "Invalid control character at: line 1 column 12"),
    ),
    Case(
        "preprocess-empty-jsonl-without-kind",
        lambda t: preprocess(write(t, "empty.jsonl", ""), SHARED["tok"]),
        ("empty.jsonl", "empty file"),
    ),
    Case(
        "itemic-encode-embeddings-not-npy",
        lambda t: [
            "itemic", "encode", "--tokenizer", SHARED["itemic"], "--embeddings", write(t, "emb.npy", "id,x\n1,2\n"),
            "--out", "codes.csv",
        ],
        ("emb.npy", "not a .npy file"),
    ),
]  # fmt: skip


def _no_centroids(tmp) -> str:
    name = copy(tmp, "itemic")
    os.unlink(os.path.join(tmp, name, "centroids.npy"))
    return name


def _few_codes(tmp) -> str:
    with open(os.path.join(SHARED["build"], "codes.csv"), encoding="utf-8") as f:
        return write(tmp, "codes4.csv", "".join(f.readlines()[:5]))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_data_input(case, shared, tmp_path):
    tmp = str(tmp_path / "case")
    os.makedirs(tmp)
    try:
        argv = case.argv(tmp)
        before = snapshot(tmp)
        proc = run_cli(argv, cwd=tmp, env=case.env, timeout=180)
        after = snapshot(tmp)
    finally:
        thaw()
    line = one_error_line(proc, argv[0])
    for needle in case.needles:
        assert needle in line, f"{needle!r} not in: {line}"
    assert "Traceback" not in proc.stderr
    assert changed(before, after, case.outputs) == []


def test_rebuild_with_force_leaves_no_stale_file(shared, tmp_path):
    """`data build` replaces an earlier build as a whole: a file only the earlier build wrote (a leave-one-out
    split's sft/valid.jsonl) does not survive a rebuild with another split."""
    base = ["data", "build", "--source", "synthetic", "--num-users", "20", "--num-items", "60", "--out", "b"]
    assert run_cli([*base, "--split", "loo"], cwd=str(tmp_path)).returncode == 0
    assert os.path.isfile(tmp_path / "b" / "sft" / "valid.jsonl")
    proc = run_cli([*base, "--split", "user", "--force"], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert sorted(snapshot(str(tmp_path / "b"))) == sorted(snapshot(SHARED["build"]))  # exactly a fresh build's files


def test_allow_unknown_itemic_tokens_opts_in(shared, tmp_path):
    """The flag tokenises unknown itemic strings as ordinary text (what preprocess did silently before)."""
    src = write_jsonl(str(tmp_path / "it.jsonl"), [ITEMIC_SEGMENTS])
    proc = run_cli(preprocess(src, SHARED["tok"], "out", "--allow-unknown-itemic-tokens"), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    summary = json.load(open(tmp_path / "out.preprocess.json"))
    assert summary["documents"] == 1 and summary["tokens"] > 20  # split into many ordinary pieces
    assert "--allow-unknown-itemic-tokens" in run_cli(["preprocess", "--help"]).stdout


def test_older_summary_without_fingerprint(shared, tmp_path):
    """A `P.preprocess.json` written before fingerprints were recorded: its vocab_size is still compared, and a
    matching one passes silently."""
    from megarec.common.errors import ConfigError
    from megarec.pretrain.data import check_tokenizer

    meta = json.load(open(os.path.join(SHARED["ds"], "text.preprocess.json")))
    assert meta["tokenizer_fingerprint"]["vocab_size"] == meta["vocab_size"]
    old = {k: v for k, v in meta.items() if k != "tokenizer_fingerprint"}
    check_tokenizer("p", old, SHARED["tok"], {})
    check_tokenizer("p", old, SHARED["swapped_tok"], {})  # same size: an old summary cannot tell
    with pytest.raises(ConfigError, match="151669 entries, data.tokenizer has 151719"):
        check_tokenizer("p", old, SHARED["itok"], {})
    check_tokenizer("p", {}, SHARED["itok"], {})  # datasets from elsewhere: nothing recorded, nothing checked
