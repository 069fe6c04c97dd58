"""The one leave-one-out rule shared by the task builders (`megarec data build --split loo`) and the
transfer benchmark (`megarec bench seqrec`), so that no benchmark target or validation item of a user can
be in that user's training samples.

Per user and domain, on the *raw* time-ordered history (before items without codes are dropped): a history
of at least `LOO_MIN_LENGTH` interactions holds out its last item (test target) and the one before it
(validation target); everything before them is training data. Shorter histories hold nothing out and are
not evaluated by the benchmark. `loo_cut` states the same cut in the coded history that the task builders
render, where items without codes are missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

LOO_MIN_LENGTH = 3  # train + validation + test item


def holds_out(n: int) -> bool:
    """True when a history of n interactions is split (and evaluated) under leave-one-out."""
    return n >= LOO_MIN_LENGTH


@dataclass(frozen=True)
class LooCut:
    """Where leave-one-out cuts one raw history, expressed in its coded subsequence."""

    train_len: int  # coded interactions before the validation item (the training prefix)
    valid_coded: bool  # the validation item has codes (it is position train_len of the coded history)
    test_coded: bool  # the test item has codes (it is the last item of the coded history)
    cutoff_ts: int  # timestamp of the validation interaction (searches before it may train)


def loo_cut(raw_history: Sequence, has_codes: Optional[Callable[[str], bool]] = None) -> Optional[LooCut]:
    """The cut of one raw history of Interactions (oldest first), or None when nothing is held out."""
    n = len(raw_history)
    if not holds_out(n):
        return None
    keep = [True if has_codes is None else bool(has_codes(x.item_id)) for x in raw_history]
    return LooCut(sum(keep[: n - 2]), keep[n - 2], keep[n - 1], raw_history[n - 2].ts)


def loo_cuts(log, has_codes: Optional[Callable[[str], bool]] = None) -> dict[tuple[str, str], Optional[LooCut]]:
    """{(user_id, domain): cut or None} for every history of a RecLog."""
    return {(u.user_id, d): loo_cut(h, has_codes) for u in log.users for d, h in u.histories.items()}


def largest_domain(log) -> Optional[str]:
    """The domain with the most interactions (ties: alphabetical first), None for an empty log: the domain the
    benchmark evaluates when none is named."""
    totals: dict[str, int] = {}
    for u in log.users:
        for d, h in u.histories.items():
            totals[d] = totals.get(d, 0) + len(h)
    return max(sorted(totals), key=lambda d: totals[d]) if totals else None


def training_sequences(log, domain: str) -> list[list[str]]:
    """Item ids of the training part of every `domain` history that leave-one-out splits (all but the last two
    items, oldest first): the only interactions any item representation may learn from."""
    out = []
    for u in log.users:
        hist = u.histories.get(domain, [])
        if holds_out(len(hist)):
            out.append([x.item_id for x in hist[:-2]])
    return out
