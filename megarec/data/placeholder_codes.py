"""Deterministic hash codes for items that have no itemic tokenizer codes yet: unique per item, carrying no
semantics (replace them with RQ-KMeans codes, `megarec itemic train`, for real training)."""

from __future__ import annotations

import hashlib
from typing import Iterable

from megarec.common.errors import ConfigError


def placeholder_codes(
    item_ids: Iterable[str], num_layers: int, codebook_size: int, seed: int = 0
) -> dict[str, tuple[int, ...]]:
    """Deterministic hash codes for items that have no itemic tokenizer codes yet (unique per item;
    they carry no semantics: replace them with RQ-KMeans codes for real training)."""
    out: dict[str, tuple[int, ...]] = {}
    used: set[tuple[int, ...]] = set()
    capacity = codebook_size**num_layers
    for item_id in item_ids:
        if len(used) >= capacity:
            raise ConfigError(f"{num_layers} layers x {codebook_size} codes cannot give unique codes to all items")
        salt = 0
        while True:
            h = hashlib.blake2b(f"{seed}:{item_id}:{salt}".encode(), digest_size=16).digest()
            value = int.from_bytes(h, "little")
            codes = []
            for _ in range(num_layers):
                codes.append(value % codebook_size)
                value //= codebook_size
            codes_t = tuple(codes)
            if codes_t not in used:
                break
            salt += 1
        used.add(codes_t)
        out[item_id] = codes_t
    return out
