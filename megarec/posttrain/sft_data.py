"""SFT examples (token ids + assistant loss mask) from either kind of source, tokenised exactly as the
preprocessing pipeline does:

* chat files (JSONL / parquet rows `{"messages": [...]}`) are encoded with `megarec.data.encoder.DocumentEncoder`
  (kind "messages"): the chat template renders the conversation, the assistant header is tokenised on its own,
  the C++ helper marks every assistant token after the header up to and including `<|im_end|>`, and each
  document ends with the EOD id (never trained);
* `megarec preprocess` output (`P_text_document` + `P_loss_mask_document`, one conversation per document) is
  read document by document with Megatron-Core's `IndexedDataset`. Documents are never packed together here,
  so conversations cannot attend to each other.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from megarec.common.errors import DataError
from megarec.posttrain import chat
from megarec.posttrain.config import SourceSpec
from megarec.posttrain.datasets import Source, seeded_rng, source_name


class ChatEncoder:
    """Conversations → (ids, mask) with the preprocessing encoder of `tokenizer_dir`."""

    def __init__(self, tokenizer_dir: str):
        from megarec.data.encoder import DocumentEncoder

        self.encoder = DocumentEncoder(tokenizer_dir, "messages")
        self.vocab_size = self.encoder.vocab_size

    def encode(self, rows: list[tuple[int, list]]) -> tuple[list[tuple[int, list, list]], list[tuple[int, str]]]:
        """([(row, ids, mask)], rejects [(row, reason)]) for [(row, messages)]."""
        batch = self.encoder.encode([(row, {"messages": m}) for row, m in rows])
        out, start = [], 0
        for row, n in zip(batch.rows, batch.lengths.tolist()):
            out.append(
                (row, batch.ids[start : start + n].tolist(), batch.mask[start : start + n].astype(np.int64).tolist())
            )
            start += n
        return out, batch.rejects


def encode_conversation(encoder: ChatEncoder, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of one conversation; DataError with the encoder's reason when it is rejected."""
    done, rejects = encoder.encode([(1, messages)])
    if rejects:
        raise DataError(rejects[0][1])
    return done[0][1], done[0][2]


def is_indexed_prefix(path: str) -> bool:
    return os.path.isfile(path + ".idx") and os.path.isfile(path + ".bin")


class IndexedChatRows:
    """Lazy (ids, mask) documents of a preprocessed chat dataset (`P_text_document` prefix)."""

    def __init__(self, prefix: str, keep: np.ndarray, vocab_size: int):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        from megarec.data.indexed import sibling_loss_mask_prefix

        self.prefix = prefix
        self.text = IndexedDataset(prefix)
        self.mask = IndexedDataset(sibling_loss_mask_prefix(prefix))
        self.keep = keep
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        d = int(self.keep[i])
        ids, mask = self.text[d], self.mask[d]
        if ids.size and int(ids.max()) >= self.vocab_size:
            raise DataError(
                f"{self.prefix}: document {d} has token id {int(ids.max())} outside the model's "
                f"tokenizer ({self.vocab_size} tokens): preprocessed with another tokenizer?"
            )
        return ids.tolist(), mask.astype(np.int64).tolist()


def _indexed_source(spec: SourceSpec, data, vocab_size: int) -> Source:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megarec.data.indexed import sibling_loss_mask_prefix

    try:
        mask_prefix = sibling_loss_mask_prefix(spec.path)
    except ValueError as e:
        raise DataError(str(e)) from None
    if not is_indexed_prefix(mask_prefix):
        raise DataError(
            f"{mask_prefix}.bin/.idx not found: SFT needs the loss mask of {spec.path} "
            "(preprocess chat data with --kind messages, without --pack)"
        )
    text, mask = IndexedDataset(spec.path), IndexedDataset(mask_prefix)
    if mask.index.dtype != np.uint8 or not np.array_equal(text.sequence_lengths, mask.sequence_lengths):
        raise DataError(f"{mask_prefix}: not a uint8 loss mask with the lengths of {spec.path}")
    if len(text.document_indices) - 1 != len(text.sequence_lengths):
        raise DataError(
            f"{spec.path}: packed dataset (several sequences per document); SFT reads one "
            "conversation per document — preprocess without --pack"
        )
    lengths = np.asarray(text.sequence_lengths)
    long = np.flatnonzero(lengths > data.max_seq_length)
    if long.size and data.overlong != "skip":
        raise DataError(
            f"{spec.path}: document {int(long[0])} has {int(lengths[long[0]])} tokens, more than "
            f"data.max_seq_length={data.max_seq_length}"
        )
    keep = np.flatnonzero(lengths <= data.max_seq_length)
    if not keep.size:
        raise DataError(f"{spec.path}: no usable documents")
    src = Source(source_name(spec), spec.path, float(spec.weight), rows=IndexedChatRows(spec.path, keep, vocab_size))
    src.skipped = int(long.size)
    return src


def _chat_source(spec: SourceSpec, data, encoder: ChatEncoder, seed: int, limit: Optional[int]) -> Source:
    from megarec.common.io import read_records

    rows = []
    for row, rec in read_records(spec.path):
        where = f"{spec.path}: row {row}"
        messages = chat.validate_messages(rec.get("messages"), where)
        rows.append(
            (row, chat.apply_think_flags(messages, data.think_flags, data.think_flag_prob, seeded_rng(seed, where)))
        )
        if limit is not None and len(rows) >= limit:
            break
    done, rejects = encoder.encode(rows)
    if rejects:
        row, reason = rejects[0]
        raise DataError(f"{spec.path}: row {row}: {reason}")
    src = Source(source_name(spec), spec.path, float(spec.weight))
    for row, ids, mask in done:
        if len(ids) > data.max_seq_length:
            if data.overlong != "skip":
                raise DataError(
                    f"{spec.path}: row {row}: conversation has {len(ids)} tokens, more than "
                    f"data.max_seq_length={data.max_seq_length}"
                )
            src.skipped += 1
            continue
        src.rows.append((ids, mask))
    if not src.rows:
        raise DataError(f"{spec.path}: no usable rows ({src.skipped} longer than data.max_seq_length)")
    return src


def load_sft_sources(
    specs: list[SourceSpec], data, tokenizer_dir: str, vocab_size: int, seed: int, limit: Optional[int] = None
) -> list[Source]:
    encoder = None
    out = []
    for spec in specs:
        if is_indexed_prefix(spec.path):
            out.append(_indexed_source(spec, data, vocab_size))
            continue
        encoder = encoder or ChatEncoder(tokenizer_dir)
        out.append(_chat_source(spec, data, encoder, seed, limit))
    return out
