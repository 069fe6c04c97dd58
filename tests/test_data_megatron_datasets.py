"""Training-side datasets: LossMaskedGPTDataset (a GPTDataset with the chat loss mask) directly and through
BlendedMegatronDatasetBuilder with a weighted blend; PackedSequenceDataset over --pack output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megarec.data.preprocess import PreprocessOptions, run_preprocess

from data_helpers import itemic_tokenizer, random_chats, write_jsonl


@pytest.fixture(scope="module")
def corpora(qwen3_tokenizer_dir, tmp_path_factory):
    tok = itemic_tokenizer(qwen3_tokenizer_dir, str(tmp_path_factory.getbasetemp() / "qwen3_itemic"))
    root = tmp_path_factory.mktemp("mds")
    prefixes = {}
    for name, seed in (("a", 0), ("b", 1)):
        src = write_jsonl(str(root / f"{name}.jsonl"), random_chats(80, seed, max_words=20))
        run_preprocess(PreprocessOptions([src], tok, str(root / name)))
        run_preprocess(PreprocessOptions([src], tok, str(root / f"{name}_packed"), pack=True, seq_length=256))
        prefixes[name] = str(root / f"{name}_text_document")
        prefixes[name + "_packed"] = str(root / f"{name}_packed_text_document")
    return {"tok": tok, "root": root, **prefixes}


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


def _tokenizer(corpora):
    from megarec.data.megatron_datasets import DatasetTokenizer

    return DatasetTokenizer.from_preprocess_summary(corpora["a"])


def _mask_prefix(p):
    return p.replace("_text_document", "_loss_mask_document")


def test_loss_masked_gpt_dataset_blend_matches_mask_dataset(corpora, tmp_path, process_group):
    """Same blend, once through LossMaskedGPTDataset and once through plain GPTDataset over the mask datasets:
    identical sampling, so loss_mask must equal the mask dataset's labels (mask shifted like the labels)."""
    from megatron.core.datasets.gpt_dataset import GPTDataset

    from megarec.data.megatron_datasets import LossMaskedGPTDataset, build_datasets

    tok = _tokenizer(corpora)
    sizes = [60, 0, 0]
    kw = dict(seq_length=64, tokenizer=tok, seed=5, cache_dir=str(tmp_path / "cache"))
    train, _, _ = build_datasets(LossMaskedGPTDataset, [corpora["a"], corpora["b"]], [0.7, 0.3], sizes, **kw)
    mask_train, _, _ = build_datasets(
        GPTDataset, [_mask_prefix(corpora["a"]), _mask_prefix(corpora["b"])], [0.7, 0.3], sizes, **kw
    )
    assert type(train).__name__ == "BlendedDataset" and len(train) >= 60
    counts = np.bincount(np.asarray(train.dataset_index[:60]), minlength=2)
    assert 0.55 < counts[0] / 60 < 0.85
    total = 0
    for i in range(60):
        s, m = train[i], mask_train[i]
        assert set(s) == {"tokens", "labels", "loss_mask", "position_ids", "attention_mask", "dataset_id"}
        assert s["attention_mask"].shape == (1, 64, 64) and s["loss_mask"].dtype == torch.float32
        assert torch.equal(s["loss_mask"], m["labels"].float())
        total += int(s["loss_mask"].sum())
    assert total > 0


def test_loss_masked_gpt_dataset_direct(corpora, tmp_path):
    """Trained labels are assistant text and <|im_end|>; never the header, system or user text."""
    from tokenizers import Tokenizer

    from megarec.data.megatron_datasets import LossMaskedGPTDataset, build_datasets

    tok = Tokenizer.from_file(f"{corpora['tok']}/tokenizer.json")
    ds, _, _ = build_datasets(
        LossMaskedGPTDataset,
        [corpora["a"]],
        None,
        [20, None, None],
        seq_length=96,
        tokenizer=_tokenizer(corpora),
        cache_dir=str(tmp_path / "c"),
        create_attention_mask=False,
    )
    assert "attention_mask" not in ds[0]
    for i in range(20):
        s = ds[i]
        trained = tok.decode(s["labels"][s["loss_mask"].bool()].tolist(), skip_special_tokens=False)
        assert "question" not in trained and "system" not in trained and "You recommend" not in trained
        assert "<|im_start|>" not in trained
    s = ds[0]
    on = s["labels"][s["loss_mask"].bool()].tolist()
    assert tok.token_to_id("<|im_end|>") in on
    assert torch.equal(ds[None]["loss_mask"], torch.zeros(96))


def test_loss_masked_padding_is_zero(corpora, tmp_path):
    from megarec.data.megatron_datasets import LossMaskedGPTDataset, build_datasets

    _, valid, _ = build_datasets(
        LossMaskedGPTDataset,
        [corpora["a"]],
        None,
        [None, None, None],
        seq_length=512,
        tokenizer=_tokenizer(corpora),
        cache_dir=str(tmp_path / "c"),
        split="0,1,0",
        drop_last_partial_validation_sequence=False,
    )
    padded = int(np.flatnonzero(np.asarray(valid.shuffle_index) == len(valid) - 1)[0])  # the partial sample
    last = valid[padded]
    n_real = int(valid.dataset.sequence_lengths.sum()) - (len(valid) - 1) * 512
    assert 0 < n_real < 512
    assert last["loss_mask"][n_real - 1 :].sum() == 0 and last["loss_mask"][: n_real - 1].sum() > 0


def test_packed_dataset(corpora):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megarec.data.megatron_datasets import build_packed_dataset

    ds = build_packed_dataset(corpora["a_packed"], 256)
    raw = IndexedDataset(corpora["a_packed"])
    mask_raw = IndexedDataset(_mask_prefix(corpora["a_packed"]))
    seen = 0
    for i in range(len(ds)):
        pack = ds._pack_id(i)
        first, last = int(raw.document_indices[pack]), int(raw.document_indices[pack + 1])
        lens = raw.sequence_lengths[first:last]
        s = ds[i]
        assert s["tokens"].shape == (256,) and s["attention_mask"].shape == (1, 256, 256)
        tokens = np.concatenate([raw[k] for k in range(first, last)])
        n = tokens.size
        assert n <= 256 and s["tokens"][:n].tolist() == tokens.tolist()
        seg = np.repeat(np.arange(len(lens)), lens)
        pos = np.concatenate([np.arange(x) for x in lens])
        assert s["position_ids"][:n].tolist() == pos.tolist()
        att = s["attention_mask"][0, :n, :n].numpy()
        allowed = (seg[:, None] == seg[None, :]) & np.tri(n, dtype=bool)
        assert np.array_equal(att, ~allowed)  # block-diagonal causal, True = masked
        m = np.concatenate([mask_raw[k] for k in range(first, last)])
        exp = np.zeros(256, np.float32)
        exp[: n - 1] = m[1:] * (seg[:-1] == seg[1:])
        assert np.array_equal(s["loss_mask"].numpy(), exp)
        assert s["labels"][: n - 1].tolist() == tokens[1:].tolist()
        assert s["loss_mask"][n - 1 :].sum() == 0
        seen += 1
    assert seen == len(ds) > 1


def test_packed_dataset_through_builder_blend(corpora, tmp_path, process_group):
    from megarec.data.megatron_datasets import PackedSequenceDataset, build_datasets

    train, _, _ = build_datasets(
        PackedSequenceDataset,
        [corpora["a_packed"], corpora["b_packed"]],
        [0.5, 0.5],
        [30, 0, 0],
        seq_length=256,
        tokenizer=_tokenizer(corpora),
        cache_dir=str(tmp_path / "c"),
    )
    assert len(train) >= 30
    batch = torch.utils.data.default_collate([train[i] for i in range(4)])
    assert batch["attention_mask"].shape == (4, 1, 256, 256) and batch["loss_mask"].sum() > 0
