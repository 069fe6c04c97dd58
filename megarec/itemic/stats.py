"""Codebook quality numbers: per-layer utilisation, collision rate and reconstruction error.

* utilisation = distinct codes used in a layer / codebook size; perplexity = exp(entropy of code usage).
* collision_rate = fraction of items whose full code tuple is shared with at least one other item;
  unique_tuple_rate = distinct tuples / items.
* relative_mse = Σ‖x − x̂‖² / Σ‖x − mean(x)‖² (fraction of variance left unexplained), on the normalised
  embeddings, after each k-means layer (cumulative).
"""
from __future__ import annotations

import numpy as np


def layer_usage(codes: np.ndarray, codebook_size: int) -> list[dict]:
    out = []
    for j in range(codes.shape[1]):
        counts = np.bincount(codes[:, j], minlength=codebook_size)
        p = counts[counts > 0] / max(len(codes), 1)
        out.append({
            "layer": j + 1,
            "used_codes": int((counts > 0).sum()),
            "utilisation": float((counts > 0).sum() / codebook_size),
            "perplexity": float(np.exp(-(p * np.log(p)).sum())) if len(p) else 0.0,
            "max_items_per_code": int(counts.max()) if len(counts) else 0,
        })
    return out


def collisions(codes: np.ndarray) -> dict:
    n = len(codes)
    if n == 0:
        return {"items": 0, "unique_tuples": 0, "unique_tuple_rate": 1.0, "colliding_items": 0,
                "collision_rate": 0.0, "largest_group": 0}
    _, inv, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    shared = counts[inv.reshape(-1)] > 1
    return {
        "items": int(n),
        "unique_tuples": int(len(counts)),
        "unique_tuple_rate": float(len(counts) / n),
        "colliding_items": int(shared.sum()),
        "collision_rate": float(shared.sum() / n),
        "largest_group": int(counts.max()),
    }


def code_stats(codes: np.ndarray, codebook_size: int) -> dict:
    return {"layers": layer_usage(codes, codebook_size), "collisions": collisions(codes)}


def relative_mse(layer_sse: np.ndarray, total_ss: float) -> list[float]:
    denom = total_ss if total_ss > 0 else float("nan")
    return [float(s / denom) for s in layer_sse]
