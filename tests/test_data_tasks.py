"""Task builders: every task yields well-formed samples, splits never leak, builds are reproducible,
templates are data."""

from __future__ import annotations

import json
import re

import pytest

from megarec.common.errors import ConfigError, DataError
from megarec.common.itemic import item_string
from megarec.data.tasks.build import build_tasks
from megarec.data.tasks.config import BuildConfig
from megarec.data.tasks.context import SFT_TASKS
from megarec.data.tasks.split import verify_no_leakage
from megarec.data.tasks.templates import TEMPLATE_FIELDS, Templates
from megarec.rawdata.synthetic import SyntheticConfig, generate_synthetic

from conftest import run_cli

ITEM_RE = re.compile(r"<\|sid_begin\|>((?:<s_[a-z]_\d+>)+)<\|sid_end\|>")
REC_TASKS = ("short_video_rec", "ad_rec", "product_rec", "label_conditional_rec", "interactive_rec")


def _log(seed=0, users=160):
    return generate_synthetic(SyntheticConfig(num_users=users, num_items=300, seed=seed))


def _build(lang="en", seed=0, **cfg):
    log, codes = _log(seed)
    return build_tasks(log, codes, BuildConfig(seed=seed, lang=lang, **cfg), "user"), codes


def _items_in(text, codes_to_item):
    return [codes_to_item[m] for m in ITEM_RE.findall(text)]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_every_task_well_formed(lang):
    built, codes = _build(lang)
    codes_to_item = {"".join(f"<s_{'abc'[k]}_{c}>" for k, c in enumerate(cs)): i for i, cs in codes.items()}
    answers = Templates.load(lang).data["answers"]
    for split in ("sft_train", "sft_test"):
        tasks = {s["metadata"]["task"] for s in built[split]}
        assert set(SFT_TASKS) <= tasks, (split, set(SFT_TASKS) - tasks)
        for s in built[split]:
            md, msgs = s["metadata"], s["messages"]
            assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
            assert all(isinstance(m["content"], str) and m["content"].strip() for m in msgs)
            for m in msgs:
                _items_in(m["content"], codes_to_item)  # every itemic string is a real item
            assert md["target_item_ids"] and md["split"] == ("train" if split == "sft_train" else "test")
            answer = msgs[-1]["content"]
            if md["task"] in REC_TASKS:
                assert answer == "".join(item_string(codes[i]) for i in md["target_item_ids"])
            elif md["task"] == "label_prediction":
                assert answer == md["answer"] in (answers["positive"], answers["negative"])
            else:
                assert answer == md["reference"]
    for s in built["pretrain"]:
        assert len(s["segments"]) == 1 and s["segments"][0]["type"] == "text" and s["segments"][0]["text"]
        _items_in(s["segments"][0]["text"], codes_to_item)
    assert {s["metadata"]["task"] for s in built["pretrain"]} == {
        "item_caption",
        "caption_item",
        "user_sequence",
        "user_persona",
    }
    assert built["rl_train"] and all(
        s["messages"][-1]["role"] == "user" and s["metadata"]["targets"] and s["metadata"]["task"] in REC_TASKS
        for s in built["rl_train"]
    )
    labels = [s["metadata"]["answer"] for s in built["sft_train"] if s["metadata"]["task"] == "label_prediction"]
    assert 0.25 < labels.count(answers["positive"]) / len(labels) < 0.75


def test_user_split_no_leakage():
    built, codes = _build(test_target_captions="exclude")
    test_users = set(built["split"].test_users)
    assert test_users
    train = built["pretrain"] + built["sft_train"] + built["rl_train"]
    assert not test_users & {s["metadata"].get("user_id") for s in train}
    # a test user's held-out (history → target) never appears in training text
    train_text = "\n".join(json.dumps(s, ensure_ascii=False) for s in train)
    for s in built["sft_test"]:
        md = s["metadata"]
        if md["task"] in ("short_video_rec", "ad_rec", "product_rec"):
            prompt = s["messages"][1]["content"]
            history = ITEM_RE.findall(prompt)
            seq = "".join(f"<|sid_begin|>{h}<|sid_end|>" for h in history) + s["messages"][2]["content"]
            assert json.dumps(seq)[1:-1] not in train_text
    # captions of every evaluation target are kept out of caption tasks when excluded
    targets = {i for s in built["sft_test"] for i in s["metadata"]["target_item_ids"]}
    log, _ = _log()
    for s in built["pretrain"] + built["sft_train"]:
        if s["metadata"]["task"] in ("item_caption", "caption_item", "item_understanding"):
            ids = s["metadata"].get("item_ids") or s["metadata"]["target_item_ids"]
            assert not set(ids) & targets
    assert verify_no_leakage(train, built["sft_test"]) > 0


def test_leave_one_out_split():
    built, _ = _build(split="loo")
    assert built["sft_valid"] and built["sft_test"]
    first_eval = {}
    for s in built["sft_test"] + built["sft_valid"]:
        md = s["metadata"]
        if "target_pos" in md:
            key = (md["user_id"], md.get("pos_key", md["domain"]))
            first_eval[key] = min(first_eval.get(key, 10**9), md["target_pos"])
    checked = 0
    for s in built["pretrain"] + built["sft_train"] + built["rl_train"]:
        for domain, pos in (s["metadata"].get("max_pos") or {}).items():
            key = (s["metadata"]["user_id"], domain)
            if key in first_eval:
                assert pos < first_eval[key]
                checked += 1
    assert checked > 100
    leaky = {
        "metadata": {
            "task": "x",
            "user_id": built["sft_test"][0]["metadata"]["user_id"],
            "max_pos": {built["sft_test"][0]["metadata"]["domain"]: 10**6},
        }
    }
    with pytest.raises(DataError, match="leak"):
        verify_no_leakage([leaky], built["sft_test"])


def test_builds_are_reproducible():
    a, _ = _build(seed=3)
    b, _ = _build(seed=3)
    c, _ = _build(seed=4)
    for key in ("pretrain", "sft_train", "sft_test", "rl_train"):
        assert a[key] == b[key]
    assert a["sft_train"] != c["sft_train"]


def test_templates_are_data(tmp_path):
    en, zh = Templates.load("en"), Templates.load("zh")
    assert en.answer(True) == "yes" and zh.answer(False) == "否"
    for path in TEMPLATE_FIELDS:
        assert en._variants(path) and zh._variants(path)
    bad = en.data | {"sft": {**en.data["sft"], "rec": {"user": ["{history} {oops}"], "assistant": ["{targets}"]}}}
    import yaml

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad, allow_unicode=True))
    with pytest.raises(ConfigError, match=r"sft.rec.user\[0\] uses unknown placeholders \['oops'\]"):
        Templates.load(str(tmp_path / "bad.yaml"))


def test_cli_data_build(tmp_path):
    out = tmp_path / "build"
    proc = run_cli(
        [
            "data",
            "build",
            "--source",
            "synthetic",
            "--out",
            str(out),
            "--seed",
            "1",
            "--num-users",
            "60",
            "--num-items",
            "120",
            "--lang",
            "zh",
        ],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for rel in (
        "pretrain/train.jsonl",
        "sft/train.jsonl",
        "sft/test.jsonl",
        "rl/train.jsonl",
        "items.jsonl",
        "codes.csv",
        "build_report.json",
    ):
        assert (out / rel).is_file(), rel
    report = json.loads((out / "build_report.json").read_text())
    assert report["split"]["test_users"] > 0 and report["samples"]["sft/train.jsonl"]["item_understanding"] > 0
    assert (out / "codes.csv").read_text().splitlines()[0] == "item_id,c1,c2,c3"
    before = (out / "build_report.json").read_bytes()
    proc = run_cli(["data", "build", "--source", "amazon:/nonexistent", "--out", str(out), "--force"], timeout=120)
    assert proc.returncode == 2 and "Amazon data directory not found" in proc.stderr
    assert (out / "build_report.json").read_bytes() == before  # a failed --force run keeps the old build


def test_sequence_windows_cover_every_training_item_once_and_leave_other_outputs_alone():
    from megarec.data.tasks.pretrain import sequence_windows

    assert sequence_windows(250, 100, True) == [(0, 50), (50, 150), (150, 250)]
    assert sequence_windows(250, 100, False) == [(150, 250)]
    assert sequence_windows(201, 100, True) == [(1, 101), (101, 201)]  # a lone first item has no next item
    assert sequence_windows(1, 100, True) == [] and sequence_windows(2, 100, False) == [(0, 2)]
    log, codes = _log(seed=1)
    kw = dict(split="loo", max_sequence_items=8, seed=1)
    last = build_tasks(log, codes, BuildConfig(**kw), "user")
    every = build_tasks(log, codes, BuildConfig(sequence_windows="all", **kw), "user")
    # only the pre-training sequences change: SFT, RL and evaluation samples (and their order) are identical
    for key in ("sft_train", "sft_test", "sft_valid", "rl_train"):
        assert every[key] == last[key], key
    codes_to_item = {item_string(c)[len("<|sid_begin|>") : -len("<|sid_end|>")]: i for i, c in codes.items()}
    held = {}  # (user, domain) -> first held-out position (validation item)
    for s in every["sft_valid"] + every["sft_test"]:
        md = s["metadata"]
        if "target_pos" in md:
            key = (md["user_id"], md.get("pos_key", md["domain"]))
            held[key] = min(held.get(key, 10**9), md["target_pos"])
    by_user = {}
    for s in every["pretrain"]:
        md = s["metadata"]
        if md["task"] != "user_sequence":
            continue
        items = _items_in(s["segments"][0]["text"], codes_to_item)
        assert 2 <= len(items) <= 8
        by_user.setdefault((md["user_id"], md["domain"]), []).append((md["max_pos"][md["domain"]], items))
    windowed = 0
    for (uid, domain), windows in by_user.items():
        user = next(u for u in log.users if u.user_id == uid)
        train = [ev.item_id for ev in user.histories[domain]][: held.get((uid, domain), len(user.histories[domain]))]
        # consecutive windows, oldest first, ending at the last training item: every item once
        windows.sort()
        joined = [i for _, items in windows for i in items]
        assert joined == train[len(train) - len(joined) :] and len(train) - len(joined) <= 1, uid
        assert windows[-1][0] == len(train) - 1
        windowed += len(windows) > 1
    assert windowed > 10
