"""Full-ranking evaluation for leave-one-out sequential recommendation: every model scores every item,
items already in the user's history are excluded (the common protocol; no repeat consumption in
MovieLens), and Recall@k / NDCG@k are computed on the top of the ranking with `megarec.eval.metrics`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from megarec.eval.metrics import ndcg_at_k, recall_at_k

ScoreFn = Callable[[list[np.ndarray]], torch.Tensor]  # histories → scores [B, num_items + 1] (column 0 = pad)

DEFAULT_KS = (5, 10)


def top_k_full_ranking(
    score_fn: ScoreFn,
    histories: Sequence[np.ndarray],
    num_items: int,
    k: int,
    *,
    exclude_history: bool = True,
    batch_size: int = 256,
) -> list[list[int]]:
    """Top-k item indices (1..num_items) per history, best first."""
    out: list[list[int]] = []
    for s in range(0, len(histories), batch_size):
        batch = list(histories[s : s + batch_size])
        scores = score_fn(batch).float().clone()
        if scores.shape[1] != num_items + 1:
            raise ValueError(f"score function returned {scores.shape[1]} columns, expected {num_items + 1}")
        scores[:, 0] = float("-inf")
        if exclude_history:
            for i, h in enumerate(batch):
                if len(h):
                    scores[i, torch.as_tensor(h, dtype=torch.long)] = float("-inf")
        top = torch.topk(scores, min(k, num_items), dim=1)
        for vals, idx in zip(top.values.tolist(), top.indices.tolist()):
            out.append([i for v, i in zip(vals, idx) if v != float("-inf")])  # never an excluded item
    return out


def ranking_metrics(
    top: Sequence[Sequence[int]], targets: Sequence[int], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """{"recall@k", "ndcg@k"} averaged over users (one target per user)."""
    out = {}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean([recall_at_k(t, [y], k) for t, y in zip(top, targets)]))
        out[f"ndcg@{k}"] = float(np.mean([ndcg_at_k(t, [y], k) for t, y in zip(top, targets)]))
    return out


def evaluate_full_ranking(
    score_fn: ScoreFn,
    histories: Sequence[np.ndarray],
    targets: Sequence[int],
    num_items: int,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    exclude_history: bool = True,
) -> dict[str, float]:
    """Recall@k and NDCG@k of a scoring function under full ranking."""
    top = top_k_full_ranking(score_fn, histories, num_items, max(ks), exclude_history=exclude_history)
    return ranking_metrics(top, [int(t) for t in targets], ks)
