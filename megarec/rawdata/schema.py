"""Raw recommendation-log schema: items, users with time-ordered per-domain histories, validation.

Items table (one JSON object / parquet row per item)::

    item_id   str   required, unique
    domain    str   required (e.g. "video", "ad", "product", "movie")
    caption   str   optional item text (title, description); needed by caption tasks
    codes     [int] optional itemic codes (c1..cL); usually supplied separately (codes table)
    attributes dict optional free-form metadata (kept, not interpreted)

Users table::

    user_id   str   required, unique
    split     str   optional "train" | "test" (else assigned by the builder's seeded split)
    profile   str   optional free-text persona
    histories {domain: [interaction, ...]}  required; each list in non-decreasing time order
        interaction = {"item_id": str, "ts": int, "labels": [str], "explanation": str?}
        labels ⊂ BEHAVIOUR_LABELS ("long-view" is accepted for "long_view")
    searches  [{"query": str, "ts": int, "item_ids": [str]}]  optional search keywords → items

Violations (missing required field, wrong type, unknown item id, item of another domain, history not in
time order, unknown behaviour label, duplicate id) raise `DataError` naming file, row and field when
`on_error="fail"`; with `on_error="drop"` the offending interaction (unknown/mismatched item, bad label)
or row (everything else) is dropped and counted in a `DropReport`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from megarec.common.errors import DataError

BEHAVIOUR_LABELS = ("like", "follow", "comment", "long_view", "dislike", "click", "purchase")
_LABEL_ALIASES = {"long-view": "long_view", "longview": "long_view"}
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Item:
    item_id: str
    domain: str
    caption: Optional[str] = None
    codes: Optional[tuple[int, ...]] = None
    attributes: dict = field(default_factory=dict, compare=False, hash=False)

    def to_record(self) -> dict:
        rec: dict[str, Any] = {"item_id": self.item_id, "domain": self.domain, "caption": self.caption}
        if self.codes is not None:
            rec["codes"] = list(self.codes)
        if self.attributes:
            rec["attributes"] = self.attributes
        return rec


@dataclass(frozen=True)
class Interaction:
    item_id: str
    ts: int
    labels: tuple[str, ...] = ()
    explanation: Optional[str] = None

    def to_record(self) -> dict:
        rec: dict[str, Any] = {"item_id": self.item_id, "ts": self.ts, "labels": list(self.labels)}
        if self.explanation:
            rec["explanation"] = self.explanation
        return rec


@dataclass(frozen=True)
class Search:
    query: str
    ts: int
    item_ids: tuple[str, ...]

    def to_record(self) -> dict:
        return {"query": self.query, "ts": self.ts, "item_ids": list(self.item_ids)}


@dataclass
class User:
    user_id: str
    histories: dict[str, list[Interaction]]
    split: Optional[str] = None
    profile: Optional[str] = None
    searches: list[Search] = field(default_factory=list)

    def to_record(self) -> dict:
        rec: dict[str, Any] = {"user_id": self.user_id}
        if self.split:
            rec["split"] = self.split
        if self.profile:
            rec["profile"] = self.profile
        rec["histories"] = {d: [x.to_record() for x in h] for d, h in self.histories.items()}
        if self.searches:
            rec["searches"] = [s.to_record() for s in self.searches]
        return rec


@dataclass
class DropReport:
    """What validation dropped, and why (counts per reason plus a few examples)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "counts": dict(sorted(self.counts.items())),
            "examples": {k: v for k, v in sorted(self.examples.items())},
        }

    def summary(self) -> str:
        if not self.counts:
            return "nothing dropped"
        return "dropped " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))


@dataclass
class RecLog:
    """A validated recommendation log: item catalogue plus users."""

    items: dict[str, Item]
    users: list[User]
    report: DropReport = field(default_factory=DropReport)
    name: str = "log"

    @property
    def domains(self) -> list[str]:
        return sorted({it.domain for it in self.items.values()})


class ViolationPolicy:
    """Raise (fail) or record (drop) a violation found at file/row/field."""

    def __init__(self, on_error: str, report: DropReport):
        if on_error not in ("fail", "drop"):
            raise DataError(f"on_error must be 'fail' or 'drop', got {on_error!r}")
        self.fail = on_error == "fail"
        self.report = report

    def violation(self, path: str, row: int, fld: str, reason: str, message: str) -> None:
        where = f"{path}: row {row}: field '{fld}'"
        if self.fail:
            raise DataError(f"{where}: {message}")
        self.report.add(reason, f"{where}: {message}")


def _as_json(value: Any) -> Any:
    """Parquet tables may carry nested fields as JSON strings; decode those."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _as_mapping(value: Any) -> Any:
    """pyarrow turns map columns into [(key, value), ...]; accept that as a dict."""
    value = _as_json(value)
    if isinstance(value, list) and all(isinstance(x, (list, tuple)) and len(x) == 2 for x in value):
        return {k: v for k, v in value}
    return value


def _require_str(
    rec: dict, key: str, path: str, row: int, policy: ViolationPolicy, *, optional: bool = False
) -> Optional[str]:
    value = rec.get(key)
    if value is None:
        if not optional:
            policy.violation(path, row, key, "missing required field", "missing required field")
        return None
    if isinstance(value, (int,)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or (not optional and not value):
        policy.violation(path, row, key, "wrong type", f"expected a non-empty string, got {value!r:.60}")
        return None
    return value


class _Skip(Exception):
    """Row dropped (already reported)."""


def parse_item(rec: dict, path: str, row: int, policy: ViolationPolicy) -> Optional[Item]:
    """Validate one item row; None when dropped."""

    def need(value):
        if value is None:
            raise _Skip
        return value

    try:
        item_id = need(_require_str(rec, "item_id", path, row, policy))
        domain = need(_require_str(rec, "domain", path, row, policy))
        caption = rec.get("caption")
        if caption is not None and not isinstance(caption, str):
            policy.violation(path, row, "caption", "wrong type", "expected a string")
            raise _Skip
        codes = _as_json(rec.get("codes"))
        if codes is not None:
            if (
                not isinstance(codes, (list, tuple))
                or not codes
                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in codes)
            ):
                policy.violation(path, row, "codes", "wrong type", "expected a non-empty list of non-negative ints")
                raise _Skip
            codes = tuple(int(c) for c in codes)
        attributes = _as_mapping(rec.get("attributes")) or {}
        if not isinstance(attributes, dict):
            policy.violation(path, row, "attributes", "wrong type", "expected an object")
            raise _Skip
    except _Skip:
        return None
    return Item(item_id, domain, caption or None, codes, attributes)


def _normalise_labels(raw: Any) -> Optional[tuple[str, ...]]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)):
        return None
    out = []
    for lab in raw:
        if not isinstance(lab, str):
            return None
        lab = _LABEL_ALIASES.get(lab.strip().lower(), lab.strip().lower())
        if lab not in BEHAVIOUR_LABELS:
            return None
        if lab not in out:
            out.append(lab)
    return tuple(out)


def _as_int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def parse_user(rec: dict, path: str, row: int, policy: ViolationPolicy, items: dict[str, Item]) -> Optional[User]:
    """Validate one user row against the item catalogue; None when the whole row is dropped."""
    try:
        user_id = _require_str(rec, "user_id", path, row, policy)
        if user_id is None:
            raise _Skip
        split = rec.get("split")
        if split is not None and split not in SPLITS:
            policy.violation(path, row, "split", "bad split", f"expected one of {SPLITS}, got {split!r}")
            raise _Skip
        profile = rec.get("profile")
        if profile is not None and not isinstance(profile, str):
            policy.violation(path, row, "profile", "wrong type", "expected a string")
            raise _Skip
        raw_hist = _as_mapping(rec.get("histories"))
        if raw_hist is None:
            policy.violation(path, row, "histories", "missing required field", "missing required field")
            raise _Skip
        if not isinstance(raw_hist, dict):
            policy.violation(path, row, "histories", "wrong type", "expected an object {domain: [interactions]}")
            raise _Skip
        histories: dict[str, list[Interaction]] = {}
        for domain, events in raw_hist.items():
            fld = f"histories.{domain}"
            if not isinstance(events, (list, tuple)):
                policy.violation(path, row, fld, "wrong type", "expected a list of interactions")
                raise _Skip
            out: list[Interaction] = []
            last_ts = None
            for k, ev in enumerate(events):
                efld = f"{fld}[{k}]"
                if not isinstance(ev, dict):
                    policy.violation(path, row, efld, "wrong type", "expected an object")
                    raise _Skip
                item_id = ev.get("item_id")
                if isinstance(item_id, int) and not isinstance(item_id, bool):
                    item_id = str(item_id)
                ts = _as_int(ev.get("ts"))
                if not isinstance(item_id, str) or not item_id:
                    policy.violation(path, row, efld + ".item_id", "missing required field", "missing item_id")
                    raise _Skip
                if ts is None:
                    policy.violation(
                        path,
                        row,
                        efld + ".ts",
                        "missing required field",
                        f"expected an integer timestamp, got {ev.get('ts')!r}",
                    )
                    raise _Skip
                if last_ts is not None and ts < last_ts:
                    policy.violation(
                        path,
                        row,
                        efld + ".ts",
                        "history not in time order",
                        f"timestamp {ts} is earlier than the previous {last_ts}",
                    )
                    raise _Skip
                last_ts = ts
                item = items.get(item_id)
                if item is None:
                    policy.violation(path, row, efld + ".item_id", "unknown item id", f"unknown item id {item_id!r}")
                    continue
                if item.domain != domain:
                    policy.violation(
                        path,
                        row,
                        efld + ".item_id",
                        "item of another domain",
                        f"item {item_id!r} belongs to domain {item.domain!r}",
                    )
                    continue
                labels = _normalise_labels(ev.get("labels"))
                if labels is None:
                    policy.violation(
                        path,
                        row,
                        efld + ".labels",
                        "unknown behaviour label",
                        f"labels {ev.get('labels')!r} not within {BEHAVIOUR_LABELS}",
                    )
                    continue
                expl = ev.get("explanation")
                if expl is not None and not isinstance(expl, str):
                    policy.violation(path, row, efld + ".explanation", "wrong type", "expected a string")
                    continue
                out.append(Interaction(item_id, ts, labels, expl or None))
            histories[str(domain)] = out
        searches = []
        raw_searches = _as_json(rec.get("searches")) or []
        if not isinstance(raw_searches, (list, tuple)):
            policy.violation(path, row, "searches", "wrong type", "expected a list")
            raise _Skip
        for k, s in enumerate(raw_searches):
            sfld = f"searches[{k}]"
            if not isinstance(s, dict) or not isinstance(s.get("query"), str) or _as_int(s.get("ts")) is None:
                policy.violation(path, row, sfld, "wrong type", "expected {query: str, ts: int, item_ids: [str]}")
                continue
            ids = [str(x) for x in (s.get("item_ids") or [])]
            known = tuple(x for x in ids if x in items)
            if len(known) != len(ids):
                policy.violation(
                    path,
                    row,
                    sfld + ".item_ids",
                    "unknown item id",
                    f"unknown item ids {sorted(set(ids) - set(known))[:3]}",
                )
                if not known:
                    continue
            searches.append(Search(s["query"], _as_int(s["ts"]), known))
        searches.sort(key=lambda s: s.ts)
    except _Skip:
        return None
    return User(user_id, histories, split, profile or None, searches)


def validate(
    items: Iterable[tuple[str, int, dict]],
    users: Iterable[tuple[str, int, dict]],
    *,
    on_error: str = "fail",
    name: str = "log",
    report: Optional[DropReport] = None,
) -> RecLog:
    """Build a RecLog from (path, row, record) triples of items then users, applying the schema.

    Items are consumed completely before users (users are checked against the catalogue)."""
    report = report if report is not None else DropReport()
    policy = ViolationPolicy(on_error, report)
    catalogue: dict[str, Item] = {}
    for path, row, rec in items:
        if not isinstance(rec, dict):
            policy.violation(path, row, "<row>", "wrong type", "expected an object")
            continue
        item = parse_item(rec, path, row, policy)
        if item is None:
            continue
        if item.item_id in catalogue:
            policy.violation(path, row, "item_id", "duplicate id", f"duplicate item id {item.item_id!r}")
            continue
        catalogue[item.item_id] = item
    seen: set[str] = set()
    out_users: list[User] = []
    for path, row, rec in users:
        if not isinstance(rec, dict):
            policy.violation(path, row, "<row>", "wrong type", "expected an object")
            continue
        user = parse_user(rec, path, row, policy, catalogue)
        if user is None:
            continue
        if user.user_id in seen:
            policy.violation(path, row, "user_id", "duplicate id", f"duplicate user id {user.user_id!r}")
            continue
        seen.add(user.user_id)
        out_users.append(user)
    return RecLog(catalogue, out_users, report, name)


def _rows(path: str):
    from megarec.common.io import iter_rows

    for row, rec in iter_rows(path):
        if isinstance(rec, DataError):
            raise rec
        yield path, row, rec


def load_reclog(items_path: str, users_path: str, *, on_error: str = "fail") -> RecLog:
    """Read and validate items and users tables (JSONL, JSONL.gz or parquet)."""
    return validate(_rows(items_path), _rows(users_path), on_error=on_error, name=users_path)
