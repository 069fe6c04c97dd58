"""Megatron-Core indexed datasets on disk: names, token dtype choice, and .idx writing (C++ builder).

A dataset `<prefix>` is `<prefix>.bin` (raw token arrays) plus `<prefix>.idx`; `megarec preprocess -o P`
writes `P_text_document` and, for chat data, `P_loss_mask_document` (uint8, identical lengths).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

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
STREAM_CHUNK = 1 << 20


def write_index_stream(f, length_chunks: Callable[[], Iterable[np.ndarray]], n: int, dtype: np.dtype) -> None:
    """Write the .idx of `n` sequences, one document each, to the binary file `f` without holding all lengths:
    `length_chunks()` yields the lengths in order (it is called twice: lengths, then byte pointers). Same bytes
    as `index_bytes(lengths, arange(n + 1), dtype)`."""
    import struct

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
    import struct

    with open(path, "rb") as f:
        head = f.read(34)
    if len(head) < 34 or head[:9] != b"MMIDIDX\x00\x00":
        raise ValueError(f"{path}: not a Megatron .idx file")
    version, code, n, d = struct.unpack("<QBQQ", head[9:34])
    return {"version": version, "dtype": CODE_DTYPES[code], "sequences": n, "documents": d - 1}
