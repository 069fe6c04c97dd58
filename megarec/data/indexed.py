"""Megatron-Core indexed datasets on disk: names, token dtype choice, and .idx writing (C++ builder).

A dataset `<prefix>` is `<prefix>.bin` (raw token arrays) plus `<prefix>.idx`; `megarec preprocess -o P`
writes `P_text_document` and, for chat data, `P_loss_mask_document` (uint8, identical lengths).
"""

from __future__ import annotations

import os
import struct
from typing import Callable, Iterable

import numpy as np

from megarec.common.errors import DataError

TEXT_SUFFIX = "_text_document"
LOSS_MASK_SUFFIX = "_loss_mask_document"

# Megatron-Core DType codes (megatron.core.datasets.indexed_dataset.DType)
DTYPE_CODES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.uint16): 8,
}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}
UINT16_VOCAB_LIMIT = 65500  # same threshold as Megatron's DType.optimal_dtype


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 for small vocabularies, int32 otherwise (Qwen3 and every expanded vocabulary)."""
    return np.dtype(np.uint16) if vocab_size < UINT16_VOCAB_LIMIT else np.dtype(np.int32)


def text_prefix(output_prefix: str) -> str:
    return output_prefix + TEXT_SUFFIX


def loss_mask_prefix(output_prefix: str) -> str:
    return output_prefix + LOSS_MASK_SUFFIX


def sibling_loss_mask_prefix(text_dataset_prefix: str) -> str:
    """`P_text_document` → `P_loss_mask_document`; ValueError for other names."""
    if not text_dataset_prefix.endswith(TEXT_SUFFIX):
        raise ValueError(f"{text_dataset_prefix}: a loss-masked dataset prefix must end with {TEXT_SUFFIX}")
    return text_dataset_prefix[: -len(TEXT_SUFFIX)] + LOSS_MASK_SUFFIX


def index_bytes(lengths: np.ndarray, document_indices: np.ndarray, dtype: np.dtype) -> bytes:
    """Bytes of a Megatron .idx for sequences of `lengths` and document boundaries (0 ... N)."""
    from megarec import _cpp

    return _cpp.build_index(
        np.ascontiguousarray(lengths, dtype=np.int32),
        np.ascontiguousarray(document_indices, dtype=np.int64),
        DTYPE_CODES[np.dtype(dtype)],
    )


INDEX_MAGIC = b"MMIDIDX\x00\x00"
HEADER_BYTES = len(INDEX_MAGIC) + 8 + 1 + 8 + 8  # magic, version, dtype code, sequence count, document count
STREAM_CHUNK = 1 << 20


def write_index_stream(f, length_chunks: Callable[[], Iterable[np.ndarray]], n: int, dtype: np.dtype) -> None:
    """Write the .idx of `n` sequences, one document each, to the binary file `f` without holding all lengths:
    `length_chunks()` yields the lengths in order (it is called twice: lengths, then byte pointers). Same bytes
    as `index_bytes(lengths, arange(n + 1), dtype)`."""
    f.write(INDEX_MAGIC + struct.pack("<QBQQ", 1, DTYPE_CODES[np.dtype(dtype)], n, n + 1))
    seen = 0
    for lens in length_chunks():
        if lens.size and int(lens.min()) < 0:
            raise ValueError(f"sequence {seen + int(np.argmax(lens < 0))} has negative length")
        f.write(np.ascontiguousarray(lens, dtype="<i4").tobytes())
        seen += lens.size
    if seen != n:
        raise ValueError(f"expected {n} sequence lengths, got {seen}")
    pointer = 0
    for lens in length_chunks():
        sizes = lens.astype(np.int64) * np.dtype(dtype).itemsize
        starts = np.empty(lens.size, dtype="<i8")
        if lens.size:
            starts[0] = pointer
            np.cumsum(sizes[:-1], out=starts[1:])
            starts[1:] += pointer
            pointer += int(sizes.sum())
        f.write(starts.tobytes())
    for a in range(0, n + 1, STREAM_CHUNK):
        f.write(np.arange(a, min(n + 1, a + STREAM_CHUNK), dtype="<i8").tobytes())


def read_index_header(path: str) -> dict:
    """dtype, sequence count and document count of an .idx (without numpy mapping the arrays)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or head[: len(INDEX_MAGIC)] != INDEX_MAGIC:
        raise ValueError(f"{path}: not a Megatron .idx file")
    version, code, n, d = struct.unpack("<QBQQ", head[len(INDEX_MAGIC) :])
    return {"version": version, "dtype": CODE_DTYPES[code], "sequences": n, "documents": d - 1}


def check_indexed_dataset(prefix: str) -> dict:
    """Refuse a dataset whose `.idx` and `.bin` disagree, before Megatron maps them (it would read past the end,
    or silently report tokens that are not there): the .idx header (magic, version 1, a known dtype), its
    lengths / pointers / document arrays exactly the size its counts need, document boundaries 0 … N, and a
    .bin of exactly the bytes the last pointer and length reach. A handful of reads, whatever the size.
    Returns {"dtype", "sequences", "documents", "tokens"}; DataError naming the file otherwise."""
    idx, bin_path = prefix + ".idx", prefix + ".bin"
    for path in (idx, bin_path):
        if not os.path.isfile(path):
            raise DataError(f"{path}: not found")
    size = os.path.getsize(idx)
    with open(idx, "rb") as f:
        head = f.read(HEADER_BYTES)
        magic = min(len(head), len(INDEX_MAGIC))
        if head[:magic] != INDEX_MAGIC[:magic]:
            raise DataError(f"{idx}: not a Megatron .idx file (no MMIDIDX header)")
        if len(head) < HEADER_BYTES:
            raise DataError(f"{idx}: truncated ({size} bytes, shorter than the {HEADER_BYTES}-byte header)")
        version, code, n, d = struct.unpack("<QBQQ", head[len(INDEX_MAGIC) :])
        if version != 1:
            raise DataError(f"{idx}: index version {version}, expected 1")
        if code not in CODE_DTYPES:
            raise DataError(f"{idx}: unknown dtype code {code}")
        dtype = CODE_DTYPES[code]
        need = HEADER_BYTES + 12 * n + 8 * d
        if size not in (need, need + n):  # + n: Megatron's optional multimodal sequence modes
            state = "truncated" if size < need else "longer than that"
            raise DataError(
                f"{idx}: {size} bytes, but its header ({n} sequences, {max(d - 1, 0)} documents) needs {need}: "
                f"the index is {state} (corrupt or partly written)"
            )

        def read(offset: int, fmt: str) -> int:
            f.seek(offset)
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        docs_at = HEADER_BYTES + 12 * n
        first_doc, last_doc = (read(docs_at, "<q"), read(docs_at + 8 * (d - 1), "<q")) if d else (None, None)
        if d < 1 or first_doc != 0 or last_doc != n:
            raise DataError(
                f"{idx}: document boundaries run from {first_doc} to {last_doc}, expected 0 to {n} (corrupt index)"
            )
        if n:
            last_length = read(HEADER_BYTES + 4 * (n - 1), "<i")
            last_pointer = read(HEADER_BYTES + 4 * n + 8 * (n - 1), "<q")
            implied = last_pointer + last_length * dtype.itemsize
        else:
            implied = 0
    actual = os.path.getsize(bin_path)
    if actual != implied:
        state = "truncated" if actual < implied else "longer than that"
        raise DataError(
            f"{bin_path}: {actual} bytes, but {os.path.basename(idx)} indexes {implied} bytes "
            f"({implied // dtype.itemsize} {dtype.name} tokens): the .bin is {state} or belongs to another index"
        )
    return {"dtype": dtype, "sequences": n, "documents": d - 1, "tokens": implied // dtype.itemsize}


def check_loss_mask_dataset(text_prefix_: str, mask_prefix: str, text: dict) -> dict:
    """`check_indexed_dataset` of a loss-mask sibling, which must also be uint8 with the text's sequence count
    and token count (`text`: the text dataset's check result)."""
    mask = check_indexed_dataset(mask_prefix)
    if mask["dtype"] != np.dtype(np.uint8) or (mask["sequences"], mask["tokens"]) != (
        text["sequences"],
        text["tokens"],
    ):
        raise DataError(
            f"{mask_prefix}.idx: {mask['sequences']} sequences of {mask['tokens']} {mask['dtype'].name} values, "
            f"but {text_prefix_} has {text['sequences']} sequences of {text['tokens']} tokens: the loss mask "
            "belongs to another dataset"
        )
    return mask
