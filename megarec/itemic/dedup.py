"""Collision resolution: give every item a unique code tuple.

Methods:
  * ``last-layer`` (default): in each group of items sharing all codes, the item nearest its last-layer
    centroid keeps the tuple; every other item moves, within the same prefix (c1..c_{L-1}), to the nearest
    last-layer centroid whose full tuple is still free. Token layout and sequence length stay unchanged.
  * ``extra-layer``: append one code that numbers the items of each group (0 for the nearest, 1, 2, ...);
    the tuple gets one more token, and that code carries no geometric meaning.
  * ``none``: keep raw nearest-centroid codes (collisions stay; `stats` reports them).

Items marked `fixed` (e.g. items already in a codes table) never change; their tuples count as taken.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from megarec.common.errors import ConfigError, DataError
from megarec.itemic import kmeans as km
from megarec.itemic.stats import tuple_groups

DEDUP_METHODS = ("last-layer", "extra-layer", "none")


def _group_ids(codes: np.ndarray) -> np.ndarray:
    """Dense group index per row for identical rows of `codes` (all rows in one group when it has 0 columns)."""
    return tuple_groups(codes)[0]


def _movers(codes: np.ndarray, last_dist: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Rows that must leave their tuple: all non-fixed rows sharing it, except one keeper when none is fixed."""
    group = _group_ids(codes)
    n_groups = int(group.max()) + 1 if len(group) else 0
    size = np.bincount(group, minlength=n_groups)
    has_fixed = np.bincount(group, weights=fixed.astype(np.float64), minlength=n_groups) > 0
    candidates = np.flatnonzero((size[group] > 1) & ~fixed)
    if len(candidates) == 0:
        return candidates
    # keeper = nearest (then lowest row) non-fixed member of each group without fixed members
    order = candidates[np.lexsort((candidates, last_dist[candidates], group[candidates]))]
    first_of_group = np.ones(len(order), dtype=bool)
    first_of_group[1:] = group[order[1:]] != group[order[:-1]]
    keep = first_of_group & ~has_fixed[group[order]]
    return np.sort(order[~keep])


def resolve_last_layer(
    codes: np.ndarray,
    last_dist: np.ndarray,
    fixed: np.ndarray,
    last_centroids: np.ndarray,
    residual_fn: Callable[[np.ndarray], np.ndarray],
    *,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-assign colliding items to the nearest free last-layer code with the same prefix.

    `residual_fn(rows)` returns the residual that entered the last layer for those rows.
    Returns (new codes, moved rows, new squared last-layer error of the moved rows)."""
    codes = codes.copy()
    movers = _movers(codes, last_dist, fixed)
    if len(movers) == 0:
        return codes, movers, np.zeros(0, dtype=np.float32)
    movers = movers[np.lexsort((movers, last_dist[movers]))]  # nearest-to-centroid movers choose first
    n_layers, k = codes.shape[1], len(last_centroids)
    prefix = _group_ids(codes[:, : n_layers - 1])
    mover_set = np.zeros(len(codes), dtype=bool)
    mover_set[movers] = True
    involved = np.isin(prefix, np.unique(prefix[movers])) & ~mover_set
    taken: dict[int, set[int]] = {}
    for p, c in zip(prefix[involved].tolist(), codes[involved, -1].tolist()):
        taken.setdefault(p, set()).add(c)
    new_dist = np.empty(len(movers), dtype=np.float32)
    for s in range(0, len(movers), chunk):
        rows = movers[s : s + chunk]
        order, dist = km.sorted_candidates(residual_fn(rows), last_centroids)
        for j, row in enumerate(rows.tolist()):
            used = taken.setdefault(int(prefix[row]), set())
            if len(used) >= k:
                prefix_codes = ", ".join(str(int(c)) for c in codes[row, :-1])
                raise DataError(
                    f"items with prefix codes ({prefix_codes}) need more than {k} last-layer codes; "
                    "use --dedup extra-layer or a larger --codebook-size"
                )
            for rank, cand in enumerate(order[j].tolist()):
                if cand not in used:
                    used.add(cand)
                    codes[row, -1] = cand
                    new_dist[s + j] = dist[j, rank]
                    break
    return codes, movers, new_dist


def add_extra_layer(
    codes: np.ndarray,
    last_dist: np.ndarray,
    fixed: np.ndarray,
    codebook_size: int,
    fixed_extra: np.ndarray | None = None,
) -> np.ndarray:
    """Append a disambiguation code: items sharing all k-means codes get 0, 1, 2, ... nearest first.

    Fixed rows keep `fixed_extra` (their existing extra code); other rows get the smallest free numbers."""
    group = _group_ids(codes)
    extra = np.full(len(codes), -1, dtype=np.int64)
    taken: dict[int, set[int]] = {}
    if fixed_extra is not None:
        extra[fixed] = fixed_extra[fixed]
        for g, e in zip(group[fixed].tolist(), fixed_extra[fixed].tolist()):
            taken.setdefault(g, set()).add(e)
    free = np.flatnonzero(~fixed)
    free = free[np.lexsort((free, last_dist[free], group[free]))]
    next_code: dict[int, int] = {}
    for row in free.tolist():
        g = int(group[row])
        used = taken.setdefault(g, set())
        e = next_code.get(g, 0)
        while e in used:
            e += 1
        if e >= codebook_size:
            raise DataError(
                f"{int((group == g).sum())} items share codes {tuple(int(c) for c in codes[row])}: "
                f"more than the {codebook_size} values an extra layer can number"
            )
        used.add(e)
        next_code[g] = e + 1
        extra[row] = e
    return np.concatenate([codes, extra[:, None]], axis=1)


def check_method(method: str) -> None:
    if method not in DEDUP_METHODS:
        raise ConfigError(f"--dedup must be one of {', '.join(DEDUP_METHODS)}, got {method!r}")
