"""The shared runtime every training verb runs on: the step loop's cadence and divergence stop, the checkpoint
commit protocol, renamed config keys and flags, and the one help formatter."""

from __future__ import annotations

import argparse
import json
import os
import signal

import pytest

from megarec.common.errors import ConfigError, TrainingDivergedError
from megarec.runtime import checkpoint_dir
from megarec.runtime.loop import Cadence, StepLoop, check_finite
from megarec.runtime.metrics import MetricsLogger
from megarec.runtime.signals import ExitSignalHandler


def _loop(tmp_path, **cadence):
    logger = MetricsLogger(str(tmp_path / "run"), True, "disabled", "p", None, {}, cadence["total_steps"], 0, False)
    signals = ExitSignalHandler(["SIGUSR1"])
    return StepLoop(Cadence(**cadence), logger, signals, "test", True), logger, signals


def _records(tmp_path):
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_cadence_of_logging_validation_and_saving(tmp_path):
    loop, logger, signals = _loop(tmp_path, total_steps=7, log_interval=3, eval_interval=3, save_interval=2)
    saved, validated = [], []
    summary = loop.run(
        0,
        lambda s: {"loss": 1.0 / s},
        save=lambda s: saved.append(s) or f"ckpt{s}",
        validate=lambda s: validated.append(s) or {"valid_loss": 0.5},
    )
    logger.close()
    signals.restore()
    assert [r["step"] for r in summary.history] == list(range(1, 8))
    assert validated == [3, 6, 7]  # every 3 steps and after the last
    assert saved == [2, 4, 6, 7]  # every 2 steps and at the end
    assert summary.checkpoint == "ckpt7" and summary.exit_reason == "finished" and summary.final_step == 7
    records = _records(tmp_path)
    assert [r["step"] for r in records if "loss" in r] == [3, 6, 7]  # log_interval 3 and the last step
    assert [r["step"] for r in records if "valid_loss" in r] == [3, 6, 7]
    assert all(r["eval_time_s"] >= 0 for r in records if "valid_loss" in r)
    assert [r["checkpoint"] for r in records if "checkpoint" in r] == ["ckpt2", "ckpt4", "ckpt6", "ckpt7"]


def test_exit_interval_and_signal_save_then_stop(tmp_path):
    loop, logger, signals = _loop(tmp_path, total_steps=10, exit_interval=3)
    summary = loop.run(2, lambda s: {"loss": 1.0}, save=lambda s: f"ckpt{s}")
    assert (summary.exit_reason, summary.final_step, summary.checkpoint) == ("exit_interval", 5, "ckpt5")

    def step(s):
        if s == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return {"loss": 1.0}

    loop.cadence.exit_interval = 0
    summary = loop.run(0, step, save=lambda s: f"ckpt{s}")
    logger.close()
    signals.restore()
    assert (summary.exit_reason, summary.final_step, summary.checkpoint) == ("signal", 2, "ckpt2")


def test_divergence_names_the_newest_checkpoint_and_does_not_save(tmp_path):
    """The loop, not the stage, tracks the newest checkpoint: a save during this run updates it (post-training
    used to report the checkpoint it resumed from)."""
    loop, logger, signals = _loop(tmp_path, total_steps=10, save_interval=2)
    saved = []

    def step(s):
        if s == 5:
            check_finite("gradient norm", float("inf"), "(loss 2.0000)")
        return {"loss": 1.0}

    with pytest.raises(TrainingDivergedError) as err:
        loop.run(0, step, save=lambda s: saved.append(s) or f"ckpt{s}", last_checkpoint="resumed0")
    assert str(err.value).startswith(
        "step 5: gradient norm is inf (loss 2.0000) — stopping without saving (last checkpoint: ckpt4)"
    )
    assert saved == [2, 4]
    with pytest.raises(TrainingDivergedError, match=r"step 1: loss is nan .*last checkpoint: resumed0"):
        loop.run(0, lambda s: {"loss": float("nan")}, save=lambda s: "x", last_checkpoint="resumed0")
    logger.close()
    signals.restore()


def test_checkpoint_commit_protocol(tmp_path):
    root = str(tmp_path)
    assert checkpoint_dir.read_latest(root) is None and checkpoint_dir.latest_dir(root) is None
    for step in (1, 2, 3):
        tmp = checkpoint_dir.begin(root, step)
        assert tmp.endswith(f"iter_{step:07d}.tmp")
        open(os.path.join(tmp, "payload"), "w").write(str(step))
        assert checkpoint_dir.read_latest(root) == (step - 1 or None)  # not published before commit
        checkpoint_dir.commit(root, step, keep_last=2)
    assert sorted(os.listdir(root)) == ["iter_0000002", "iter_0000003", "latest_checkpointed_iteration.txt"]
    assert checkpoint_dir.latest_dir(root) == os.path.join(root, "iter_0000003")
    checkpoint_dir.begin(root, 4)  # an interrupted save leaves only a .tmp behind: the pointer does not move
    assert checkpoint_dir.read_latest(root) == 3
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("x")
    with pytest.raises(ConfigError, match="expected a step number"):
        checkpoint_dir.read_latest(root)


def test_renamed_config_keys_are_read_under_their_new_names(tmp_path, capsys):
    from megarec.common.config import load_config
    from megarec.pretrain.config import PretrainConfig

    recipe = tmp_path / "old.yaml"
    recipe.write_text("train:\n  train_iters: 40\nmodel:\n  precision: fp32\ncheckpoint:\n  save: /ckpt\n")
    cfg = load_config(PretrainConfig, str(recipe), ["train.steps=7", "checkpoint.load=/other"])
    assert (cfg.train.steps, cfg.model.dtype, cfg.checkpoint.dir, cfg.checkpoint.resume_from) == (
        7,
        "fp32",
        "/ckpt",
        "/other",
    )  # an override under the new name wins over the recipe's old key
    notes = capsys.readouterr().err.splitlines()
    assert (
        "megarec: config key 'train.train_iters' is now 'train.steps' (the old name still works in this "
        "release)" in notes
    )
    assert len(notes) == 4
    both = tmp_path / "both.yaml"
    both.write_text("train:\n  train_iters: 40\n  steps: 50\n")
    with pytest.raises(ConfigError, match="'train.train_iters' and 'train.steps' are the same setting"):
        load_config(PretrainConfig, str(both))


def test_renamed_flags_and_the_one_help_formatter(capsys):
    from megarec.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["expand-vocab", "--base-dir", "/m", "--out", "/o", "--layers", "2", "--codebook-size", "4"]
    )
    assert args.hf_dir == "/m"
    assert capsys.readouterr().err.strip() == (
        "megarec: --base-dir is now --hf-dir (the old name still works in this release)"
    )
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    texts = {name: p.format_help() for name, p in sub.choices.items()}
    assert "--base-dir" not in texts["expand-vocab"] and "--hf-dir" in texts["expand-vocab"]
    assert "(default: 128)" in texts["expand-vocab"]  # --pad-to-multiple: the formatter adds the default
    assert "default 128" not in texts["expand-vocab"]
    assert "train.steps (int, default: 100)" in texts["pretrain"] and "train.steps (int, default: 100)" in texts["sft"]
    for name, text in texts.items():
        assert "(default: None)" not in text and "(default: False)" not in text, name
