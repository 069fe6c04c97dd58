"""Sequential-recommendation data for the transfer benchmark: one time-ordered item sequence per user and
the leave-one-out split (last item = test target, second-last = validation target, the rest = training).

Sequences come from the data sources of `megarec.rawdata.sources` (MovieLens-100k fetched at run time from
the recbole wheel, Amazon review dumps, synthetic logs), so the benchmark reads exactly what the task
builders read. Items are re-indexed 1..N (0 is padding) for the neural baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from megarec.common.errors import ConfigError, DataError
from megarec.rawdata.loo import LOO_MIN_LENGTH, largest_domain


@dataclass
class SeqRecData:
    """Per-user item-index sequences (oldest first) over items 1..num_items."""

    name: str
    domain: str
    item_ids: list[str]  # index i (1-based) → item_ids[i - 1]
    user_ids: list[str]
    sequences: list[np.ndarray]  # int64 item indices, oldest first, length >= 3
    item_index: dict[str, int] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def train_sequences(self) -> list[np.ndarray]:
        """Everything but the last two items of each user."""
        return [s[:-2] for s in self.sequences]

    def split_inputs(self, split: str) -> tuple[list[np.ndarray], np.ndarray]:
        """(histories, targets) for "valid" (history = all but the last two) or "test" (all but the last)."""
        if split == "valid":
            return [s[:-2] for s in self.sequences], np.array([s[-2] for s in self.sequences], dtype=np.int64)
        if split == "test":
            return [s[:-1] for s in self.sequences], np.array([s[-1] for s in self.sequences], dtype=np.int64)
        raise ConfigError(f"split must be 'valid' or 'test', got {split!r}")

    def subset_users(self, n: int, seed: int = 0) -> "SeqRecData":
        """A seeded random subset of n users (same item index)."""
        if n >= self.num_users:
            return self
        keep = sorted(np.random.default_rng(seed).choice(self.num_users, size=n, replace=False).tolist())
        return SeqRecData(
            self.name,
            self.domain,
            self.item_ids,
            [self.user_ids[i] for i in keep],
            [self.sequences[i] for i in keep],
            self.item_index,
        )

    def summary(self) -> dict:
        lens = [len(s) for s in self.sequences]
        return {
            "dataset": self.name,
            "domain": self.domain,
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "mean_length": float(np.mean(lens)) if lens else 0.0,
        }


def from_reclog(
    log, domain: str | None = None, min_length: int = LOO_MIN_LENGTH, name: str | None = None
) -> SeqRecData:
    """SeqRecData from a validated RecLog: histories of one domain (default: the domain with the most
    interactions); users with fewer than `min_length` interactions are dropped; only items that occur in
    some kept sequence are indexed."""
    if min_length < LOO_MIN_LENGTH:
        raise ConfigError("leave-one-out needs min_length >= 3 (train, validation and test items)")
    domains = sorted({d for u in log.users for d, h in u.histories.items() if h})
    if not domains:
        raise DataError(f"{getattr(log, 'name', 'log')}: no interactions")
    if domain is None:
        domain = largest_domain(log)
    elif domain not in domains:
        raise ConfigError(f"domain {domain!r} not in the data (has: {', '.join(domains)})")
    raw = [(u.user_id, [x.item_id for x in u.histories.get(domain, [])]) for u in log.users]
    raw = [(uid, seq) for uid, seq in raw if len(seq) >= min_length]
    if not raw:
        raise DataError(f"no user has {min_length} or more '{domain}' interactions")
    item_ids = sorted({i for _, seq in raw for i in seq}, key=lambda s: (len(s), s))
    index = {it: i + 1 for i, it in enumerate(item_ids)}
    seqs = [np.array([index[i] for i in seq], dtype=np.int64) for _, seq in raw]
    return SeqRecData(name or getattr(log, "name", "log"), domain, item_ids, [uid for uid, _ in raw], seqs, index)


def load_seqrec(
    spec: str,
    *,
    domain: str | None = None,
    min_length: int = LOO_MIN_LENGTH,
    cache_dir: str | None = None,
    seed: int = 0,
) -> SeqRecData:
    """`ml-100k` (fetched once into $MEGAREC_CACHE), `amazon:<dir>` or `synthetic` as SeqRecData."""
    from megarec.rawdata.sources import load_source

    kind = spec.partition(":")[0]
    if kind not in ("ml-100k", "movielens", "amazon", "synthetic", "raw"):
        raise ConfigError(f"unknown dataset {spec!r}: use ml-100k, amazon:<dir>, synthetic or raw:<dir>")
    res = load_source(spec, seed=seed, cache_dir=cache_dir, on_error="drop")
    return from_reclog(res.log, domain=domain, min_length=min_length, name=spec)
