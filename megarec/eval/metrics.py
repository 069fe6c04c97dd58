"""Ranking and classification metrics for recommendation evaluation (pure functions, no torch).

Per-sample metrics take a ranked candidate list (best first), a target collection and a cut-off k.
A candidate that repeats an earlier one is ignored (the list is deduplicated, keeping first
occurrences, before it is cut at k), so a beam that returns the same item twice cannot score twice.

"PID-level" variants work on generated code tuples: several items can share one tuple (codebook
collisions), so each tuple is mapped back to items through a `CodeToItems` table, most popular
item first, before the item-level metric is applied.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence

import numpy as np

from megarec.common.errors import MegarecError
from megarec.common.itemic import CodeToItems


class MetricError(MegarecError, ValueError):
    """A metric cannot be computed from the given inputs (e.g. AUC with a single class)."""


def _top_k(ranked: Iterable[Hashable], k: int) -> list:
    """First k distinct candidates of `ranked`, in order."""
    if k <= 0:
        raise MetricError(f"k must be positive, got {k}")
    seen: set = set()
    out: list = []
    for c in ranked:
        if c in seen:
            continue
        seen.add(c)
        out.append(c)
        if len(out) == k:
            break
    return out


def pass_at_k(ranked: Sequence[Hashable], targets: Iterable[Hashable], k: int) -> float:
    """1.0 if any of the top-k candidates is a target, else 0.0 (also 0.0 when there are no targets)."""
    t = set(targets)
    return float(any(c in t for c in _top_k(ranked, k)))


def position1_pass_at_k(ranked: Sequence[Hashable], targets: Sequence[Hashable], k: int) -> float:
    """1.0 if the *first* target (the immediate next item; `targets` is ordered) is in the top k, else 0.0."""
    targets = list(targets)
    if not targets:
        return 0.0
    return float(targets[0] in _top_k(ranked, k))


def recall_at_k(ranked: Sequence[Hashable], targets: Iterable[Hashable], k: int) -> float:
    """|top-k ∩ targets| / |targets| over distinct targets; 0.0 when there are no targets."""
    t = set(targets)
    if not t:
        return 0.0
    return len(t.intersection(_top_k(ranked, k))) / len(t)


def ndcg_at_k(ranked: Sequence[Hashable], targets: Iterable[Hashable], k: int) -> float:
    """Normalised DCG with binary relevance: DCG = Σ_{i≤k, hit} 1/log2(i+1) (i is the 1-based rank),
    divided by the ideal DCG over min(k, |targets|) hits; 0.0 when there are no targets."""
    t = set(targets)
    if not t:
        return 0.0
    dcg = sum(1.0 / math.log2(i + 2) for i, c in enumerate(_top_k(ranked, k)) if c in t)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(t))))
    return dcg / idcg


def mrr(ranked: Sequence[Hashable], targets: Iterable[Hashable], k: int | None = None) -> float:
    """Reciprocal rank (1-based) of the first candidate that is a target, within the top k when k is
    given; 0.0 when none is."""
    t = set(targets)
    cands = _top_k(ranked, k) if k is not None else _top_k(ranked, 1 << 62)
    for i, c in enumerate(cands):
        if c in t:
            return 1.0 / (i + 1)
    return 0.0


def auc(scores: Sequence[float], labels: Sequence[int | bool]) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random negative,
    ties counting one half (Mann-Whitney U with average ranks). Raises MetricError when `labels`
    hold a single class or the lengths differ."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise MetricError(f"auc: {s.size} scores but {y.size} labels")
    if not np.all(np.isfinite(s)):
        raise MetricError("auc: scores must be finite")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MetricError(f"auc is undefined with a single class ({n_pos} positives, {n_neg} negatives)")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Average 1-based rank of each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg = (starts + 1 + ends) / 2.0
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


# ---------------------------------------------------------------------------------------------- batches

PerSample = Callable[[Sequence[Hashable], Iterable[Hashable], int], float]

METRICS: dict[str, PerSample] = {
    "pass": pass_at_k,
    "position1_pass": position1_pass_at_k,
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "mrr": mrr,
}


def mean_metric(
    fn: PerSample, ranked_lists: Sequence[Sequence[Hashable]], target_lists: Sequence[Iterable[Hashable]], k: int
) -> float:
    """Average of a per-sample metric over a batch; raises MetricError on an empty or ragged batch."""
    if len(ranked_lists) != len(target_lists):
        raise MetricError(f"{len(ranked_lists)} ranked lists but {len(target_lists)} target lists")
    if not ranked_lists:
        raise MetricError("cannot average a metric over zero samples")
    return float(sum(fn(r, t, k) for r, t in zip(ranked_lists, target_lists)) / len(ranked_lists))


def batch_metrics(
    ranked_lists: Sequence[Sequence[Hashable]],
    target_lists: Sequence[Sequence[Hashable]],
    ks: Iterable[int] = (1, 5, 10),
    names: Iterable[str] = ("pass", "recall", "ndcg"),
) -> dict[str, float]:
    """{"<name>@<k>": mean} for every metric name in `names` (keys of METRICS) and every k."""
    out: dict[str, float] = {}
    for name in names:
        if name not in METRICS:
            raise MetricError(f"unknown metric {name!r}; choose from {sorted(METRICS)}")
        for k in ks:
            out[f"{name}@{k}"] = mean_metric(METRICS[name], ranked_lists, target_lists, k)
    return out


# ------------------------------------------------------------------------------------------- PID level


def _pid_level(fn: PerSample, doc: str) -> Callable:
    def wrapped(
        ranked_codes: Sequence[Sequence[int]],
        target_items: Iterable[Hashable],
        k: int,
        code_to_items: CodeToItems,
        expand: str = "first",
    ) -> float:
        return fn(code_to_items.rank_items(ranked_codes, expand), target_items, k)

    wrapped.__name__ = "pid_" + fn.__name__
    wrapped.__doc__ = (
        f"PID-level {doc}: map the ranked code tuples to items with `code_to_items` "
        f"(most popular item of each tuple first), then apply `{fn.__name__}`."
    )
    return wrapped


pid_pass_at_k = _pid_level(pass_at_k, "pass@k")
pid_position1_pass_at_k = _pid_level(position1_pass_at_k, "position-1 pass@k")
pid_recall_at_k = _pid_level(recall_at_k, "recall@k")
pid_ndcg_at_k = _pid_level(ndcg_at_k, "NDCG@k")
