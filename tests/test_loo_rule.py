"""One leave-one-out rule for the task builders and the benchmark (`megarec.rawdata.loo`): no benchmark target or
validation item of a user is in that user's training samples (pre-training segments, SFT, RL prompts), also
for short histories and for items that have no codes."""

from __future__ import annotations

import re

from megarec.data.tasks.build import build_tasks
from megarec.data.tasks.config import BuildConfig
from megarec.eval.seqrec_data import from_reclog
from megarec.rawdata.loo import LOO_MIN_LENGTH, holds_out, loo_cut
from megarec.rawdata.schema import Interaction, Item, RecLog, User

ITEM_RE = re.compile(r"<\|sid_begin\|>((?:<s_[a-z]_\d+>)+)<\|sid_end\|>")

# (user, history length, positions of items without codes)
USERS = [
    ("u3", 3, ()),
    ("u4", 4, ()),
    ("u5", 5, ()),
    ("u8", 8, ()),
    ("u2", 2, ()),
    ("u5_uncoded_mid", 5, (1,)),
    ("u4_uncoded_test", 4, (3,)),
    ("u4_uncoded_valid", 4, (2,)),
    ("u3_uncoded_first", 3, (0,)),
    ("u6_uncoded_tail", 6, (4, 5)),
]


def _log_and_codes():
    items, users, codes = {}, [], {}
    for uid, n, uncoded in USERS:
        hist = []
        for j in range(n):
            iid = f"{uid}_i{j}"
            items[iid] = Item(iid, "video", caption=f"movie {iid}")
            if j not in uncoded:
                k = len(codes)
                codes[iid] = (k // 256, (k // 16) % 16, k % 16)
            hist.append(Interaction(iid, 1000 + 10 * j, ("like",)))
        users.append(User(uid, {"video": hist}))
    return RecLog(items, users, name="loo-rule"), codes


def test_rule():
    assert LOO_MIN_LENGTH == 3 and holds_out(3) and not holds_out(2)
    hist = [Interaction(f"i{j}", j) for j in range(5)]
    assert loo_cut(hist[:2]) is None
    c = loo_cut(hist, has_codes=lambda i: i != "i1")
    assert (c.train_len, c.valid_coded, c.test_coded, c.cutoff_ts) == (2, True, True, 3)


def test_no_benchmark_target_or_validation_item_in_the_users_training_samples():
    log, codes = _log_and_codes()
    built = build_tasks(log, codes, BuildConfig(split="loo", samples_per_user=8, min_history=2, seed=0), "loo")
    bench = from_reclog(log)
    held = {
        uid: {bench.item_ids[s[-2] - 1], bench.item_ids[s[-1] - 1]} for uid, s in zip(bench.user_ids, bench.sequences)
    }
    assert set(held) == {u for u, n, _ in USERS if n >= 3}
    by_codes = {"".join(f"<s_{'abc'[k]}_{c}>" for k, c in enumerate(cs)): i for i, cs in codes.items()}
    seen: dict[str, set] = {}
    kinds = set()
    for s in built["pretrain"] + built["sft_train"] + built["rl_train"]:
        uid = s["metadata"].get("user_id")
        if uid is None:
            continue
        text = " ".join(seg["text"] for seg in s.get("segments", [])) + " ".join(
            m["content"] for m in s.get("messages", [])
        )
        found = {by_codes[m] for m in ITEM_RE.findall(text)}
        found |= set(s["metadata"].get("targets", []))
        seen.setdefault(uid, set()).update(found)
        kinds.add(s["metadata"]["task"])
    assert {"user_sequence", "short_video_rec"} <= kinds
    for uid, items in held.items():
        leaked = items & seen.get(uid, set())
        assert not leaked, f"{uid}: benchmark items {sorted(leaked)} in its training samples"
    # the short histories still train on what the rule leaves them
    assert (
        "u3" not in seen
        and seen["u4"] == {"u4_i0", "u4_i1"}
        and "u5_i2" in seen["u5"]
        and seen["u2"] == {"u2_i0", "u2_i1"}
    )
    # evaluation prompts exist for coded held-out items with a long enough context, never for uncoded ones
    evals = {
        (s["metadata"]["user_id"], s["metadata"]["split"]): s["metadata"]["target_item_ids"]
        for s in built["sft_test"] + built["sft_valid"]
        if s["metadata"]["task"] == "short_video_rec"
    }
    assert evals[("u4", "valid")] == ["u4_i2"] and evals[("u4", "test")] == ["u4_i3"]
    assert ("u4_uncoded_test", "test") not in evals and evals[("u4_uncoded_test", "valid")] == ["u4_uncoded_test_i2"]
    assert ("u6_uncoded_tail", "test") not in evals and ("u6_uncoded_tail", "valid") not in evals


def test_sequence_prompt_is_the_stage2_training_text_of_the_users_training_items():
    """`bench seqrec --prompt sequence` shows a stage-2 checkpoint exactly the text it was trained on: the
    validation prompt (history = the training items) equals the user's pre-training sequence sample."""
    from megarec.eval.seqrec_generative import sequence_prompt

    log, codes = _log_and_codes()
    built = build_tasks(log, codes, BuildConfig(split="loo", samples_per_user=8, min_history=2, seed=0), "loo")
    bench = from_reclog(log)
    histories, _ = bench.split_inputs("valid")
    trained = {
        s["metadata"]["user_id"]: s["segments"][0]["text"]
        for s in built["pretrain"]
        if s["metadata"]["task"] == "user_sequence"
    }
    checked = 0
    for uid, h in zip(bench.user_ids, histories):
        hist_codes = [codes[bench.item_ids[i - 1]] for i in h if bench.item_ids[i - 1] in codes]
        if uid not in trained or len(hist_codes) < 2:
            continue
        variants = {sequence_prompt(hist_codes, bench.domain, seed=s) for s in range(10)}
        assert len(variants) == 2 and trained[uid] in variants, uid
        checked += 1
    assert checked >= 5
