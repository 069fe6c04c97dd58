"""MovieLens-100k adapter. The data ships inside the `recbole==1.2.1` wheel on PyPI
(recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}); it is fetched at run time with
`pip download --no-deps` and cached under $MEGAREC_CACHE/ml-100k (its licence forbids redistribution,
so it is never committed). Items are movies described by title, year and genres; ratings >= 4 count as
"like", <= 2 as "dislike"; the builder's leave-one-out split is the usual protocol for this data.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections import defaultdict

from megarec.common.cache import cache_root, pip_download_wheel, temp_dir
from megarec.common.errors import DataError
from megarec.common.io import atomic_open
from megarec.rawdata.schema import DropReport, RecLog, ViolationPolicy, validate

RECBOLE_REQUIREMENT = "recbole==1.2.1"
MEMBER_DIR = "recbole/dataset_example/ml-100k/"
FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
DOMAIN = "movie"
GENDER = {"M": "male", "F": "female"}


def extract_from_wheel(wheel: str, out_dir: str) -> str:
    """Copy the three ml-100k files out of a recbole wheel (zip) into out_dir (atomically each)."""
    os.makedirs(out_dir, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for fname in FILES:
            member = MEMBER_DIR + fname
            if member not in names:
                raise DataError(f"{wheel}: member {member} not found")
            with zf.open(member) as src, atomic_open(os.path.join(out_dir, fname), "wb") as dst:
                shutil.copyfileobj(src, dst)
    return out_dir


def ensure_ml100k(cache_dir: str | None = None, wheel: str | None = None) -> str:
    """Directory holding ml-100k.{inter,item,user}; downloads the recbole wheel once if needed."""
    out = os.path.join(cache_root(cache_dir), "ml-100k")
    if all(os.path.isfile(os.path.join(out, f)) for f in FILES):
        return out
    if wheel:
        return extract_from_wheel(wheel, out)
    with temp_dir("megarec-recbole-") as tmp:
        return extract_from_wheel(pip_download_wheel(RECBOLE_REQUIREMENT, tmp), out)


def _table(path: str):
    """(row, {column: value}) of a recbole atomic file (tab separated, header 'name:type')."""
    with open(path, encoding="utf-8", errors="replace") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        for i, line in enumerate(f, start=2):
            if line.strip():
                yield i, dict(zip(header, line.rstrip("\n").split("\t")))


def load_ml100k(data_dir: str | None = None, *, cache_dir: str | None = None, on_error: str = "fail") -> RecLog:
    """MovieLens-100k as a RecLog (domain "movie")."""
    data_dir = data_dir or ensure_ml100k(cache_dir)
    report = DropReport()
    policy = ViolationPolicy(on_error, report)
    inter_path, item_path, user_path = (os.path.join(data_dir, f) for f in FILES)

    items = []
    for row, rec in _table(item_path):
        title = (rec.get("movie_title") or "").strip()
        year = (rec.get("release_year") or "").strip()
        genres = (rec.get("class") or "").split()
        caption = f"{title} ({year})" if year else title
        if genres:
            caption += ". Genres: " + ", ".join(genres) + "."
        items.append(
            (
                item_path,
                row,
                {
                    "item_id": rec.get("item_id"),
                    "domain": DOMAIN,
                    "caption": caption or None,
                    "attributes": {"title": title, "year": year, "genres": genres},
                },
            )
        )

    profiles = {}
    for _row, rec in _table(user_path):
        gender = GENDER.get(rec.get("gender", ""), "person")
        profiles[rec.get("user_id")] = (
            f"A {rec.get('age', '?')}-year-old {gender}, occupation: {rec.get('occupation', 'unknown')}."
        )

    events = defaultdict(list)
    first_row = {}
    for row, rec in _table(inter_path):
        try:
            user, item = rec["user_id"], rec["item_id"]
            rating, ts = float(rec["rating"]), int(float(rec["timestamp"]))
        except (KeyError, ValueError):
            policy.violation(inter_path, row, "rating/timestamp", "malformed interaction", "expected numbers")
            continue
        labels = ["like"] if rating >= 4 else (["dislike"] if rating <= 2 else [])
        events[user].append((ts, row, {"item_id": item, "ts": ts, "labels": labels}))
        first_row.setdefault(user, row)

    def users():
        for user in sorted(events, key=lambda u: first_row[u]):
            hist = [ev for _, _, ev in sorted(events[user], key=lambda x: (x[0], x[1]))]
            rec = {"user_id": user, "histories": {DOMAIN: hist}}
            if profiles.get(user):
                rec["profile"] = profiles[user]
            yield inter_path, first_row[user], rec

    return validate(items, users(), on_error=on_error, name="ml-100k", report=report)
