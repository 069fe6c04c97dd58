"""Amazon review dumps (the standard 5-core review JSON lines plus product metadata).

Reviews: one JSON object per line with reviewerID, asin, overall (1-5), unixReviewTime, and optionally
reviewText / summary. Metadata: one object per line with asin, title, categories (2014: list of lists)
or category (2018: list), description (string or list); the 2014 dumps write Python literals rather
than JSON, which is accepted too. Files may be gzip-compressed. In a directory, files whose name starts
with "meta" are metadata and the other .json/.jsonl(.gz) files are reviews.
Ratings >= 4 → purchase + like, <= 2 → purchase + dislike, else purchase; the review text becomes the
interaction's explanation.
"""

from __future__ import annotations

import ast
import glob
import json
import os
from collections import defaultdict

from megarec.common.errors import DataError
from megarec.common.io import open_text
from megarec.rawdata.schema import DropReport, RecLog, ViolationPolicy, validate

DOMAIN = "product"
MAX_EXPLANATION_CHARS = 600
MAX_DESCRIPTION_CHARS = 300


def find_files(data_dir: str) -> tuple[list[str], list[str]]:
    """(review files, metadata files) in a directory."""
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: Amazon data directory not found")
    files = sorted(
        f for pat in ("*.json", "*.jsonl", "*.json.gz", "*.jsonl.gz") for f in glob.glob(os.path.join(data_dir, pat))
    )
    meta = [f for f in files if os.path.basename(f).lower().startswith("meta")]
    reviews = [f for f in files if f not in meta]
    if not reviews:
        raise DataError(f"{data_dir}: no review files (*.json, *.jsonl, optionally .gz)")
    return reviews, meta


def _records(path: str, policy: ViolationPolicy):
    with open_text(path) as f:
        for row, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                try:
                    rec = ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    policy.violation(path, row, "<row>", "invalid JSON", "neither JSON nor a Python literal")
                    continue
            if not isinstance(rec, dict):
                policy.violation(path, row, "<row>", "invalid JSON", "expected an object")
                continue
            yield row, rec


def _text(value) -> str:
    if isinstance(value, list):
        value = " ".join(str(v) for v in value if v)
    return " ".join(str(value or "").split())


def _caption(meta: dict) -> str | None:
    title = _text(meta.get("title"))
    cats = meta.get("categories") or meta.get("category") or []
    if cats and isinstance(cats[0], list):
        cats = cats[0]
    cats = [_text(c) for c in cats if _text(c)]
    desc = _text(meta.get("description"))[:MAX_DESCRIPTION_CHARS]
    parts = [title] if title else []
    if cats:
        parts.append("Category: " + " > ".join(cats))
    if desc:
        parts.append(desc)
    return ". ".join(parts) or None


def load_amazon(data_dir: str, *, on_error: str = "fail") -> RecLog:
    """An Amazon review dump directory as a RecLog (domain "product")."""
    reviews, meta_files = find_files(data_dir)
    report = DropReport()
    policy = ViolationPolicy(on_error, report)
    meta: dict[str, tuple[str, int, dict]] = {}
    for path in meta_files:
        for row, rec in _records(path, policy):
            asin = rec.get("asin")
            if not isinstance(asin, str) or not asin:
                policy.violation(path, row, "asin", "missing required field", "missing asin")
                continue
            meta.setdefault(asin, (path, row, rec))

    events = defaultdict(list)
    first = {}
    item_origin: dict[str, tuple[str, int]] = {}
    for path in reviews:
        for row, rec in _records(path, policy):
            missing = [k for k in ("reviewerID", "asin", "overall", "unixReviewTime") if rec.get(k) in (None, "")]
            if missing:
                policy.violation(path, row, missing[0], "missing required field", "missing required field")
                continue
            try:
                rating, ts = float(rec["overall"]), int(rec["unixReviewTime"])
            except (TypeError, ValueError):
                policy.violation(path, row, "overall/unixReviewTime", "wrong type", "expected numbers")
                continue
            labels = ["purchase"] + (["like"] if rating >= 4 else ["dislike"] if rating <= 2 else [])
            ev = {"item_id": str(rec["asin"]), "ts": ts, "labels": labels}
            text = _text(rec.get("reviewText")) or _text(rec.get("summary"))
            if text:
                ev["explanation"] = text[:MAX_EXPLANATION_CHARS]
            user = str(rec["reviewerID"])
            events[user].append((ts, len(events[user]), ev))
            first.setdefault(user, (path, row))
            item_origin.setdefault(ev["item_id"], (path, row))

    def items():
        for asin, (path, row) in item_origin.items():
            m = meta.get(asin)
            caption = _caption(m[2]) if m else None
            attrs = {"title": _text(m[2].get("title"))} if m else {}
            yield (
                (m[0], m[1], {"item_id": asin, "domain": DOMAIN, "caption": caption, "attributes": attrs})
                if m
                else (path, row, {"item_id": asin, "domain": DOMAIN, "caption": None})
            )

    def users():
        for user, (path, row) in first.items():
            hist = [ev for _, _, ev in sorted(events[user], key=lambda x: (x[0], x[1]))]
            yield path, row, {"user_id": user, "histories": {DOMAIN: hist}}

    return validate(items(), users(), on_error=on_error, name=f"amazon:{data_dir}", report=report)
