"""Packed chat data in `megarec pretrain` (data.packed=true): per-document masks and positions, the model-level
equivalence of a packed sequence with its documents run alone, and engine runs at TP=1 / TP=2; plus the
unpacked loss-masked engine path (data.loss_mask=true)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli
from data_helpers import random_chats, write_jsonl

SEQ = 128  # --seq-length of the packs and train.seq_length of the engine runs
ITERS = 3
GBS = 4  # train.global_batch_size of the engine runs (2 micro-batches of 2)
ENGINE_TIMEOUT = 240  # a hung checkpoint write or gloo barrier must fail the test, not stall the suite


@pytest.fixture(scope="module")
def chat_data(qwen3_tokenizer_dir, tmp_path_factory):
    """Two chat corpora through the real `megarec preprocess` path, packed (--pack --seq-length SEQ) and not."""
    from transformers import AutoTokenizer

    from megarec.data.preprocess import PreprocessOptions, run_preprocess

    root = tmp_path_factory.mktemp("packed_chats")
    out = {"tokenizer": qwen3_tokenizer_dir, "vocab": len(AutoTokenizer.from_pretrained(qwen3_tokenizer_dir))}
    for name, n, seed in (("a", 30, 0), ("b", 20, 1)):
        src = write_jsonl(str(root / f"{name}.jsonl"), random_chats(n, seed, max_words=6))
        run_preprocess(
            PreprocessOptions(
                [src], qwen3_tokenizer_dir, str(root / f"{name}_packed"), kind="messages", pack=True, seq_length=SEQ
            )
        )
        run_preprocess(PreprocessOptions([src], qwen3_tokenizer_dir, str(root / name), kind="messages"))
        out[name + "_packed"] = str(root / f"{name}_packed_text_document")
        out[name] = str(root / f"{name}_text_document")
    return out


@pytest.fixture
def process_group():
    """Megatron's BlendedDataset caches its indices only under torch.distributed: a 1-process gloo group."""
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    if created:
        dist.destroy_process_group()


# --- (1) masks and positions of one packed sample ---------------------------------------------------------------


def test_packed_sample_block_diagonal_mask_and_restarted_positions():
    from megarec.data.megatron_datasets import packed_sample

    # two documents (3 and 2 tokens) and 2 padding positions; per-token chat masks (1 = assistant token)
    docs = [np.array([10, 11, 12]), np.array([20, 21])]
    masks = [np.array([0, 1, 0], np.uint8), np.array([0, 1], np.uint8)]
    s = packed_sample(docs, masks, 7)
    allowed = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [0, 0, 0, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 1, 0],  # padding attends only to padding (never a fully
            [0, 0, 0, 0, 0, 1, 1],
        ],  # masked row, which would give NaN in softmax)
        dtype=torch.bool,
    )
    assert s["attention_mask"].dtype == torch.bool and s["attention_mask"].shape == (1, 7, 7)
    assert torch.equal(s["attention_mask"][0], ~allowed)  # True = masked (Megatron)
    assert s["position_ids"].tolist() == [0, 1, 2, 0, 1, 0, 1]
    assert s["tokens"].tolist() == [10, 11, 12, 20, 21, 0, 0]
    assert s["labels"].tolist() == [11, 12, 20, 21, 0, 0, 0]
    # loss on label i+1 only inside a document and where the label is an assistant token:
    # 10→11 (assistant) yes; 11→12 (mask 0) no; 12→20 crosses documents; 20→21 yes; 21→pad and padding no
    assert s["loss_mask"].tolist() == [1, 0, 0, 1, 0, 0, 0]
    # without chat masks every in-document target trains; with eod_mask_loss the EOD label does not
    assert packed_sample(docs, None, 7)["loss_mask"].tolist() == [1, 1, 0, 1, 0, 0, 0]
    assert packed_sample(docs, None, 7, eod_id=12)["loss_mask"].tolist() == [1, 0, 0, 1, 0, 0, 0]


def _pack_lengths(blended, i):
    """(dataset id, sequence lengths of the pack) behind sample i of a BlendedDataset of packed datasets."""
    d, k = int(blended.dataset_index[i]), int(blended.dataset_sample_index[i])
    ds = blended.datasets[d]
    pack = ds._pack_id(k)
    first, last = int(ds.document_starts[pack]), int(ds.document_starts[pack + 1])
    return d, ds, first, last


def test_engine_packed_dataset_blend(chat_data, tmp_path, process_group):
    """What the engine builds for data.packed=true on a weighted blend: one pack per sample, positions restart
    per document, block-diagonal causal mask, loss only on in-document assistant targets."""
    from tokenizers import Tokenizer

    from megarec.pretrain.config import DataConfig, TrainConfig
    from megarec.pretrain.data import build_datasets

    data = DataConfig(
        data_path=[f"0.7 {chat_data['a_packed']} 0.3 {chat_data['b_packed']}"],
        split="1,0,0",
        tokenizer=chat_data["tokenizer"],
        packed=True,
        loss_mask=True,
        num_workers=0,
    )
    train = TrainConfig(steps=10, micro_batch_size=2, global_batch_size=4, seq_length=SEQ, eval_interval=0)
    ds = build_datasets(data, train, chat_data["vocab"], str(tmp_path)).train
    tok = Tokenizer.from_file(os.path.join(chat_data["tokenizer"], "tokenizer.json"))
    n = train.steps * train.global_batch_size
    assert type(ds).__name__ == "BlendedDataset" and len(ds) >= n
    assert 0.55 < np.mean(np.asarray(ds.dataset_index[:n]) == 0) < 0.85  # the 0.7 / 0.3 weights
    multi_doc = 0
    for i in range(n):
        s = ds[i]
        d, inner, first, last = _pack_lengths(ds, i)
        lens = inner.dataset.sequence_lengths[first:last].astype(int)
        tokens = np.concatenate([inner.dataset[k] for k in range(first, last)])
        chat = np.concatenate([inner.loss_mask_dataset[k] for k in range(first, last)])
        m = tokens.size
        seg = np.repeat(np.arange(lens.size), lens)
        assert s["tokens"][:m].tolist() == tokens.tolist() and not s["tokens"][m:].any()
        assert s["position_ids"][:m].tolist() == np.concatenate([np.arange(x) for x in lens]).tolist()
        expected = (seg[:, None] == seg[None, :]) & np.tri(m, dtype=bool)
        assert np.array_equal(s["attention_mask"][0, :m, :m].numpy(), ~expected)
        assert s["attention_mask"][0, m:, :m].all()  # padding never sees documents
        want = np.zeros(SEQ, np.float32)
        want[: m - 1] = chat[1:] * (seg[:-1] == seg[1:])
        assert np.array_equal(s["loss_mask"].numpy(), want)
        trained = tok.decode(s["labels"][s["loss_mask"].bool()].tolist(), skip_special_tokens=False)
        assert "answer" in trained and "question" not in trained and "You recommend" not in trained
        multi_doc += lens.size > 1
    assert multi_doc > n // 2  # the samples really are packs of several documents


def test_packed_loss_mask_choices(chat_data):
    """data.loss_mask=false trains every in-document target of a chat pack; eod_mask_loss drops EOD labels;
    the default uses the chat mask, which is a subset of both."""
    from megarec.data.megatron_datasets import build_packed_dataset

    eod = json.load(open(chat_data["a_packed"][: -len("_text_document")] + ".preprocess.json"))["eod_id"]
    chat = build_packed_dataset(chat_data["a_packed"], SEQ)
    every = build_packed_dataset(chat_data["a_packed"], SEQ, loss_mask=False)
    no_eod = build_packed_dataset(chat_data["a_packed"], SEQ, loss_mask=False, eod_mask_loss=True)
    assert every.loss_mask_dataset is None and chat.loss_mask_dataset is not None
    for i in range(len(chat)):
        c, e, n = chat[i], every[i], no_eod[i]
        pack = chat._pack_id(i)
        docs = int(chat.document_starts[pack + 1] - chat.document_starts[pack])
        assert torch.equal(c["tokens"], e["tokens"]) and torch.equal(c["attention_mask"], e["attention_mask"])
        assert torch.equal(e["loss_mask"] * c["loss_mask"], c["loss_mask"])  # chat mask ⊂ in-document targets
        assert e["loss_mask"].sum() > c["loss_mask"].sum()
        assert (c["loss_mask"] * (c["labels"] == eod)).sum() == 0  # EOD is no assistant token
        assert (e["loss_mask"] * (e["labels"] == eod)).sum() == docs  # each document ends in EOD
        assert torch.equal(n["loss_mask"], e["loss_mask"] * (e["labels"] != eod))


# --- (2) model-level equivalence ----------------------------------------------------------------------------------

EQUIVALENCE = textwrap.dedent("""
    import json, torch
    from megarec.data.megatron_datasets import packed_sample
    from megarec.models.qwen3 import builder as qwen3
    from megarec.models.config import ModelConfig
    from megarec.runtime.config import ParallelConfig
    from megarec.runtime.megatron_parallel import init_megatron
    init_megatron(ParallelConfig(), seed=0)
    arch = qwen3.resolve_arch(ModelConfig(preset="qwen3-tiny"))
    tcfg = qwen3.build_transformer_config(arch, ModelConfig(), ParallelConfig(), "local")
    S, V = 32, arch.vocab_size
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, V, (n,), generator=g).numpy() for n in (11, 7, 9)]   # 27 tokens + 5 padding
    out = {}
    for attn in ("sdpa", "unfused"):
        torch.manual_seed(0)
        model = qwen3.build_model_chunks(arch, tcfg, "local", V, S, attn)[0].eval()
        # batch of two packs: the documents in two different orders
        packs = [packed_sample(docs, None, S), packed_sample([docs[2], docs[0]], None, S)]
        b = {k: torch.stack([p[k] for p in packs]) for k in packs[0]}
        with torch.no_grad():
            packed = model(b["tokens"], b["position_ids"], b["attention_mask"], labels=b["labels"])
            plain_mask = torch.triu(torch.ones(1, 1, S, S, dtype=torch.bool), 1)
            plain = model(b["tokens"], torch.arange(S).expand(2, S), plain_mask, labels=b["labels"])
            diffs, control, n_loss = [], [], 0
            for row, order in ((0, (0, 1, 2)), (1, (2, 0))):
                start = 0
                for j in order:
                    d = torch.from_numpy(docs[j])[None]
                    L = d.shape[1]
                    causal = torch.triu(torch.ones(1, 1, L, L, dtype=torch.bool), 1)
                    alone = model(d, torch.arange(L)[None], causal, labels=torch.roll(d, -1, 1))[0, : L - 1]
                    sl = slice(start, start + L - 1)       # targets inside the document
                    assert b["loss_mask"][row, sl].all() and b["loss_mask"][row, start + L - 1] == 0
                    n_loss += L - 1
                    diffs.append((packed[row, sl] - alone).abs().max().item())
                    if start:
                        control.append((plain[row, sl] - alone).abs().max().item())
                    start += L
            masked = (packed * b["loss_mask"]).sum().item()
        out[attn] = {"max_diff": max(diffs), "control": min(control), "loss_tokens": int(b["loss_mask"].sum()),
                     "expected_tokens": n_loss, "masked_sum_is_finite": masked == masked}
    print(json.dumps(out))
""")


def test_packed_losses_equal_documents_alone():
    """Per-token losses of a packed sequence of three documents under the block-diagonal mask equal the losses
    of each document run alone, for both local core attentions (SDPA and Megatron's unfused).

    Tolerance 1e-5: fp32 with identical weights; the only differences are summation order inside the attention
    and matmul kernels (other sequence length, masked-out keys contribute exact zeros) and RoPE angles:
    Megatron-Core computes rotary angles from the index in the pack, not from position_ids, so a document at
    offset p is rotated by (p + i)θ instead of iθ — identical attention scores in exact arithmetic (RoPE depends
    only on i - j inside the document) and ~p·θ·2^-24 rounding in fp32, i.e. ~1e-6 here. The control (same pack
    with one plain causal mask) differs by far more, so the mask is what makes the losses match."""
    proc = subprocess.run(
        [sys.executable, "-c", EQUIVALENCE],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for attn, r in result.items():
        assert r["max_diff"] < 1e-5, (attn, r)
        assert r["control"] > 1e-3, (attn, r)
        assert r["loss_tokens"] == r["expected_tokens"] and r["masked_sum_is_finite"], (attn, r)


# --- (3) the engine ---------------------------------------------------------------------------------------------

PACKED_RECIPE = "configs/pretrain/packed_chat_tiny_cpu.yaml"  # data.packed=true, data.loss_mask=true
TINY_RECIPE = "configs/pretrain/tiny_cpu.yaml"


def _engine_args(chat_data, run_dir, *extra, recipe=PACKED_RECIPE):
    return [
        "pretrain",
        "--config",
        recipe,
        "model.preset=qwen3-tiny-tied",
        f"model.vocab_size={chat_data['vocab']}",
        f"train.steps={ITERS}",
        f"train.seq_length={SEQ}",
        "train.micro_batch_size=2",
        f"train.global_batch_size={GBS}",
        "train.eval_interval=0",
        "checkpoint.save_interval=0",
        "logging.progress=false",
        "logging.wandb_mode=disabled",
        f"data.tokenizer={chat_data['tokenizer']}",
        f"logging.run_dir={run_dir}",
        *extra,
    ]


def _records(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if '"loss"' in line]


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _expected_loss_tokens(engine_args: list[str], chat_data, tmp_path) -> list[int]:
    """Loss tokens per step of the engine's data stream, rebuilt in-process from the same recipe and overrides."""
    from megarec.common.config import load_config
    from megarec.pretrain.config import PretrainConfig
    from megarec.pretrain.data import build_datasets

    assert engine_args[:2] == ["pretrain", "--config"]
    cfg = load_config(PretrainConfig, os.path.join(REPO, engine_args[2]), engine_args[3:])
    assert cfg.data.loss_mask
    ds = build_datasets(cfg.data, cfg.train, chat_data["vocab"], str(tmp_path / "expected")).train
    g = cfg.train.global_batch_size
    return [int(sum(ds[i]["loss_mask"].sum() for i in range(k * g, (k + 1) * g))) for k in range(ITERS)]


PACKED_BLEND = "[0.7, {a}, 0.3, {b}]"

FIRST_STEP = textwrap.dedent("""
    # The engine's first-step loss, recomputed outside the engine: same recipe, same seeded initialisation,
    # same data; once with the batch's per-document masks and once with one plain causal mask.
    import json, sys, torch
    from megarec.common.config import load_config
    from megarec.models.qwen3 import builder as qwen3
    from megarec.pretrain.config import PretrainConfig
    from megarec.pretrain.data import build_datasets
    from megarec.runtime.megatron_parallel import init_megatron
    from megarec.pretrain.trainer import _padded_vocab, validate
    recipe, overrides, cache = json.loads(sys.argv[1])
    cfg = load_config(PretrainConfig, recipe, overrides)
    arch, impl = validate(cfg, 1)
    init_megatron(cfg.parallel, cfg.train.seed)
    tcfg = qwen3.build_transformer_config(arch, cfg.model, cfg.parallel, impl)
    model = qwen3.build_model_chunks(arch, tcfg, impl, _padded_vocab(cfg, arch.vocab_size, None),
                                     cfg.train.seq_length, cfg.model.local_attention)[0].eval()
    ds = build_datasets(cfg.data, cfg.train, arch.vocab_size, cache).train
    keys = ("tokens", "labels", "loss_mask", "position_ids", "attention_mask")
    b = {k: torch.stack([ds[i][k] for i in range(cfg.train.global_batch_size)]) for k in keys}
    out = {}
    with torch.no_grad():
        for name, mask in (("packed", b["attention_mask"]), ("causal", None)):
            losses = model(b["tokens"], b["position_ids"], mask, labels=b["labels"])
            out[name] = float((losses * b["loss_mask"]).sum() / b["loss_mask"].sum())
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def packed_tp1(chat_data, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("packed_tp1"))
    blend = PACKED_BLEND.format(a=chat_data["a_packed"], b=chat_data["b_packed"])
    args = _engine_args(chat_data, run_dir, f"data.data_path={blend}")
    _ok(run_cli(args, timeout=ENGINE_TIMEOUT))
    return {"run_dir": run_dir, "blend": blend, "args": args}


@pytest.mark.slow
@pytest.mark.timeout(2 * ENGINE_TIMEOUT)
def test_packed_pretrain_tp1(chat_data, packed_tp1, tmp_path, process_group):
    records = _records(packed_tp1["run_dir"])
    assert [r["step"] for r in records] == list(range(1, ITERS + 1))
    assert all(np.isfinite([r["loss"] for r in records] + [r["grad_norm"] for r in records]))
    # the engine trained exactly the in-document assistant targets of the packs it read
    expected = _expected_loss_tokens(packed_tp1["args"], chat_data, tmp_path)
    assert [r["loss_tokens"] for r in records] == expected
    assert all(0 < n < GBS * SEQ // 2 for n in expected)
    # ... and its first loss is the model's loss under the per-document masks (the batch's masks reach the
    # model), clearly not the loss of the same packs under a plain causal mask
    args = packed_tp1["args"]
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_STEP, json.dumps([args[2], args[3:], str(tmp_path / "c")])],
        capture_output=True,
        text=True,
        timeout=ENGINE_TIMEOUT,
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(records[0]["loss"] - first["packed"]) < 1e-5, (records[0], first)
    assert abs(first["causal"] - first["packed"]) > 1e-3, first


@pytest.mark.slow
@pytest.mark.timeout(2 * ENGINE_TIMEOUT)
def test_packed_pretrain_tp2_matches_tp1(chat_data, packed_tp1, tmp_path):
    """TP=2 (2 processes, gloo) reproduces the TP=1 curve. Both runs start from the same weights without a
    checkpoint: CPU initialisation draws the full matrices from the seed and splits them, and halving
    make_vocab_size_divisible_by at TP=2 keeps the padded vocabulary (a multiple of 128) identical."""
    run_dir = str(tmp_path / "tp2")
    _ok(
        run_cli(
            _engine_args(
                chat_data,
                run_dir,
                f"data.data_path={packed_tp1['blend']}",
                "parallel.tensor_model_parallel_size=2",
                "model.make_vocab_size_divisible_by=64",
            ),
            nproc=2,
            timeout=ENGINE_TIMEOUT,
        )
    )
    tp1, tp2 = _records(packed_tp1["run_dir"]), _records(run_dir)
    assert [r["loss_tokens"] for r in tp2] == [r["loss_tokens"] for r in tp1]
    np.testing.assert_allclose([r["loss"] for r in tp2], [r["loss"] for r in tp1], rtol=0, atol=1e-5)
    assert all(np.isfinite([r["loss"] for r in tp2]))


@pytest.mark.slow
@pytest.mark.timeout(2 * ENGINE_TIMEOUT)
def test_loss_masked_unpacked_pretrain(chat_data, tmp_path, process_group):
    """data.loss_mask=true on unpacked chat data (LossMaskedGPTDataset): loss only on assistant targets."""
    run_dir = str(tmp_path / "run")
    blend = f"[0.5, {chat_data['a']}, 0.5, {chat_data['b']}]"
    args = _engine_args(chat_data, run_dir, "data.loss_mask=true", f"data.data_path={blend}", recipe=TINY_RECIPE)
    _ok(run_cli(args, timeout=ENGINE_TIMEOUT))
    records = _records(run_dir)
    assert len(records) == ITERS and all(np.isfinite([r["loss"] for r in records]))
    expected = _expected_loss_tokens(args, chat_data, tmp_path)
    assert [r["loss_tokens"] for r in records] == expected
    assert all(0 < n < GBS * SEQ // 2 for n in expected)  # under half of all GBS × SEQ targets


# --- configuration checks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "which,overrides,message",
    [
        ("a", ["data.packed=true"], "was preprocessed without --pack"),
        ("a_packed", [], "train it with data.packed=true"),
        ("a_packed", ["data.packed=true", f"train.seq_length={SEQ // 2}"], f"packs of up to {SEQ} tokens"),
        ("a_packed", ["data.packed=true", "data.mock=true"], "data.packed need real .* not mock data"),
        # tiny_cpu's split 99,1,0 gives the valid split of a few dozen packs nothing: fail early, not hang
        ("a_packed", ["data.packed=true", "train.eval_interval=5"], "leaves the valid split of .* without a document"),
        ("a", ["data.loss_mask=true", "train.eval_interval=5"], "leaves the valid split of .* without a document"),
    ],
)
def test_packed_config_errors(chat_data, which, overrides, message):
    """Mismatches between data.packed and the `P.preprocess.json` metadata fail before any process starts."""
    from megarec.common.config import load_config
    from megarec.common.errors import ConfigError
    from megarec.pretrain.config import PretrainConfig
    from megarec.pretrain.trainer import validate

    cfg = load_config(
        PretrainConfig,
        os.path.join(REPO, TINY_RECIPE),
        [
            f"data.data_path={chat_data[which]}",
            f"data.tokenizer={chat_data['tokenizer']}",
            f"train.seq_length={SEQ}",
            *overrides,
        ],
    )
    with pytest.raises(ConfigError, match=message):
        validate(cfg, 1)


def test_packed_mismatch_is_one_cli_line(chat_data, tmp_path):
    proc = run_cli(
        [
            "pretrain",
            f"data.data_path={chat_data['a_packed']}",
            f"data.tokenizer={chat_data['tokenizer']}",
            f"logging.run_dir={tmp_path}",
        ],
        timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("megarec pretrain: error: ") and "data.packed=true" in lines[0]


@pytest.mark.parametrize("split", ["98,2,0", "99,1,0", "100,0,0", "1", "90,5,5", "0.7,0.2,0.1", "949,50,1", "0,1,0"])
def test_split_matrix_matches_megatron(split):
    """The engine's import-free split rule (used by the early checks) is Megatron-Core's, value for value."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    from megarec.pretrain.data import split_matrix

    assert split_matrix(split) == convert_split_vector_to_split_matrix(parse_and_normalize_split(split))


def test_transformer_engine_takes_packed_data_as_thd(chat_data, monkeypatch):
    """Under Transformer Engine packed data runs in the THD layout (TE ignores explicit masks, so unpacked
    per-document masks are refused); THD with CP > 1 is refused until packs are padded per document."""
    from megarec.common.config import load_config
    from megarec.common.errors import ConfigError
    from megarec.pretrain import trainer as pretrain
    from megarec.pretrain.config import PretrainConfig

    def cfg(*extra):
        return load_config(
            PretrainConfig,
            os.path.join(REPO, PACKED_RECIPE),
            [
                f"data.data_path={chat_data['a_packed']}",
                f"data.tokenizer={chat_data['tokenizer']}",
                f"train.seq_length={SEQ}",
                "train.eval_interval=0",
                *extra,
            ],
        )

    real_setup = pretrain.qwen3.setup
    monkeypatch.setattr(pretrain.qwen3, "setup", lambda m, p, w=None: (real_setup(m, p, w)[0], "transformer_engine"))
    packed = cfg()
    pretrain.validate(packed, 1)
    assert pretrain.uses_thd(packed, "transformer_engine") and not pretrain.uses_thd(packed, "local")
    with pytest.raises(ConfigError, match="context_parallel_size > 1 under Transformer Engine"):
        pretrain.validate(cfg("parallel.context_parallel_size=2"), 2)
    unpacked = load_config(
        PretrainConfig,
        os.path.join(REPO, TINY_RECIPE),
        [
            f"data.data_path={chat_data['a']}",
            f"data.tokenizer={chat_data['tokenizer']}",
            "data.reset_attention_mask=true",
            "train.eval_interval=0",
        ],
    )
    with pytest.raises(ConfigError, match="Transformer Engine ignores"):
        pretrain.validate(unpacked, 1)


def test_thd_layout_of_packs_is_the_block_diagonal_mask():
    """to_thd turns a micro-batch of packs into one token stream whose cu_seqlens start a segment wherever the
    position ids restart; the attention those segments define is exactly the explicit mask of the CPU path."""
    from megarec.data.megatron_datasets import packed_sample
    from megarec.pretrain.batch import make_batch_preparer

    S = 7
    packs = [
        packed_sample([np.array([5, 6, 7]), np.array([8, 9])], None, S),
        packed_sample([np.array([1, 2]), np.array([3, 4, 11])], None, S),
    ]
    batch = {k: torch.stack([p[k] for p in packs]) for k in packs[0]}
    thd = make_batch_preparer(torch.device("cpu"), explicit_causal_mask=False, thd=True)(dict(batch))
    params = thd["packed_seq_params"]
    assert params.qkv_format == "thd" and thd["attention_mask"] is None
    assert params.cu_seqlens_q.tolist() == [0, 3, 5, 7, 9, 12, 14] and params.cu_seqlens_q.dtype == torch.int32
    assert params.max_seqlen_q == params.max_seqlen_kv == 3
    assert thd["tokens"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 1, 2, 3, 4, 11, 0, 0]]
    assert thd["loss_mask"].shape == (1, 14) and thd["labels"].reshape(2, S).tolist() == batch["labels"].tolist()
    # Segments → block-diagonal causal mask of each pack, equal to the explicit mask (True = masked).
    segment = torch.repeat_interleave(torch.arange(6), params.cu_seqlens_q.diff().long())
    same = segment[:, None] == segment[None, :]
    mask = ~(same & torch.ones(14, 14, dtype=torch.bool).tril())
    for i in range(2):
        block = mask[i * S : (i + 1) * S, i * S : (i + 1) * S]
        assert torch.equal(block, batch["attention_mask"][i, 0])
    assert mask[S:, :S].all()  # nothing crosses from one pack to the next
    # Without a mask request (THD), the dataset builds no S×S mask at all.
    assert "attention_mask" not in packed_sample([np.array([1, 2])], None, S, attention_mask=False)
