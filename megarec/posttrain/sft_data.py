"""SFT examples (token ids + per-token loss weights) from each kind of source, tokenised exactly as the
preprocessing pipeline does:

* chat files (JSONL / parquet rows `{"messages": [...]}`) are encoded with `megarec.data.encoder.DocumentEncoder`
  (kind "messages"): the chat template renders the conversation, the assistant header is tokenised on its own,
  the C++ helper marks every assistant token after the header up to and including `<|im_end|>`, and each
  document ends with the EOD id (never trained);
* plain-document files (rows `{"text": ...}` or `{"segments": [...]}`, e.g. `data build`'s pre-training
  samples mixed in as rehearsal) are encoded the same way with kind "text" / "segments" and train on every
  token after the first, EOD included, as stage-2 pre-training does;
* `megarec preprocess` output (`P_text_document` + `P_loss_mask_document`, one conversation per document) is
  read document by document with Megatron-Core's `IndexedDataset`. Documents are never packed together here,
  so conversations cannot attend to each other.

A source's `loss_weight` scales its mask (the loss is the mask-weighted mean over the global batch) and its
`tasks` keep only rows whose `metadata.task` is listed.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from megarec.common.errors import ConfigError, DataError
from megarec.posttrain import chat
from megarec.posttrain.config import SFTSourceSpec
from megarec.posttrain.datasets import Source, seeded_rng, source_name


class ChatEncoder:
    """Rows → (ids, mask) with the preprocessing encoders of `tokenizer_dir`: chat rows (kind "messages")
    train on their assistant tokens, plain documents (kinds "text" / "segments", e.g. the pre-training samples
    of `megarec data build` mixed in for rehearsal) on every token after the first, as pre-training does."""

    def __init__(self, tokenizer_dir: str):
        self.tokenizer_dir = tokenizer_dir
        self._encoders: dict = {}  # one DocumentEncoder per kind, built on first use

    def _encoder(self, kind: str):
        from megarec.data.encoder import DocumentEncoder

        if kind not in self._encoders:
            self._encoders[kind] = DocumentEncoder(self.tokenizer_dir, kind)
        return self._encoders[kind]

    def encode(
        self, rows: list[tuple[int, object]], kind: str = "messages"
    ) -> tuple[list[tuple[int, list, list]], list[tuple[int, str]]]:
        """([(row, ids, mask)], rejects [(row, reason)]) for [(row, messages)] (kind "messages") or
        [(row, record)] (kinds "text" / "segments")."""
        records = [(row, {"messages": m}) for row, m in rows] if kind == "messages" else rows
        batch = self._encoder(kind).encode(records)
        out, start = [], 0
        for row, n in zip(batch.rows, batch.lengths.tolist()):
            ids = batch.ids[start : start + n].tolist()
            mask = (
                batch.mask[start : start + n].astype(np.int64).tolist()
                if batch.mask is not None
                else [0] + [1] * (n - 1)
            )
            out.append((row, ids, mask))
            start += n
        return out, batch.rejects


def encode_conversation(encoder: ChatEncoder, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of one conversation; DataError with the encoder's reason when it is rejected."""
    done, rejects = encoder.encode([(1, messages)])
    if rejects:
        raise DataError(rejects[0][1])
    return done[0][1], done[0][2]


def weighted(mask: list, weight: float) -> list:
    return mask if weight == 1.0 else [m * weight for m in mask]


def is_indexed_prefix(path: str) -> bool:
    return os.path.isfile(path + ".idx") and os.path.isfile(path + ".bin")


class IndexedChatRows:
    """Lazy (ids, mask) documents of a preprocessed chat dataset (`P_text_document` prefix)."""

    def __init__(self, prefix: str, keep: np.ndarray, vocab_size: int, loss_weight: float = 1.0):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        from megarec.data.indexed import sibling_loss_mask_prefix

        self.prefix = prefix
        self.text = IndexedDataset(prefix)
        self.mask = IndexedDataset(sibling_loss_mask_prefix(prefix))
        self.keep = keep
        self.vocab_size = vocab_size
        self.loss_weight = loss_weight

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
        return ids.tolist(), weighted(mask.astype(np.int64).tolist(), self.loss_weight)


def _indexed_source(spec: SFTSourceSpec, data, vocab_size: int) -> Source:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megarec.data.indexed import sibling_loss_mask_prefix

    if spec.tasks:
        raise ConfigError(
            f"{spec.path}: tasks filters JSONL/parquet rows by metadata.task; an indexed dataset has none"
        )
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
    src = Source(
        source_name(spec),
        spec.path,
        float(spec.weight),
        rows=IndexedChatRows(spec.path, keep, vocab_size, spec.loss_weight),
    )
    src.skipped = int(long.size)
    return src


def _file_source(spec: SFTSourceSpec, data, encoder: ChatEncoder, seed: int, limit: Optional[int]) -> Source:
    """A JSONL/parquet source: chat rows or plain documents (one kind per file), filtered by `spec.tasks`."""
    from megarec.common.io import read_records
    from megarec.data.encoder import detect_kind

    rows, kind = [], None
    for row, rec in read_records(spec.path):
        where = f"{spec.path}: row {row}"
        row_kind = detect_kind(rec)
        if row_kind is None:
            raise DataError(f'{where}: expected {{"messages": [...]}}, {{"segments": [...]}} or {{"text": ...}}')
        if kind not in (None, row_kind):
            raise DataError(f"{where}: a {row_kind} row in a file of {kind} rows (one kind per source)")
        kind = row_kind
        if spec.tasks and (rec.get("metadata") or {}).get("task") not in spec.tasks:
            continue
        if kind == "messages":
            messages = chat.validate_messages(rec.get("messages"), where)
            rec = chat.apply_think_flags(messages, data.think_flags, data.think_flag_prob, seeded_rng(seed, where))
        rows.append((row, rec))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        what = f" with metadata.task in {list(spec.tasks)}" if spec.tasks else ""
        raise DataError(f"{spec.path}: no rows{what}")
    done, rejects = encoder.encode(rows, kind)
    if rejects:
        row, reason = rejects[0]
        raise DataError(f"{spec.path}: row {row}: {reason}")
    src = Source(source_name(spec), spec.path, float(spec.weight))
    for row, ids, mask in done:
        if len(ids) > data.max_seq_length:
            if data.overlong != "skip":
                raise DataError(
                    f"{spec.path}: row {row}: {'conversation' if kind == 'messages' else 'document'} has "
                    f"{len(ids)} tokens, more than "
                    f"data.max_seq_length={data.max_seq_length}"
                )
            src.skipped += 1
            continue
        src.rows.append((ids, weighted(mask, spec.loss_weight)))
    if not src.rows:
        raise DataError(f"{spec.path}: no usable rows ({src.skipped} longer than data.max_seq_length)")
    return src


def load_sft_sources(
    specs: list[SFTSourceSpec], data, tokenizer_dir: str, vocab_size: int, seed: int, limit: Optional[int] = None
) -> list[Source]:
    encoder = None
    out = []
    for spec in specs:
        if is_indexed_prefix(spec.path):
            out.append(_indexed_source(spec, data, vocab_size))
            continue
        encoder = encoder or ChatEncoder(tokenizer_dir)
        out.append(_file_source(spec, data, encoder, seed, limit))
    return out
