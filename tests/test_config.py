"""Typed configs: YAML recipes with `base:` chains, dotted overrides, validation and --help text."""

from __future__ import annotations

import glob
import os

import pytest

from megarec.common.config import describe, iter_fields, load_config
from megarec.common.errors import ConfigError
from megarec.pretrain.config import PretrainConfig

from conftest import REPO


def test_overrides_parse_types_and_nesting(tmp_path):
    cfg = load_config(
        PretrainConfig,
        None,
        [
            "parallel.tensor_model_parallel_size=2",
            "optimizer.lr=3e-4",
            "data.mock=true",
            "data.data_path=[0.3, a, 0.7, b]",
            "model.fp8=null",
            "train.exit_signals=[SIGTERM]",
        ],
    )
    assert cfg.parallel.tensor_model_parallel_size == 2
    assert cfg.optimizer.lr == 3e-4 and cfg.data.mock is True
    assert cfg.data.data_path == ["0.3", "a", "0.7", "b"]
    assert cfg.train.exit_signals == ["SIGTERM"] and cfg.model.fp8 is None


def test_base_chain_then_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("optimizer:\n  lr: 1.0e-3\n  min_lr: 1.0e-4\ntrain:\n  seq_length: 64\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\noptimizer:\n  lr: 5.0e-4\n")
    cfg = load_config(PretrainConfig, str(tmp_path / "child.yaml"), ["train.seq_length=128"])
    assert (cfg.optimizer.lr, cfg.optimizer.min_lr, cfg.train.seq_length) == (5e-4, 1e-4, 128)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.bogus=1", "unknown config key 'train.bogus'"),
        ("train.seq_length=abc", "train.seq_length: expected an integer"),
        ("model.dtype=fp64", "model.dtype: 'fp64' is not one of auto, fp32, bf16"),
        ("data.mock=maybe", "data.mock: expected true/false"),
        ("noequals", "must look like key.sub=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(").replace("'", "'")):
        load_config(PretrainConfig, None, [override])


def test_missing_recipe_and_cycle(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PretrainConfig, str(tmp_path / "nope.yaml"))
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(PretrainConfig, str(tmp_path / "a.yaml"))


def test_every_field_has_help_and_appears_in_describe():
    text = describe(PretrainConfig)
    for name, _, _, help_text in iter_fields(PretrainConfig):
        assert help_text, f"{name} has no help text"
        assert name in text


@pytest.mark.parametrize(
    "recipe", sorted(glob.glob(os.path.join(REPO, "configs", "pretrain", "*.yaml"))), ids=os.path.basename
)
def test_shipped_recipes_load(recipe):
    cfg = load_config(PretrainConfig, recipe)
    if "stage1" in recipe:
        assert cfg.freeze.stage == "itemic" and (cfg.optimizer.lr, cfg.optimizer.min_lr) == (1e-3, 1e-4)
    if "stage2" in recipe:
        assert cfg.freeze.stage == "full" and (cfg.optimizer.lr, cfg.optimizer.min_lr) == (1e-4, 2e-5)
    assert (cfg.optimizer.adam_beta1, cfg.optimizer.adam_beta2, cfg.optimizer.weight_decay) == (0.9, 0.95, 0.1)
    assert cfg.optimizer.warmup_fraction == 0.1
