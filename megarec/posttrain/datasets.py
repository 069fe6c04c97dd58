"""Post-training data: weighted mixtures of chat files (JSONL / parquet rows `{"messages": [...], ...}`)
read with `megarec.common.io`, and a deterministic mixture sampler whose position is part of the checkpoint.

Sampler: draw k goes to the source whose share is furthest below its weight (exact proportions at every
prefix, as Megatron's blended datasets do); inside a source rows follow a seeded permutation, reshuffled
every epoch. The state is the number of draws per source, so resuming continues the same stream.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from megarec.common.errors import DataError
from megarec.common.io import read_records
from megarec.posttrain.config import SourceSpec


@dataclass
class Source:
    name: str
    path: str
    weight: float
    rows: list = field(default_factory=list)  # algorithm-specific prepared examples
    skipped: int = 0


def source_name(spec: SourceSpec) -> str:
    if spec.name:
        return spec.name
    base = os.path.basename(spec.path)
    for suffix in (".gz", ".jsonl", ".json", ".parquet", ".pq"):
        base = base.removesuffix(suffix)
    return base


def load_sources(
    specs: Sequence[SourceSpec], prepare: Callable[[dict, str], Any], overlong: str, limit: Optional[int] = None
) -> list[Source]:
    """Read every source; `prepare(record, where)` returns an example, or raises DataError. With
    overlong=skip, DataErrors flagged `overlong` are counted instead of raised."""
    out = []
    for spec in specs:
        src = Source(source_name(spec), spec.path, float(spec.weight))
        for row, rec in read_records(spec.path):
            where = f"{spec.path}: row {row}"
            try:
                src.rows.append(prepare(rec, where))
            except OverlongError:
                if overlong != "skip":
                    raise
                src.skipped += 1
            if limit is not None and len(src.rows) >= limit:
                break
        if not src.rows:
            raise DataError(f"{spec.path}: no usable rows" + (f" ({src.skipped} too long)" if src.skipped else ""))
        out.append(src)
    return out


class OverlongError(DataError):
    """An example longer than the configured limit."""


class MixtureSampler:
    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int):
        if not sizes or any(n <= 0 for n in sizes):
            raise DataError("every mixture source needs at least one row")
        total = float(sum(weights))
        self.sizes = list(sizes)
        self.weights = [w / total for w in weights]
        self.seed = seed
        self.counts = [0] * len(sizes)
        self._perms: dict = {}

    def _perm(self, s: int, epoch: int) -> np.ndarray:
        key = (s, epoch)
        if key not in self._perms:
            if len(self._perms) > 4 * len(self.sizes):
                self._perms.clear()
            rng = np.random.default_rng([self.seed, s, epoch])
            self._perms[key] = rng.permutation(self.sizes[s])
        return self._perms[key]

    def next(self) -> tuple[int, int]:
        drawn = sum(self.counts) + 1
        s = max(range(len(self.sizes)), key=lambda i: (self.weights[i] * drawn - self.counts[i], -i))
        pos = self.counts[s]
        self.counts[s] += 1
        epoch, k = divmod(pos, self.sizes[s])
        return s, int(self._perm(s, epoch)[k])

    def take(self, n: int) -> list[tuple[int, int]]:
        return [self.next() for _ in range(n)]

    def state_dict(self) -> dict:
        return {"counts": list(self.counts), "sizes": list(self.sizes)}

    def load_state_dict(self, state: dict) -> None:
        if list(state.get("sizes", [])) != self.sizes:
            raise DataError(
                f"the data changed since the checkpoint (source sizes {state.get('sizes')} → "
                f"{self.sizes}); the data position cannot be restored"
            )
        self.counts = list(state["counts"])


def seeded_rng(*key) -> random.Random:
    """A Random seeded from `key` the same way in every process (str hashing is salted, repr is not)."""
    return random.Random(repr(key))
