"""Pop: rank every item by its number of training interactions (the same list for every user)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class PopRecommender:
    """Counts item occurrences in the training sequences; scores = counts (ties keep item order)."""

    def __init__(self, num_items: int):
        self.num_items = num_items
        self.counts = torch.zeros(num_items + 1)

    def fit(self, train_sequences: Sequence[np.ndarray]) -> "PopRecommender":
        if train_sequences:
            flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in train_sequences])
            self.counts = torch.from_numpy(
                np.bincount(flat, minlength=self.num_items + 1)[: self.num_items + 1]
            ).float()
        return self

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """[B, num_items + 1] popularity scores."""
        return self.counts.expand(len(histories), -1)
