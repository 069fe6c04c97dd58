"""Ranking metrics on hand-computed cases; AUC against scikit-learn (with ties)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from megarec.eval import metrics as M


def test_pass_and_position1():
    ranked = ["a", "b", "c", "d"]
    assert M.pass_at_k(ranked, {"c", "z"}, 2) == 0.0
    assert M.pass_at_k(ranked, {"c", "z"}, 3) == 1.0
    assert M.pass_at_k(ranked, set(), 3) == 0.0
    # position-1 only looks at the first (ordered) target
    assert M.position1_pass_at_k(ranked, ["z", "a"], 4) == 0.0
    assert M.position1_pass_at_k(ranked, ["b", "z"], 2) == 1.0
    assert M.position1_pass_at_k(ranked, ["b", "z"], 1) == 0.0


def test_recall_ndcg_mrr_exact():
    ranked = [1, 2, 3, 4, 5]
    targets = {2, 5, 9}
    assert M.recall_at_k(ranked, targets, 2) == pytest.approx(1 / 3)
    assert M.recall_at_k(ranked, targets, 5) == pytest.approx(2 / 3)
    # hits at ranks 2 and 5; ideal: min(5, 3) = 3 hits at ranks 1..3
    dcg = 1 / math.log2(3) + 1 / math.log2(6)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert M.ndcg_at_k(ranked, targets, 5) == pytest.approx(dcg / idcg)
    # k=2: ideal over min(2, 3) = 2
    assert M.ndcg_at_k(ranked, targets, 2) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    # single target at rank 1 -> 1.0; at rank 3 -> 1/log2(4) = 0.5
    assert M.ndcg_at_k(ranked, {1}, 10) == 1.0
    assert M.ndcg_at_k(ranked, {3}, 10) == pytest.approx(0.5)
    assert M.mrr(ranked, targets) == 0.5
    assert M.mrr(ranked, {5}, k=4) == 0.0
    assert M.mrr(ranked, {5}) == pytest.approx(0.2)


def test_duplicates_do_not_score_twice():
    ranked = ["a", "a", "b"]
    assert M.recall_at_k(ranked, {"a", "b"}, 2) == 1.0  # dedup then cut: top-2 = [a, b]
    assert M.ndcg_at_k(ranked, {"a"}, 2) == 1.0


def test_batch_helpers():
    ranked = [[1, 2], [3, 4]]
    targets = [[2], [9]]
    out = M.batch_metrics(ranked, targets, ks=(1, 2), names=("pass", "recall"))
    assert out == {"pass@1": 0.0, "pass@2": 0.5, "recall@1": 0.0, "recall@2": 0.5}
    with pytest.raises(M.MetricError):
        M.mean_metric(M.pass_at_k, [], [], 1)
    with pytest.raises(M.MetricError):
        M.batch_metrics(ranked, targets, names=("nope",))


def test_auc_exact_and_errors():
    assert M.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert M.auc([0.5, 0.5], [0, 1]) == 0.5  # a tie counts half
    with pytest.raises(M.MetricError):
        M.auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError):  # MetricError is also a ValueError
        M.auc([0.1, 0.2], [0, 0])


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    n = 300
    scores = np.round(rng.random(n), 1)  # only 11 distinct values: many ties
    labels = (rng.random(n) < 0.3 + 0.4 * scores).astype(int)
    assert M.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    cont = rng.normal(size=n)
    assert M.auc(cont, labels) == pytest.approx(roc_auc_score(labels, cont), abs=1e-12)


def test_pid_level_maps_shared_tuples_to_most_popular():
    codes = {10: (1, 2, 3), 11: (1, 2, 3), 12: (4, 5, 6), 13: (7, 8, 9)}
    pop = {10: 5, 11: 50, 12: 1}
    c2i = M.CodeToItems(codes, pop)
    assert c2i.items((1, 2, 3)) == [11, 10]
    ranked_codes = [(1, 2, 3), (0, 0, 0), (4, 5, 6)]
    assert c2i.rank_items(ranked_codes) == [11, 12]
    assert c2i.rank_items(ranked_codes, expand="all") == [11, 10, 12]
    assert M.pid_pass_at_k(ranked_codes, {10}, 5, c2i) == 0.0  # 10 loses the tuple to the popular 11
    assert M.pid_pass_at_k(ranked_codes, {10}, 5, c2i, expand="all") == 1.0
    assert M.pid_recall_at_k(ranked_codes, {11, 12}, 2, c2i) == 1.0
    assert M.pid_position1_pass_at_k(ranked_codes, [12, 11], 1, c2i) == 0.0
    assert M.pid_ndcg_at_k(ranked_codes, {12}, 2, c2i) == pytest.approx(1 / math.log2(3))
