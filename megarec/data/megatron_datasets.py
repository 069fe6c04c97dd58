"""Megatron-Core datasets over `megarec preprocess` output.

* `LossMaskedGPTDataset` — a `GPTDataset` (same sampling, caching, blending, same dict keys) whose
  loss_mask also multiplies in the per-token mask of the sibling `P_loss_mask_document` dataset, shifted
  by one like the labels (loss_mask[i] belongs to labels[i] = token i+1). Padding stays masked. Use it
  anywhere a GPTDataset class is accepted, e.g. `BlendedMegatronDatasetBuilder(LossMaskedGPTDataset, ...)`
  with `P_text_document` prefixes.
* `PackedSequenceDataset` — over `--pack` output (each pack = one Megatron document made of sample
  sequences): one pack per item, padded to `sequence_length`, with position ids restarting at every
  sample, a block-diagonal causal attention mask ([1, S, S] bool, True = masked) so samples never attend
  to each other, and loss only within a sample (assistant tokens only with the loss-mask sibling; see
  `MegarecDatasetConfig.loss_mask`; EOD labels too with `eod_mask_loss`). Also a MegatronDataset, so it
  blends and splits through BlendedMegatronDatasetBuilder; `megarec pretrain data.packed=true` uses it.

`dataset_config(...)` and `build_datasets(...)` are small factories for both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.megatron_dataset import MegatronDataset
from megatron.core.datasets.utils import Split

from megarec.common.errors import ConfigError, DataError
from megarec.data.indexed import TEXT_SUFFIX, sibling_loss_mask_prefix


@dataclass
class MegarecDatasetConfig(GPTDatasetConfig):
    """GPTDatasetConfig plus the loss-mask choice of PackedSequenceDataset."""

    loss_mask: Optional[bool] = None
    """Packed datasets: None = use the `_loss_mask_document` sibling when it exists, True = require it,
    False = ignore it (every in-document token is trained). LossMaskedGPTDataset always requires it."""


class DatasetTokenizer:
    """The tokenizer attributes Megatron-Core's datasets read (vocab size, EOD, pad)."""

    def __init__(self, vocab_size: int, eod: int, pad: int = -1, name: str = "megarec"):
        self.vocab_size = vocab_size
        self.eod = eod
        self.pad = pad
        self.unique_identifiers = {
            "class": "megarec.DatasetTokenizer",
            "name": name,
            "vocab_size": vocab_size,
            "eod": eod,
        }

    @classmethod
    def from_preprocess_summary(cls, dataset_prefix: str) -> "DatasetTokenizer":
        """Vocabulary size and EOD recorded by `megarec preprocess` in P.preprocess.json."""
        base = dataset_prefix[: -len(TEXT_SUFFIX)] if dataset_prefix.endswith(TEXT_SUFFIX) else dataset_prefix
        path = base + ".preprocess.json"
        if not os.path.isfile(path):
            raise ConfigError(f"{path} not found: pass a tokenizer (vocab_size, eod) explicitly")
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        return cls(int(meta["vocab_size"]), int(meta["eod_id"]), name=meta.get("tokenizer", "megarec"))


def dataset_config(
    seq_length: int,
    tokenizer,
    *,
    seed: int = 1234,
    blend=None,
    split: str = "1,0,0",
    cache_dir: Optional[str] = None,
    reset_position_ids: bool = False,
    reset_attention_mask: bool = False,
    eod_mask_loss: bool = False,
    create_attention_mask: bool = True,
    loss_mask: Optional[bool] = None,
    **kwargs,
) -> MegarecDatasetConfig:
    """A GPTDatasetConfig for either dataset class (blend = (prefixes, weights or None)); `loss_mask` is
    PackedSequenceDataset's choice (see MegarecDatasetConfig)."""
    return MegarecDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=blend,
        split=split,
        path_to_cache=cache_dir,
        tokenizer=tokenizer,
        reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask,
        eod_mask_loss=eod_mask_loss,
        create_attention_mask=create_attention_mask,
        mmap_bin_files=True,
        loss_mask=loss_mask,
        **kwargs,
    )


def build_datasets(
    dataset_cls,
    prefixes: Sequence[str],
    weights: Optional[Sequence[float]],
    sizes: list,
    seq_length: int,
    tokenizer,
    **config_kwargs,
):
    """(train, valid, test) through BlendedMegatronDatasetBuilder; `sizes` = samples per split (with weights,
    give every split a size, e.g. [n, 0, 0]). Megatron's BlendedDataset saves its index cache only with
    torch.distributed initialized (a 1-process gloo group is enough) or with cache_dir=None."""
    cfg = dataset_config(
        seq_length, tokenizer, blend=(list(prefixes), list(weights) if weights else None), **config_kwargs
    )
    return BlendedMegatronDatasetBuilder(dataset_cls, sizes, lambda: True, cfg).build()


def _open_loss_mask(text_prefix: str, text: IndexedDataset, mmap: bool, required: bool) -> Optional[IndexedDataset]:
    try:
        mask_prefix = sibling_loss_mask_prefix(text_prefix)
    except ValueError as e:
        if required:
            raise DataError(str(e)) from None
        return None
    if not IndexedDataset.exists(mask_prefix):
        if required:
            raise DataError(
                f"{mask_prefix}.bin/.idx not found (loss mask of {text_prefix}); "
                "preprocess chat data with --kind messages"
            )
        return None
    mask = IndexedDataset(mask_prefix, mmap=mmap)
    if mask.index.dtype != np.uint8:
        raise DataError(f"{mask_prefix}: loss mask must be uint8, found {mask.index.dtype.__name__}")
    if not np.array_equal(mask.sequence_lengths, text.sequence_lengths):
        raise DataError(f"{mask_prefix}: sequence lengths differ from {text_prefix}")
    return mask


class LossMaskedGPTDataset(GPTDataset):
    """GPTDataset whose loss_mask comes from the sibling `_loss_mask_document` dataset (see module doc)."""

    def __init__(
        self,
        indexed_dataset: IndexedDataset,
        dataset_path: Optional[str],
        indexed_indices: np.ndarray,
        num_samples: Optional[int],
        index_split: Split,
        config: GPTDatasetConfig,
    ) -> None:
        super().__init__(indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config)
        self.loss_mask_dataset = _open_loss_mask(
            indexed_dataset.path_prefix, indexed_dataset, config.mmap_bin_files, required=True
        )

    def _query_loss_mask(self, idx: int) -> np.ndarray:
        """Per-token mask of the same tokens `_query_document_sample_shuffle_indices(idx)` returns (0-padded)."""
        i = self.shuffle_index[idx]
        beg, beg_off = self.sample_index[i]
        end, end_off = self.sample_index[i + 1]
        extra = self.config.add_extra_token_to_sequence
        parts = []
        for k in range(beg, end + 1):
            offset = int(beg_off) if k == beg else 0
            length = None if k < end else int(end_off) - offset + extra
            parts.append(self.loss_mask_dataset.get(self.document_index[k], offset=offset, length=length))
        mask = np.concatenate(parts).astype(np.float32)
        want = self.config.sequence_length + extra
        if mask.size < want:
            mask = np.concatenate([mask, np.zeros(want - mask.size, np.float32)])
        return mask

    def __getitem__(self, idx: Optional[int]) -> dict[str, torch.Tensor]:
        sample = super().__getitem__(idx)
        mask = self._query_loss_mask(0 if idx is None else idx)
        shifted = np.zeros(self.config.sequence_length, np.float32)
        shifted[: mask.size - 1] = mask[1 : self.config.sequence_length + 1]
        sample["loss_mask"] = sample["loss_mask"] * torch.from_numpy(shifted)
        return sample


class PackedSequenceDataset(MegatronDataset):
    """One pack of `--pack` output per item, with per-sample positions and attention (see module doc)."""

    def __init__(
        self,
        indexed_dataset: IndexedDataset,
        dataset_path: Optional[str],
        indexed_indices: np.ndarray,
        num_samples: Optional[int],
        index_split: Split,
        config: GPTDatasetConfig,
    ) -> None:
        super().__init__(indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config)
        use_mask = getattr(config, "loss_mask", None)
        self.loss_mask_dataset = (
            None
            if use_mask is False
            else _open_loss_mask(
                indexed_dataset.path_prefix, indexed_dataset, config.mmap_bin_files, required=bool(use_mask)
            )
        )
        docs = np.asarray(indexed_dataset.document_indices, dtype=np.int64)
        cum = np.zeros(indexed_dataset.sequence_lengths.size + 1, dtype=np.int64)
        np.cumsum(indexed_dataset.sequence_lengths, out=cum[1:])
        pack_tokens = cum[docs[1:]] - cum[docs[:-1]]
        if pack_tokens.size and int(pack_tokens.max()) > config.sequence_length:
            raise DataError(
                f"{indexed_dataset.path_prefix}: a pack holds {int(pack_tokens.max())} tokens, more than "
                f"sequence_length={config.sequence_length}; preprocess with --seq-length <= that"
            )
        self.document_starts = docs
        n = len(self.indices)
        if n == 0 and num_samples:
            raise DataError(
                f"{indexed_dataset.path_prefix}: no packs in split {index_split.name} "
                f"({num_samples} samples requested); change the split or add data"
            )
        # an empty split that nobody samples from (e.g. valid when evaluation is off) has length 0
        self.epochs = max(1, -(-(num_samples or n) // n)) if n else 0
        self._perms: dict[int, np.ndarray] = {}

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: IndexedDataset) -> int:
        """Splits are made over packs (Megatron documents)."""
        return low_level_dataset.document_indices.shape[0] - 1

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: GPTDatasetConfig) -> IndexedDataset:
        return IndexedDataset(dataset_path, multimodal=False, mmap=config.mmap_bin_files)

    def __len__(self) -> int:
        return self.epochs * len(self.indices)

    def _pack_id(self, idx: int) -> int:
        n = len(self.indices)
        epoch, k = divmod(int(idx), n)
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.RandomState([self.config.random_seed, epoch]).permutation(n)
            self._perms[epoch] = perm
        return int(self.indices[perm[k]])

    def __getitem__(self, idx: Optional[int]) -> dict[str, torch.Tensor]:
        pack = self._pack_id(0 if idx is None else idx)
        first, last = int(self.document_starts[pack]), int(self.document_starts[pack + 1])
        seqs = self.dataset[first:last] if last > first else []
        masks = self.loss_mask_dataset[first:last] if self.loss_mask_dataset is not None and last > first else None
        eod = self.config.tokenizer.eod if self.config.eod_mask_loss else None
        return packed_sample(
            seqs,
            masks,
            self.config.sequence_length,
            zero_loss=idx is None,
            eod_id=eod,
            attention_mask=self.config.create_attention_mask,
        )


def packed_sample(
    seqs: list[np.ndarray],
    masks: Optional[list[np.ndarray]],
    seq_length: int,
    zero_loss: bool = False,
    eod_id: Optional[int] = None,
    attention_mask: bool = True,
) -> dict[str, torch.Tensor]:
    """tokens/labels/loss_mask/position_ids/attention_mask of samples packed side by side, padded to S.
    Loss only where label i+1 is in the same sample as token i (times the per-token `masks`, shifted like
    the labels, when given; and never on EOD labels when `eod_id` is given). Without `attention_mask` (the
    THD path, whose documents are told apart by the restarting position ids) no S×S mask is built."""
    lens = np.array([s.size for s in seqs], dtype=np.int64)
    n = int(lens.sum())
    tokens = np.zeros(seq_length, np.int64)
    if n:
        tokens[:n] = np.concatenate(seqs)
    labels = np.zeros(seq_length, np.int64)
    labels[: max(n - 1, 0)] = tokens[1:n]
    # segment id per position; padding is one extra segment of its own
    seg = np.full(seq_length, len(seqs), np.int64)
    seg[:n] = np.repeat(np.arange(len(seqs)), lens)
    starts = np.zeros(len(seqs) + 1, np.int64)
    np.cumsum(lens, out=starts[1:])
    positions = np.arange(seq_length, dtype=np.int64)
    positions[:n] -= np.repeat(starts[:-1], lens)
    positions[n:] -= n
    target_ok = np.zeros(seq_length, np.float32)
    target_ok[: max(n - 1, 0)] = (seg[: max(n - 1, 0)] == seg[1:n]).astype(np.float32)
    if masks is not None and n:
        token_mask = np.concatenate(masks).astype(np.float32)
        loss = np.zeros(seq_length, np.float32)
        loss[: n - 1] = token_mask[1:n]
        loss *= target_ok
    else:
        loss = target_ok
    if eod_id is not None:
        loss[: max(n - 1, 0)] *= labels[: max(n - 1, 0)] != eod_id
    if zero_loss:
        loss = np.zeros_like(loss)
    sample = {
        "tokens": torch.from_numpy(tokens),
        "labels": torch.from_numpy(labels),
        "loss_mask": torch.from_numpy(loss),
        "position_ids": torch.from_numpy(positions),
    }
    if attention_mask:
        seg_t = torch.from_numpy(seg)
        same = seg_t[:, None] == seg_t[None, :]
        causal = torch.ones(seq_length, seq_length, dtype=torch.bool).tril_()
        sample["attention_mask"] = (~(same & causal)).unsqueeze(0)
    return sample


def build_packed_dataset(
    prefix: str,
    seq_length: int,
    *,
    tokenizer=None,
    seed: int = 1234,
    num_samples: Optional[int] = None,
    **config_kwargs,
) -> PackedSequenceDataset:
    """A PackedSequenceDataset over all packs of `prefix` (P_text_document), without a builder
    (`config_kwargs` go to `dataset_config`, e.g. loss_mask=False, eod_mask_loss=True)."""
    tokenizer = tokenizer or DatasetTokenizer.from_preprocess_summary(prefix)
    cfg = dataset_config(seq_length, tokenizer, seed=seed, blend=([prefix], None), **config_kwargs)
    low = PackedSequenceDataset.build_low_level_dataset(prefix, cfg)
    indices = np.arange(PackedSequenceDataset.numel_low_level_dataset(low), dtype=np.int32)
    return PackedSequenceDataset(low, prefix, indices, num_samples, Split.train, cfg)
