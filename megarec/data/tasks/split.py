"""User-level and leave-one-out splits, and the leakage check every build runs.

* user: held-out users (explicit `split` field, else a seeded hash of the user id with probability
  test_frac) contribute only evaluation samples; their last `rec_targets` interactions per domain are the
  targets and their last search is the interactive-rec case. Nothing of theirs reaches training.
* loo: every user; per domain with at least 3 interactions (`megarec.rawdata.loo`, the benchmark's rule) the last
  interaction is the test target and the one before it the validation target; training sees only the
  interactions before both, and only searches made before the
  first held-out interaction (the last search is held out for interactive rec).

Every sample records what it used: training samples `max_pos` {domain or "searches": last index used},
evaluation samples `user_id`, `domain` and `target_pos`. `verify_no_leakage` checks that, per user and
domain, everything training used lies strictly before every evaluation target.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Optional

from megarec.common.errors import DataError
from megarec.data.tasks.config import BuildConfig
from megarec.rawdata.loo import loo_cut
from megarec.rawdata.schema import Interaction, RecLog, Search, User

SEARCHES = "searches"


@dataclass
class TrainUser:
    user: User
    histories: dict[str, list[Interaction]]  # prefixes of the full histories (indices preserved)
    searches: list[Search]  # prefix of the user's searches


@dataclass
class EvalCase:
    user: User
    split: str  # "test" or "valid"
    domain: str
    context: list[Interaction]
    targets: list[Interaction]
    target_pos: int


@dataclass
class SearchCase:
    user: User
    split: str
    domain: str
    context: list[Interaction]
    search: Search
    search_pos: int


@dataclass
class Split:
    mode: str
    train: list[TrainUser] = field(default_factory=list)
    cases: list[EvalCase] = field(default_factory=list)
    search_cases: list[SearchCase] = field(default_factory=list)
    test_users: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        by_split = defaultdict(int)
        for c in self.cases:
            by_split[c.split] += 1
        return {
            "mode": self.mode,
            "train_users": len(self.train),
            "test_users": len(self.test_users),
            "eval_cases": dict(by_split),
            "search_cases": len(self.search_cases),
        }


def _hash_unit(seed: int, key: str) -> float:
    h = hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64


def is_test_user(user: User, cfg: BuildConfig) -> bool:
    if user.split:
        return user.split == "test"
    return _hash_unit(cfg.seed, "split|" + user.user_id) < cfg.test_frac


def _search_domain(search: Search, items) -> Optional[str]:
    return items[search.item_ids[0]].domain if search.item_ids else None


def _context_before(history: list[Interaction], ts: int) -> list[Interaction]:
    return [x for x in history if x.ts < ts]


def split_log(log: RecLog, cfg: BuildConfig, mode: str, cuts: Optional[dict] = None) -> Split:
    """`cuts` ({(user_id, domain): LooCut}, from `megarec.rawdata.loo.loo_cuts` on the log before items without
    codes were dropped) places the leave-one-out cut as the benchmark does on the raw histories; without it
    the histories of `log` are taken as raw."""
    out = Split(mode)
    for user in log.users:
        if mode == "user":
            if not is_test_user(user, cfg):
                out.train.append(TrainUser(user, dict(user.histories), list(user.searches)))
                continue
            out.test_users.append(user.user_id)
            k = cfg.rec_targets
            for domain, hist in user.histories.items():
                if len(hist) - k >= cfg.min_history:
                    out.cases.append(EvalCase(user, "test", domain, hist[:-k], hist[-k:], len(hist) - k))
            if user.searches:
                s = user.searches[-1]
                domain = _search_domain(s, log.items)
                out.search_cases.append(
                    SearchCase(
                        user,
                        "test",
                        domain,
                        _context_before(user.histories.get(domain, []), s.ts),
                        s,
                        len(user.searches) - 1,
                    )
                )
        elif mode == "loo":
            # the rule of megarec.rawdata.loo (shared with `bench seqrec`): held out whenever the raw history
            # has >= LOO_MIN_LENGTH items, whatever min_history says (that only limits which held-out cases
            # become evaluation prompts)
            train_hist = {}
            cutoff = None
            for domain, hist in user.histories.items():
                cut = loo_cut(hist) if cuts is None else cuts.get((user.user_id, domain), loo_cut(hist))
                if cut is None:
                    train_hist[domain] = list(hist)
                    continue
                t = cut.train_len
                train_hist[domain] = hist[:t]
                if cut.valid_coded and t >= cfg.min_history:
                    out.cases.append(EvalCase(user, "valid", domain, hist[:t], [hist[t]], t))
                if cut.test_coded and len(hist) - 1 >= cfg.min_history:
                    out.cases.append(EvalCase(user, "test", domain, hist[:-1], [hist[-1]], len(hist) - 1))
                cutoff = cut.cutoff_ts if cutoff is None else min(cutoff, cut.cutoff_ts)
            searches = list(user.searches)
            if searches:
                s = searches[-1]
                domain = _search_domain(s, log.items)
                out.search_cases.append(
                    SearchCase(
                        user,
                        "test",
                        domain,
                        _context_before(user.histories.get(domain, []), s.ts),
                        s,
                        len(searches) - 1,
                    )
                )
                searches = searches[:-1]
            if cutoff is not None:
                searches = [s for s in searches if s.ts < cutoff]
            # keep only a prefix so that indices stay comparable with the held-out search
            out.train.append(TrainUser(user, train_hist, searches))
        else:
            raise DataError(f"unknown split mode {mode!r}")
    return out


def verify_no_leakage(train_records: Iterable[dict], eval_records: Iterable[dict]) -> int:
    """Raise DataError if a training sample used a (user, domain) position at or after an evaluation
    target of the same user and domain; returns the number of (user, domain) pairs checked."""
    first_target: dict[tuple[str, str], int] = {}
    for rec in eval_records:
        md = rec.get("metadata", {})
        if md.get("user_id") is None or md.get("target_pos") is None:
            continue
        key = (md["user_id"], md.get("pos_key", md["domain"]))
        first_target[key] = min(first_target.get(key, md["target_pos"]), md["target_pos"])
    for rec in train_records:
        md = rec.get("metadata", {})
        user = md.get("user_id")
        if user is None:
            continue
        for domain, pos in (md.get("max_pos") or {}).items():
            limit = first_target.get((user, domain))
            if limit is not None and pos >= limit:
                raise DataError(
                    f"leak: training sample of task {md.get('task')} uses position {pos} of user "
                    f"{user} domain {domain}, but evaluation targets start at {limit}"
                )
    return len(first_target)
