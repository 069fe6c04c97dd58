"""Multi-process pre-training on CPU (torchrun + gloo, tiny Qwen3): parallel layouts reproduce the
TP=1 loss curve, resume continues the exact curve (also at another TP), exit signals save, stage 1
changes only itemic rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli

pytestmark = pytest.mark.slow

VOCAB = 1024
ITEMIC = (960, 1022)  # the tiny tokenizer below appends 63 "itemic" tokens, then EOD at 1023
COMMON = [
    "train.steps=10",
    "train.seq_length=32",
    "train.micro_batch_size=2",
    "train.global_batch_size=8",
    "optimizer.lr=3e-3",
    "optimizer.min_lr=3e-4",
    "logging.progress=false",
    "logging.wandb_mode=disabled",
    # EOD tokens carry no loss, so micro-batches and DP ranks hold different numbers of loss tokens:
    # DP=2 matching DP=1 then shows the loss is normalised by the global count, not per rank.
    "data.eod_mask_loss=true",
]


def losses(run_dir: str) -> list[float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if '"loss"' in line]


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A real tokenizer directory (1024 entries, EOD + itemic.json) and a random indexed corpus."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("corpus")
    vocab = {f"t{i}": i for i in range(VOCAB - 1)} | {"<|endoftext|>": VOCAB - 1}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), eos_token="<|endoftext|>"
    )
    tok_dir = root / "tokenizer"
    tok.save_pretrained(tok_dir)
    (tok_dir / "itemic.json").write_text(json.dumps({"first_id": ITEMIC[0], "last_id": ITEMIC[1]}))
    rng = np.random.default_rng(0)
    prefixes = []
    for name in ("general", "rec"):
        prefix = str(root / f"{name}_text_document")
        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
        for _ in range(200):
            # Learnable structure: runs of consecutive ids from a random start (covers every row).
            doc = (int(rng.integers(0, VOCAB - 1)) + np.arange(int(rng.integers(10, 80)))) % (VOCAB - 1)
            builder.add_item(torch.from_numpy(np.append(doc, VOCAB - 1).astype(np.int32)))
            builder.end_document()
        builder.finalize(prefix + ".idx")
        prefixes.append(prefix)
    return {
        "tokenizer": str(tok_dir),
        "prefixes": prefixes,
        "data": [f"data.tokenizer={tok_dir}", f"data.data_path=[0.6, {prefixes[0]}, 0.4, {prefixes[1]}]"],
    }


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """Initial weights saved once at TP=1, and the uninterrupted TP=1 run from them."""
    root = tmp_path_factory.mktemp("ref")
    init = str(root / "init")
    ok(
        run_cli(
            [
                "pretrain",
                *COMMON,
                *corpus["data"],
                "train.steps=0",
                f"checkpoint.dir={init}",
                f"logging.run_dir={root / 'init_run'}",
            ]
        )
    )
    run_dir = str(root / "tp1")
    ok(run_cli(["pretrain", *COMMON, *corpus["data"], f"checkpoint.init_from={init}", f"logging.run_dir={run_dir}"]))
    curve = losses(run_dir)
    assert len(curve) == 10 and curve[-1] < curve[0] - 0.05, curve
    return {"init": init, "losses": curve, "run_dir": run_dir}


LAYOUTS = {
    "tp2": (2, ["parallel.tensor_model_parallel_size=2"]),
    "pp2": (2, ["parallel.pipeline_model_parallel_size=2"]),
    "tp2pp2": (4, ["parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2"]),
    "dp2_distopt": (2, ["parallel.use_distributed_optimizer=true"]),
    "dp2_distopt_overlap": (
        2,
        [
            "parallel.use_distributed_optimizer=true",
            "parallel.overlap_grad_reduce=true",
            "parallel.overlap_param_gather=true",
        ],
    ),
    # Without Transformer Engine, CP runs the local spec's all-gather attention on the same batch slices.
    "cp2": (2, ["parallel.context_parallel_size=2"]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parallel_layout_matches_tp1(layout, corpus, reference, tmp_path):
    nproc, overrides = LAYOUTS[layout]
    run_dir = str(tmp_path / layout)
    ok(
        run_cli(
            [
                "pretrain",
                *COMMON,
                *corpus["data"],
                *overrides,
                f"checkpoint.init_from={reference['init']}",
                f"logging.run_dir={run_dir}",
            ],
            nproc=nproc,
        )
    )
    np.testing.assert_allclose(losses(run_dir), reference["losses"], rtol=0, atol=1e-5)


def test_metrics_jsonl_records(reference):
    with open(os.path.join(reference["run_dir"], "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    records = [r for r in rows if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 11))
    # The run saves its end state to <run_dir>/checkpoints (the default checkpoint.dir) and says so.
    assert [(r["step"], os.path.basename(r["checkpoint"])) for r in rows if "checkpoint" in r] == [(10, "iter_0000010")]
    for r in records:
        assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(r)
        assert r["tokens_per_s"] > 0 and r["grad_norm"] > 0
    # Linear warm-up over 10% of 10 steps (1 step), then cosine down to exactly min_lr at step 10.
    lrs = [r["lr"] for r in records]
    expected = [3e-3] + [3e-4 + (3e-3 - 3e-4) * 0.5 * (1 + np.cos(np.pi * (k - 1) / 9)) for k in range(2, 11)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_resume_continues_exact_curve(corpus, reference, tmp_path):
    save = str(tmp_path / "ckpt")
    args = [
        "pretrain",
        *COMMON,
        *corpus["data"],
        f"checkpoint.init_from={reference['init']}",
        f"checkpoint.dir={save}",
        f"logging.run_dir={tmp_path / 'run'}",
    ]
    ok(run_cli([*args, "train.exit_interval=4"]))
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read() == "4"
    assert sorted(os.listdir(save)) == ["iter_0000004", "latest_checkpointed_iteration.txt"]
    proc = ok(run_cli(args))
    assert "resumed from" in proc.stdout and "at iteration 4" in proc.stdout
    np.testing.assert_allclose(losses(str(tmp_path / "run")), reference["losses"], rtol=0, atol=1e-6)


def test_save_tp1_resume_tp2(corpus, reference, tmp_path):
    save = str(tmp_path / "ckpt")
    args = ["pretrain", *COMMON, *corpus["data"], f"checkpoint.init_from={reference['init']}", f"checkpoint.dir={save}"]
    ok(run_cli([*args, "train.exit_interval=5", f"logging.run_dir={tmp_path / 'a'}"]))
    proc = ok(run_cli([*args, "parallel.tensor_model_parallel_size=2", f"logging.run_dir={tmp_path / 'b'}"], nproc=2))
    assert "RNG not restored" in proc.stdout
    np.testing.assert_allclose(
        losses(str(tmp_path / "a")) + losses(str(tmp_path / "b")), reference["losses"], rtol=0, atol=1e-5
    )


def test_sigterm_saves_and_exits_cleanly(corpus, reference, tmp_path):
    save, run_dir = str(tmp_path / "ckpt"), str(tmp_path / "run")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "megarec",
        "pretrain",
        *COMMON,
        *corpus["data"],
        "train.steps=100000",
        f"checkpoint.init_from={reference['init']}",
        f"checkpoint.dir={save}",
        f"logging.run_dir={run_dir}",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    metrics = os.path.join(run_dir, "metrics.jsonl")
    while time.time() < deadline and not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert "received SIGTERM" in out
    saved = int(open(os.path.join(save, "latest_checkpointed_iteration.txt")).read())
    assert 3 <= saved < 100000 and saved == len(losses(run_dir))


def _stage1(corpus, tmp_path, init, nproc, extra):
    save = str(tmp_path / "stage1")
    ok(
        run_cli(
            [
                "pretrain",
                *COMMON,
                *corpus["data"],
                "train.steps=5",
                "freeze.stage=itemic",
                f"checkpoint.init_from={init}",
                f"checkpoint.dir={save}",
                f"logging.run_dir={tmp_path / 'run'}",
                *extra,
            ],
            nproc=nproc,
        )
    )
    return save


@pytest.mark.parametrize("nproc,extra", [(1, []), (2, ["parallel.tensor_model_parallel_size=2"])], ids=["tp1", "tp2"])
def test_stage1_changes_only_itemic_rows(corpus, reference, tmp_path, nproc, extra):
    from megarec.runtime.megatron_checkpoint import read_full_tensors

    save = _stage1(corpus, tmp_path, reference["init"], nproc, extra)
    before, after = read_full_tensors(reference["init"]), read_full_tensors(save)
    assert before.keys() == after.keys()
    first, last = ITEMIC
    for name, b in before.items():
        a = after[name]
        if name in ("embedding.word_embeddings.weight", "output_layer.weight"):  # untied preset: both train
            outside = torch.ones(b.shape[0], dtype=torch.bool)
            outside[first : last + 1] = False
            assert torch.equal(a[outside], b[outside]), f"{name}: frozen rows moved"
            changed = (a[first : last + 1] != b[first : last + 1]).any(dim=1)
            assert changed.all(), f"{name}: {int((~changed).sum())} itemic rows never trained"
        else:
            assert torch.equal(a, b), f"{name} changed in stage 1"
    # No optimizer drift: the Adam moments of frozen rows are exactly zero.
    for key, state in read_full_tensors(save, optimizer=True).items():
        assert state[:first].abs().max() == 0 and state[last + 1 :].abs().max() == 0, key
        assert state[first : last + 1].abs().max() > 0, key


def test_stage1_tied_model(corpus, tmp_path):
    """Tied embeddings (Qwen3 <= 4B): the shared matrix trains only in its itemic rows."""
    from megarec.runtime.megatron_checkpoint import read_full_tensors

    init = str(tmp_path / "init")
    tied = ["model.preset=qwen3-tiny-tied"]
    ok(
        run_cli(
            [
                "pretrain",
                *COMMON,
                *corpus["data"],
                *tied,
                "train.steps=0",
                f"checkpoint.dir={init}",
                f"logging.run_dir={tmp_path / 'init_run'}",
            ]
        )
    )
    save = _stage1(corpus, tmp_path, init, 2, [*tied, "parallel.pipeline_model_parallel_size=2"])
    before, after = read_full_tensors(init), read_full_tensors(save)
    emb_b, emb_a = before.pop("embedding.word_embeddings.weight"), after.pop("embedding.word_embeddings.weight")
    assert "output_layer.weight" not in after
    first, last = ITEMIC
    assert torch.equal(emb_a[:first], emb_b[:first]) and torch.equal(emb_a[last + 1 :], emb_b[last + 1 :])
    assert not torch.equal(emb_a[first : last + 1], emb_b[first : last + 1])
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_interleaved_pipeline_matches_tp1(corpus, tmp_path):
    """PP=2 × VP=2 (4 model chunks of one layer) reproduces the single-process curve of a 4-layer model."""
    four = ["model.num_layers=4"]
    init = str(tmp_path / "init")
    ok(
        run_cli(
            [
                "pretrain",
                *COMMON,
                *corpus["data"],
                *four,
                "train.steps=0",
                f"checkpoint.dir={init}",
                f"logging.run_dir={tmp_path / 'i'}",
            ]
        )
    )
    base = [*COMMON, *corpus["data"], *four, "train.steps=5", f"checkpoint.init_from={init}"]
    ok(run_cli(["pretrain", *base, f"logging.run_dir={tmp_path / 'ref'}"]))
    ok(
        run_cli(
            [
                "pretrain",
                *base,
                "parallel.pipeline_model_parallel_size=2",
                "parallel.virtual_pipeline_model_parallel_size=2",
                f"logging.run_dir={tmp_path / 'vp'}",
            ],
            nproc=2,
        )
    )
    np.testing.assert_allclose(losses(str(tmp_path / "vp")), losses(str(tmp_path / "ref")), rtol=0, atol=1e-5)


def test_document_resets_and_validation(corpus, tmp_path):
    """Per-document position/attention resets train, validation runs, and loss still falls."""
    run_dir = str(tmp_path / "run")
    ok(
        run_cli(
            [
                "pretrain",
                *COMMON,
                *corpus["data"],
                "train.steps=12",
                "data.reset_position_ids=true",
                "data.reset_attention_mask=true",
                "train.eval_interval=6",
                "train.eval_iters=1",
                f"logging.run_dir={run_dir}",
            ]
        )
    )
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    valid = [r["valid_loss"] for r in records if "valid_loss" in r]
    assert [r["step"] for r in records if "valid_loss" in r] == [6, 12]
    assert valid[1] < valid[0] and all(np.isfinite(valid))
    curve = losses(run_dir)
    assert curve[-1] < curve[0]


def test_divergence_stops_with_clear_error(corpus, reference, tmp_path):
    proc = run_cli(
        [
            "pretrain",
            *COMMON,
            *corpus["data"],
            "optimizer.lr=1e30",
            "optimizer.clip_grad=0",
            "train.steps=50",
            f"checkpoint.init_from={reference['init']}",
            f"checkpoint.dir={tmp_path / 'ckpt'}",
            f"logging.run_dir={tmp_path / 'run'}",
        ]
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    err = [line for line in proc.stderr.splitlines() if "megarec pretrain: error:" in line]
    assert len(err) == 1 and ("loss is nan" in err[0] or "gradient norm is" in err[0] or "loss is inf" in err[0])
    assert not os.path.exists(tmp_path / "ckpt" / "latest_checkpointed_iteration.txt")


def _recipe_parallel_keys(recipe: str) -> dict:
    import yaml

    with open(os.path.join(REPO, recipe)) as f:
        return yaml.safe_load(f)["parallel"]


def test_h100_recipe_options_run_on_cpu(corpus, reference, tmp_path):
    """The 8B H100 recipe's data-parallel and context-parallel keys, read from the recipe itself (distributed
    optimizer, both overlaps, CP=2), on the tiny model at CP=2 × DP=2: the loss curve equals TP=1 through a
    stop and resume. TP=4 and sequence parallel need the 8B's heads and Transformer Engine (GPU check)."""
    keys = _recipe_parallel_keys("configs/models/qwen3_8b_h100.yaml")
    assert keys["use_distributed_optimizer"] and keys["overlap_grad_reduce"] and keys["overlap_param_gather"]
    cpu_keys = [
        f"parallel.{k}={str(v).lower()}"
        for k, v in keys.items()
        if k in ("use_distributed_optimizer", "overlap_grad_reduce", "overlap_param_gather", "context_parallel_size")
    ]
    assert "parallel.context_parallel_size=2" in cpu_keys
    save = str(tmp_path / "ckpt")
    args = [
        "pretrain",
        *COMMON,
        *corpus["data"],
        *cpu_keys,
        f"checkpoint.init_from={reference['init']}",
        f"checkpoint.dir={save}",
    ]
    ok(run_cli([*args, "train.exit_interval=4", f"logging.run_dir={tmp_path / 'a'}"], nproc=4))
    proc = ok(run_cli([*args, f"logging.run_dir={tmp_path / 'b'}"], nproc=4))
    assert "resumed from" in proc.stdout and "at iteration 4" in proc.stdout
    np.testing.assert_allclose(
        losses(str(tmp_path / "a")) + losses(str(tmp_path / "b")), reference["losses"], rtol=0, atol=1e-5
    )


def test_overlapped_param_gather_saves_current_weights(corpus, reference, tmp_path):
    """With the distributed optimizer, overlap_param_gather defers the all-gather of updated weights to the
    next forward: a save must sync first, or each rank writes stale halves. Same weights as without overlap."""
    from megarec.runtime.megatron_checkpoint import read_full_tensors

    saved = {}
    for name, extra in {
        "plain": [],
        "overlap": ["parallel.overlap_grad_reduce=true", "parallel.overlap_param_gather=true"],
    }.items():
        saved[name] = str(tmp_path / name)
        ok(
            run_cli(
                [
                    "pretrain",
                    *COMMON,
                    *corpus["data"],
                    "train.steps=3",
                    "parallel.use_distributed_optimizer=true",
                    *extra,
                    f"checkpoint.init_from={reference['init']}",
                    f"checkpoint.dir={saved[name]}",
                    f"logging.run_dir={tmp_path / (name + '_run')}",
                ],
                nproc=2,
            )
        )
    plain, overlap = read_full_tensors(saved["plain"]), read_full_tensors(saved["overlap"])
    start = read_full_tensors(reference["init"])
    assert plain.keys() == overlap.keys()
    for name in plain:
        assert not torch.equal(plain[name], start[name]), f"{name} did not train"
        assert torch.equal(plain[name], overlap[name]), name


def test_pipeline_stages_start_from_different_seeds(corpus, tmp_path):
    """From scratch, pipeline stages do not start as copies of each other (seed + 100 × PP rank, as in
    Megatron-LM). At PP=4 the two middle stages hold one layer each and nothing else, so with one shared seed
    they would draw identical weights."""
    from megarec.runtime.megatron_checkpoint import read_full_tensors

    save = str(tmp_path / "init")
    ok(
        run_cli(
            [
                "pretrain",
                *COMMON,
                *corpus["data"],
                "model.num_layers=4",
                "train.steps=0",
                "parallel.pipeline_model_parallel_size=4",
                f"checkpoint.dir={save}",
                f"logging.run_dir={tmp_path / 'run'}",
            ],
            nproc=4,
        )
    )
    tensors = read_full_tensors(save)
    for name in ("self_attention.linear_qkv.weight", "mlp.linear_fc1.weight"):
        stacked = tensors[f"decoder.layers.{name}"]
        assert stacked.shape[0] == 4 and not torch.equal(stacked[1], stacked[2]), name
        # same init distribution, other draws
        assert float(stacked[1].std()) == pytest.approx(float(stacked[2].std()), rel=0.1)


def test_step_time_excludes_evaluation_and_saving(corpus, reference, tmp_path):
    """step_time_s (and tokens/s, MFU from it) times the training step only: evaluation and checkpoint writes,
    logged with their own durations, do not land in the next step's time."""
    run_dir = str(tmp_path / "run")
    ok(
        run_cli(
            [
                "pretrain",
                *COMMON,
                *corpus["data"],
                "train.steps=4",
                "train.eval_interval=1",
                "train.eval_iters=60",
                "checkpoint.save_interval=1",
                f"checkpoint.dir={tmp_path / 'ckpt'}",
                f"checkpoint.init_from={reference['init']}",
                f"logging.run_dir={run_dir}",
            ]
        )
    )
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = [r["step_time_s"] for r in records if "loss" in r]
    evals = [r["eval_time_s"] for r in records if "valid_loss" in r]
    saves = [r["save_time_s"] for r in records if "save_time_s" in r]
    assert len(steps) == len(evals) == 4 and len(saves) == 4
    # An evaluation is 60 forward passes of a global batch (~20 steps' compute), a step one forward + backward:
    # steps 2-4 would each take longer than an evaluation if the clock ran through the previous evaluation and
    # save. The median with a 2x margin keeps one step slowed by a busy machine from deciding the outcome.
    assert sorted(steps[1:])[1] < min(evals) / 2, (steps, evals)
