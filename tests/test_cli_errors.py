"""Bad configurations end with one clear error line and a non-zero exit, never a traceback."""

from __future__ import annotations

import pytest

from conftest import run_cli


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["data.mock=true", "parallel.tensor_model_parallel_size=3"],
            "num_attention_heads=4 is not divisible by tensor_model_parallel_size=3",
        ),
        (["data.mock=true", "model.preset=qwen3-9b"], "unknown model preset 'qwen3-9b'"),
        ([], "no training data: set data.data_path"),
        (["data.data_path=/nonexistent/corpus_text_document"], "/nonexistent/corpus_text_document.bin not found"),
        (
            ["data.mock=true", "parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"],
            "sequence_parallel needs the Transformer Engine layer spec",
        ),
        (["data.mock=true", "model.fp8=hybrid"], "model.fp8 needs the Transformer Engine layer spec"),
        (["data.mock=true", "freeze.stage=itemic"], "freeze.stage=itemic needs the itemic id range"),
        (["data.mock=true", "train.global_batch_size=7"], "train.global_batch_size=7 must be a multiple"),
        (["train.nope=1"], "unknown config key 'train.nope'"),
    ],
)
def test_bad_config_is_one_line(overrides, message, tmp_path):
    proc = run_cli(["pretrain", f"logging.run_dir={tmp_path}", *overrides], timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("megarec pretrain: error: ") and message in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_help_lists_every_key():
    proc = run_cli(["pretrain", "--help"], timeout=60)
    assert proc.returncode == 0
    for key in (
        "parallel.tensor_model_parallel_size",
        "freeze.stage",
        "checkpoint.init_from",
        "model.fp8",
        "data.reset_attention_mask",
        "logging.wandb_mode",
    ):
        assert key in proc.stdout
