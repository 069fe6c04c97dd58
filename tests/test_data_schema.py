"""Raw log schema: valid logs load from JSONL and parquet; violations fail naming file, row and field, or
are dropped and reported."""

from __future__ import annotations

import pytest

from megarec.common.errors import DataError
from megarec.rawdata.schema import load_reclog

from data_helpers import write_jsonl

ITEMS = [
    {"item_id": "v1", "domain": "video", "caption": "cats"},
    {"item_id": "v2", "domain": "video", "caption": "dogs", "codes": [1, 2, 3]},
    {"item_id": "p1", "domain": "product", "caption": "a lamp"},
]


def user(uid="u1", **over):
    rec = {
        "user_id": uid,
        "profile": "likes pets",
        "histories": {
            "video": [
                {"item_id": "v1", "ts": 1, "labels": ["like", "long-view"]},
                {"item_id": "v2", "ts": 5, "labels": []},
            ],
            "product": [{"item_id": "p1", "ts": 3, "labels": ["purchase"], "explanation": "bright"}],
        },
        "searches": [{"query": "cat videos", "ts": 2, "item_ids": ["v1"]}],
    }
    rec.update(over)
    return rec


def _files(tmp_path, users, items=ITEMS):
    return write_jsonl(str(tmp_path / "items.jsonl"), items), write_jsonl(str(tmp_path / "users.jsonl"), users)


def test_valid_log_jsonl_and_parquet(tmp_path):
    items, users = _files(tmp_path, [user()])
    log = load_reclog(items, users)
    assert set(log.items) == {"v1", "v2", "p1"} and log.items["v2"].codes == (1, 2, 3)
    u = log.users[0]
    assert [x.item_id for x in u.histories["video"]] == ["v1", "v2"]
    assert u.histories["video"][0].labels == ("like", "long_view")
    assert u.searches[0].item_ids == ("v1",) and log.report.total == 0

    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([dict(i) for i in ITEMS]), tmp_path / "items.parquet")
    pq.write_table(
        pa.Table.from_pylist([{"user_id": "u1", "histories": json.dumps(user()["histories"])}]),
        tmp_path / "users.parquet",
    )
    log2 = load_reclog(str(tmp_path / "items.parquet"), str(tmp_path / "users.parquet"))
    assert log2.users[0].histories == u.histories


@pytest.mark.parametrize(
    "bad,field,reason",
    [
        ({"histories": {"video": [{"item_id": "zz", "ts": 1}]}}, "histories.video[0].item_id", "unknown item id"),
        (
            {"histories": {"video": [{"item_id": "v1", "ts": 9}, {"item_id": "v2", "ts": 2}]}},
            "histories.video[1].ts",
            "history not in time order",
        ),
        ({"histories": None}, "histories", "missing required field"),
        (
            {"histories": {"product": [{"item_id": "v1", "ts": 1}]}},
            "histories.product[0].item_id",
            "item of another domain",
        ),
        (
            {"histories": {"video": [{"item_id": "v1", "ts": 1, "labels": ["love"]}]}},
            "histories.video[0].labels",
            "unknown behaviour label",
        ),
    ],
)
def test_violations_fail_or_drop(tmp_path, bad, field, reason):
    items, users = _files(tmp_path, [user("ok"), user("bad", **bad)])
    with pytest.raises(DataError) as e:
        load_reclog(items, users)
    assert f"users.jsonl: row 2: field '{field}'" in str(e.value)
    log = load_reclog(items, users, on_error="drop")
    assert log.report.counts[reason] == 1
    assert reason in log.report.to_dict()["counts"]
    assert "ok" in [u.user_id for u in log.users]


def test_missing_item_field_and_duplicates(tmp_path):
    items, users = _files(tmp_path, [user(), user()], ITEMS + [{"item_id": "x"}])
    with pytest.raises(DataError, match=r"items.jsonl: row 4: field 'domain': missing required field"):
        load_reclog(items, users)
    log = load_reclog(items, users, on_error="drop")
    assert log.report.counts == {"missing required field": 1, "duplicate id": 1}
    assert len(log.users) == 1
