"""Collaborative item embeddings for the itemic tokenizer, learned from the training split only, and their
fusion with text embeddings before RQ-KMeans (OneRec-style tokenizers align item embeddings with behaviour,
so that items watched together share code prefixes).

* `cooccurrence_embeddings`: item–item co-occurrence counts within a window of each user's training
  sequence (weight 1/distance), positive PMI, truncated SVD (U·sqrt(S)), L2-normalised rows. Items never
  seen in training get a zero vector (their codes then come from text alone).
* `fuse`: [sqrt(1−w)·text, sqrt(w)·collab] on L2-normalised parts, so `w` is the collaborative share of the
  squared norm.
* `prefix_purity`: how often consecutive items of the training sequences share their first code (and the
  first two), against the rate expected for random item pairs drawn by popularity — the report's measure of
  whether codes follow behaviour.

Only the leave-one-out training part of each sequence is used (`megarec.rawdata.loo`: the last two items of a
user are held out), so no validation or test target shapes the codes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from megarec.common.errors import ConfigError


def cooccurrence_matrix(sequences: Sequence[Sequence[int]], num_items: int, window: int) -> np.ndarray:
    """Symmetric [num_items, num_items] counts, pair (a, b) at distance d ≤ window adds 1/d."""
    if window < 1:
        raise ConfigError("window must be >= 1")
    m = np.zeros((num_items, num_items), dtype=np.float64)
    for s in sequences:
        s = np.asarray(s, dtype=np.int64)
        for d in range(1, min(window, len(s) - 1) + 1):
            a, b = s[:-d], s[d:]
            np.add.at(m, (a, b), 1.0 / d)
            np.add.at(m, (b, a), 1.0 / d)
    return m


def cooccurrence_embeddings(
    sequences: Sequence[Sequence[int]], num_items: int, *, dim: int = 64, window: int = 5
) -> np.ndarray:
    """[num_items, dim] float32 PPMI-SVD embeddings (rows of unseen items are zero). Item indices 0..N-1."""
    m = cooccurrence_matrix(sequences, num_items, window)
    total = m.sum()
    if total <= 0:
        raise ConfigError("no co-occurring items in the training sequences")
    row = m.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(m * total / (row @ row.T))
    ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, 0.0)
    k = min(dim, num_items - 1)
    u, s, _ = np.linalg.svd(ppmi, full_matrices=False)
    emb = u[:, :k] * np.sqrt(s[:k])
    if k < dim:
        emb = np.pad(emb, ((0, 0), (0, dim - k)))
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = np.where(norms > 0, emb / np.maximum(norms, 1e-12), 0.0)
    return emb.astype(np.float32)


def fuse(text: np.ndarray, collab: np.ndarray, weight: float) -> np.ndarray:
    """Concatenate L2-normalised text and collaborative rows with squared-norm shares (1 − w, w)."""
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"collaborative weight must be in [0, 1], got {weight}")
    if text.shape[0] != collab.shape[0]:
        raise ConfigError(f"{text.shape[0]} text rows but {collab.shape[0]} collaborative rows")

    def unit(x):
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return np.where(n > 0, x / np.maximum(n, 1e-12), 0.0)

    return np.concatenate(
        [np.sqrt(1.0 - weight) * unit(text.astype(np.float64)), np.sqrt(weight) * unit(collab.astype(np.float64))],
        axis=1,
    ).astype(np.float32)


def prefix_purity(codes: Mapping[str, Sequence[int]], sequences: Sequence[Sequence[str]]) -> dict:
    """Share of consecutive training pairs (a, b) whose codes agree on the first 1 (and 2) layers, and the
    share expected for two items drawn independently by training popularity."""
    pairs = [(a, b) for s in sequences for a, b in zip(s[:-1], s[1:]) if a in codes and b in codes]
    pop = Counter(i for s in sequences for i in s if i in codes)
    total = sum(pop.values())
    out = {"pairs": len(pairs)}
    for depth in (1, 2):
        same = sum(tuple(codes[a][:depth]) == tuple(codes[b][:depth]) for a, b in pairs)
        mass = Counter()
        for i, n in pop.items():
            mass[tuple(codes[i][:depth])] += n / max(total, 1)
        out[f"prefix{depth}_cooccur"] = same / max(len(pairs), 1)
        out[f"prefix{depth}_random"] = float(sum(p * p for p in mass.values()))
    return out
