"""`megarec data inspect`: counts, length histogram, loss-mask coverage, pack fill, decoded samples
(itemic tokens appear as themselves; tokens that carry loss are wrapped in ⟦ ⟧ for chat data)."""

from __future__ import annotations

import json
import os
import random
from typing import Optional

import numpy as np

from megarec.common.errors import DataError
from megarec.data.indexed import (
    TEXT_SUFFIX,
    check_indexed_dataset,
    check_loss_mask_dataset,
    sibling_loss_mask_prefix,
)

TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


def resolve_prefix(prefix: str) -> tuple[str, str]:
    """(dataset prefix P_text_document, output prefix P) from either spelling."""
    if prefix.endswith(TEXT_SUFFIX) and os.path.isfile(prefix + ".idx"):
        return prefix, prefix[: -len(TEXT_SUFFIX)]
    if os.path.isfile(prefix + TEXT_SUFFIX + ".idx"):
        return prefix + TEXT_SUFFIX, prefix
    if os.path.isfile(prefix + ".idx"):
        return prefix, prefix
    raise DataError(f"{prefix}: no indexed dataset ({prefix}{TEXT_SUFFIX}.idx or {prefix}.idx)")


def histogram(values: np.ndarray, bins: int, width: int = 40) -> list[str]:
    if values.size == 0:
        return ["  (empty)"]
    counts, edges = np.histogram(values, bins=max(1, bins))
    top = max(int(counts.max()), 1)
    return [
        f"  {int(lo):>8}-{int(hi):<8} {int(c):>8} {'#' * int(round(width * c / top))}"
        for lo, hi, c in zip(edges[:-1], edges[1:], counts)
    ]


def _decode(tok, ids: np.ndarray, mask: Optional[np.ndarray]) -> str:
    if mask is None:
        return tok.decode(ids.tolist(), skip_special_tokens=False)
    out, start = [], 0
    for k in range(1, ids.size + 1):
        if k == ids.size or mask[k] != mask[start]:
            text = tok.decode(ids[start:k].tolist(), skip_special_tokens=False)
            out.append(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if mask[start] else text)
            start = k
    return "".join(out)


def inspect_dataset(
    prefix: str,
    *,
    tokenizer: Optional[str] = None,
    samples: int = 3,
    seed: int = 0,
    max_chars: int = 1500,
    bins: int = 10,
) -> str:
    data_prefix, out_prefix = resolve_prefix(prefix)  # paths and file sizes first: Megatron takes seconds to load
    text = check_indexed_dataset(data_prefix)
    try:
        mask_prefix = sibling_loss_mask_prefix(data_prefix)
    except ValueError:
        mask_prefix = None
    if mask_prefix and (os.path.isfile(mask_prefix + ".idx") or os.path.isfile(mask_prefix + ".bin")):
        check_loss_mask_dataset(data_prefix, mask_prefix, text)
    else:
        mask_prefix = None
    summary_path = out_prefix + ".preprocess.json"
    try:
        summary = json.load(open(summary_path, encoding="utf-8")) if os.path.isfile(summary_path) else {}
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{summary_path}: unreadable preprocess summary ({e})") from None
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(data_prefix)
    lengths = np.asarray(ds.sequence_lengths, dtype=np.int64)
    docs = np.asarray(ds.document_indices, dtype=np.int64)
    lines = [
        f"dataset {data_prefix}: dtype {ds.index.dtype.__name__}, {lengths.size} sequences, "
        f"{docs.size - 1} documents, {int(lengths.sum())} tokens"
    ]
    if lengths.size:
        lines.append(
            f"sequence length: min {lengths.min()}, mean {lengths.mean():.1f}, median "
            f"{int(np.median(lengths))}, max {lengths.max()}"
        )
    lines.append("length histogram:")
    lines += histogram(lengths, bins)
    if summary.get("pack") and docs.size > 1:
        cum = np.zeros(lengths.size + 1, np.int64)
        np.cumsum(lengths, out=cum[1:])
        packs = cum[docs[1:]] - cum[docs[:-1]]
        cap = summary.get("seq_length") or int(packs.max())
        lines.append(
            f"packs: {packs.size} of capacity {cap}, fill {packs.sum() / (packs.size * cap):.1%}, "
            f"samples per pack mean {np.diff(docs).mean():.1f}"
        )
    mask_ds = None
    if mask_prefix:
        mask_ds = IndexedDataset(mask_prefix)
        trained = (
            int(np.memmap(mask_prefix + ".bin", dtype=np.uint8, mode="r").sum(dtype=np.int64))
            if os.path.getsize(mask_prefix + ".bin")
            else 0
        )
        lines.append(f"loss mask {mask_prefix}: {trained} trained tokens ({trained / max(int(lengths.sum()), 1):.1%})")
    tokenizer = tokenizer or summary.get("tokenizer")
    if samples > 0 and lengths.size:
        if not tokenizer or not os.path.isdir(tokenizer):
            lines.append("(no tokenizer: pass --tokenizer to decode samples)")
        else:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(os.path.join(tokenizer, "tokenizer.json"))
            picks = sorted(random.Random(seed).sample(range(lengths.size), min(samples, lengths.size)))
            for i in picks:
                text = _decode(tok, ds[i], mask_ds[i] if mask_ds is not None else None)
                if len(text) > max_chars:
                    text = text[:max_chars] + f"… [{len(text) - max_chars} more characters]"
                lines.append(f"--- sequence {i} ({lengths[i]} tokens) ---")
                lines.append(text)
    return "\n".join(lines)
