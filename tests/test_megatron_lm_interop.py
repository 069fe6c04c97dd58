"""megarec ↔ Megatron-LM (core_v0.16.1) checkpoints: the common state holds every field Megatron-LM's loader
reads, a GPTModel built the way Megatron-LM builds it from the documented flags loads megarec's weights
bit-identically (and, for a resume, the optimizer moments and LR schedule), the flag printer and the docs
give those flags, and a checkpoint in Megatron-LM's layout comes back (weights, HF export, refused resume).

The Megatron-LM side is tests/megatron_lm_side.py (Megatron-Core only). With MEGATRON_LM_DIR pointing at a
Megatron-LM checkout of core_v0.16.1, the test_real_megatron_lm_* tests also run Megatron-LM's own parser and
load_checkpoint (tests/megatron_lm_real.py); megatron.training is not in the megatron-core wheel, so they are
skipped otherwise."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from megarec.common.errors import ConfigError
from megarec.runtime import megatron_lm_compat as compat

from conftest import REPO, run_cli

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "megatron_lm_side.py")
GBS = 8
# The documented flags (docs/convert.md) at the sizes of the two tiny test models. head_dim 24 != 64 / 4 heads.
PRETRAIN_FLAGS = (
    "--transformer-impl local --num-layers 2 --hidden-size 64 --ffn-hidden-size 128 "
    "--num-attention-heads 4 --group-query-attention --num-query-groups 2 --kv-channels 24 "
    "--qk-layernorm --normalization RMSNorm --norm-epsilon 1e-6 --swiglu --disable-bias-linear "
    "--position-embedding-type rope --rotary-base 1000000 --untie-embeddings-and-output-weights "
    "--max-position-embeddings 4096 --attention-dropout 0.0 --hidden-dropout 0.0 "
    "--padded-vocab-size 1024 --ckpt-format torch_dist"
).split()
RESUME_FLAGS = (
    f"--seq-length 128 --micro-batch-size 2 --global-batch-size {GBS} --train-iters 4 "
    "--lr-warmup-iters 0 --lr 3e-3 --min-lr 3e-4 --lr-decay-style cosine --weight-decay 0.1"
).split()
TIED_FLAGS = (
    "--transformer-impl local --num-layers 2 --hidden-size 64 --ffn-hidden-size 128 "
    "--num-attention-heads 4 --group-query-attention --num-query-groups 2 --kv-channels 16 "
    "--qk-layernorm --normalization RMSNorm --norm-epsilon 1e-6 --swiglu --disable-bias-linear "
    "--position-embedding-type rope --rotary-base 1000000 --max-position-embeddings 256 "
    "--attention-dropout 0.0 --hidden-dropout 0.0 --padded-vocab-size 1280 "
    "--ckpt-format torch_dist"
).split()

# What Megatron-LM core_v0.16.1's load_checkpoint / check_checkpoint_args / load_args_from_checkpoint read
# (megatron/training/checkpointing.py), written out here so that dropping one from megarec fails a test.
COMMON_KEYS = ["iteration", "checkpoint_version", "args", "opt_param_scheduler"]
ARGS_READ = [
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "world_size",
    "data_parallel_size",
    "no_save_rng",
    "no_save_optim",
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "add_position_embedding",
    "max_position_embeddings",
    "make_vocab_size_divisible_by",
    "tokenizer_type",
    "consumed_train_samples",
    "skipped_train_samples",
    "consumed_valid_samples",
    # --use-checkpoint-args
    "ffn_hidden_size",
    "seq_length",
    "num_query_groups",
    "group_query_attention",
    "kv_channels",
    "position_embedding_type",
    "use_rotary_position_embeddings",
    "rotary_base",
    "rotary_percent",
    "rotary_interleaved",
    "add_bias_linear",
    "add_qkv_bias",
    "squared_relu",
    "swiglu",
    "untie_embeddings_and_output_weights",
    "apply_layernorm_1p",
    "normalization",
    "apply_query_key_layer_scaling",
    "attention_dropout",
    "hidden_dropout",
    "padded_vocab_size",
    "ckpt_format",
    "virtual_pipeline_model_parallel_size",
    "expert_model_parallel_size",
]
MEGAREC_KEYS = [
    "iteration",
    "consumed_samples",
    "scheduler",
    "layout",
    "padded_vocab_size",
    "format_version",
    "megarec",
]


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def megatron_lm(action: str, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, SIDE, action, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO},
    )
    ok(proc)


def full_tensors(path: str, optimizer: bool = False) -> dict:
    import torch.distributed as dist

    from megarec.runtime.megatron_checkpoint import read_full_tensors

    try:
        return read_full_tensors(path, optimizer=optimizer)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def common_state(path: str) -> dict:
    import torch.distributed as dist

    from megarec.runtime.megatron_checkpoint import (
        ensure_single_process_group,
        read_common_state,
        resolve_checkpoint_dir,
    )

    ensure_single_process_group()
    try:
        return read_common_state(resolve_checkpoint_dir(path))
    finally:
        dist.destroy_process_group()


def as_module_state(plain: dict, model_state: dict) -> dict:
    """Global checkpoint tensors (layers stacked) → per-module names of a TP=1 GPTModel state dict."""
    from megarec.models.qwen3 import mapping

    out = {}
    for name in model_state:
        m = re.match(r"decoder\.layers\.(\d+)\.(.*)", name)
        key = name if m is None else mapping.LAYER_PREFIX + m.group(2)
        key = key.replace("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight").replace(
            "pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"
        )
        if key in plain:
            out[name] = plain[key] if m is None else plain[key][int(m.group(1))]
    return out


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """megarec pre-training (tiny, untied, fp32, head_dim 24): checkpoints at iterations 2 and 4 of 4."""
    root = tmp_path_factory.mktemp("pretrain")
    save = str(root / "ckpt")
    ok(
        run_cli(
            [
                "pretrain",
                "--config",
                "configs/pretrain/tiny_cpu.yaml",
                "data.mock=true",
                "train.steps=4",
                "model.head_dim=24",
                "checkpoint.save_interval=2",
                f"checkpoint.dir={save}",
                f"logging.run_dir={root / 'run'}",
                "logging.progress=false",
                "logging.wandb_mode=disabled",
                "train.eval_interval=0",
            ],
            timeout=600,
        )
    )
    lrs = [json.loads(line)["lr"] for line in open(root / "run" / "metrics.jsonl") if '"lr"' in line]
    return {"root": save, "lrs": lrs}


@pytest.fixture(scope="module")
def hf_tied(tmp_path_factory):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    path = tmp_path_factory.mktemp("hf_tied")
    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=1100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    model.to(torch.bfloat16).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def converted(hf_tied, tmp_path_factory):
    """hf-to-mcore of the tied bf16 model for TP=2: vocabulary 1100 padded to 1280 (a multiple of 128 × 2)."""
    out = str(tmp_path_factory.mktemp("converted") / "ckpt")
    ok(run_cli(["convert", "hf-to-mcore", "--hf-dir", hf_tied, "--out", out, "--tp", "2"], timeout=300))
    return out


@pytest.fixture(scope="module")
def mlm_checkpoint(converted, tmp_path_factory):
    """A checkpoint as Megatron-LM saves it (fp32): started from the converted weights, one Adam step at lr 0
    (the weights stay those of the HF model, the moments are not zero), saved at iteration 3 with a 1280-row
    vocabulary (--make-vocab-size-divisible-by 256)."""
    save = str(tmp_path_factory.mktemp("mlm") / "ckpt")
    megatron_lm(
        "save",
        converted,
        "3",
        *TIED_FLAGS,
        "--make-vocab-size-divisible-by",
        "256",
        "--save",
        save,
        "--global-batch-size",
        str(GBS),
        "--train-iters",
        "10",
        "--lr",
        "0.0",
        "--min-lr",
        "0.0",
    )
    return save


# ---------------------------------------------------------------- pure functions


def test_scheduler_state_is_counted_in_samples():
    state = {
        "max_lr": 1e-3,
        "lr_warmup_steps": 2,
        "num_steps": 5,
        "lr_decay_style": "cosine",
        "lr_decay_steps": 20,
        "min_lr": 1e-4,
        "start_wd": 0.1,
        "end_wd": 0.1,
        "wd_incr_style": "constant",
        "wd_incr_steps": 20,
    }
    assert compat.scheduler_state_in_samples(state, 16) == {
        **state,
        "lr_warmup_steps": 32,
        "num_steps": 80,
        "lr_decay_steps": 320,
        "wd_incr_steps": 320,
    }
    with pytest.raises(ConfigError, match="global_batch_size must be >= 1"):
        compat.scheduler_state_in_samples(state, 0)


def test_rng_layout_and_megatron_lm_detection():
    mlm_rng = [{k: None for k in compat.MEGATRON_LM_RNG_KEYS}]
    assert compat.rng_state_readable(mlm_rng)
    assert not compat.rng_state_readable({"python": 1, "numpy": 2, "torch": 3, "cuda": None, "tracker": {}})
    assert not compat.rng_state_readable([{"random_rng_state": 1}])
    mlm = {"args": argparse.Namespace(padded_vocab_size=1280), "iteration": 3}
    assert compat.is_megatron_lm_checkpoint(mlm) and compat.padded_vocab_size(mlm) == 1280
    ours = {"args": argparse.Namespace(padded_vocab_size=1), "format_version": 1, "padded_vocab_size": 1152}
    assert not compat.is_megatron_lm_checkpoint(ours) and compat.padded_vocab_size(ours) == 1152
    assert compat.padded_vocab_size({"iteration": 0}) is None
    compat.refuse_resume(ours, "x")
    with pytest.raises(
        ConfigError,
        match="^y is a Megatron-LM checkpoint: start from its weights with "
        r"checkpoint.init_from=<it>",
    ):
        compat.refuse_resume(mlm, "y")


def _preset_args(preset: str, vocab: int, tp: int):
    """The args megarec writes for a preset with the expanded vocabulary (no model is built)."""
    from types import SimpleNamespace

    from megatron.core.transformer.transformer_config import TransformerConfig

    from megarec.models.config import ModelConfig
    from megarec.models.qwen3 import builder as qwen3
    from megarec.models.qwen3.presets import get_preset
    from megarec.runtime.config import ParallelConfig

    arch = get_preset(preset).replace(vocab_size=vocab)
    parallel = ParallelConfig(tensor_model_parallel_size=tp)
    kwargs = qwen3.transformer_config_kwargs(arch, ModelConfig(dtype="bf16"), parallel, "local", on_gpu=False)
    kwargs["tensor_model_parallel_size"] = 1  # no process groups here; only the config's fields are read
    padded = qwen3.padded_vocab_size(vocab, 128, tp)
    model = SimpleNamespace(
        config=TransformerConfig(**kwargs),
        vocab_size=padded,
        position_embedding_type="rope",
        rotary_base=int(arch.rope_theta),
        rotary_percent=1.0,
        rotary_scaling=False,
        max_sequence_length=arch.max_position_embeddings,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
    )
    settings = {**compat.run_settings(None), "make_vocab_size_divisible_by": 128}
    return compat.checkpoint_args(
        model,
        padded_vocab_size=padded,
        tp=tp,
        pp=1,
        vp=None,
        world_size=tp,
        data_parallel_size=1,
        consumed_samples=0,
        saved_optimizer=False,
        saved_rng=False,
        settings=settings,
    )


def _doc_block(name: str) -> list[str]:
    """The flags of the bash array under `<!-- megatron-lm-flags: name -->` in docs/convert.md."""
    text = open(os.path.join(REPO, "docs", "convert.md")).read()
    m = re.search(rf"<!-- megatron-lm-flags: {re.escape(name)} -->\s*```bash\n\w+=\((.*?)\)\n", text, re.S)
    assert m, f"docs/convert.md has no flag block {name}"
    return shlex.split(m.group(1))


@pytest.mark.parametrize("preset,tp,padded,untied", [("qwen3-1.7b", 2, 176384, False), ("qwen3-8b", 4, 176640, True)])
def test_documented_flags_are_what_megarec_writes(preset, tp, padded, untied):
    """docs/convert.md's flag blocks for Qwen3-1.7B/8B with the itemic vocabulary (151,669 + 3×8192 + 2 tokens
    → 176,256 rows after expand-vocab) rebuild the model megarec's args describe, flag for flag."""
    from megatron_lm_side import flag_parser

    args = _preset_args(preset, 176256, tp)
    assert args.padded_vocab_size == padded and args.untie_embeddings_and_output_weights == untied
    printed = compat.megatron_lm_flags(args, load="CKPT")
    doc = _doc_block(preset)
    doc_ns = flag_parser().parse_args(doc)
    printed_ns = flag_parser().parse_args(printed)
    for dest in (
        "num_layers",
        "hidden_size",
        "ffn_hidden_size",
        "num_attention_heads",
        "group_query_attention",
        "num_query_groups",
        "kv_channels",
        "qk_layernorm",
        "normalization",
        "layernorm_epsilon",
        "swiglu",
        "add_bias_linear",
        "position_embedding_type",
        "rotary_base",
        "untie_embeddings_and_output_weights",
        "max_position_embeddings",
        "attention_dropout",
        "hidden_dropout",
        "make_vocab_size_divisible_by",
        "padded_vocab_size",
        "bf16",
        "ckpt_format",
        "finetune",
    ):
        assert getattr(doc_ns, dest) == getattr(printed_ns, dest), dest
    assert (doc_ns.num_layers, doc_ns.kv_channels, doc_ns.num_query_groups) == (
        {"qwen3-1.7b": 28, "qwen3-8b": 36}[preset],
        128,
        8,
    )


# ---------------------------------------------------------------- megarec → Megatron-LM


@pytest.mark.parametrize("which", ["pretrained", "converted"])
def test_common_state_has_every_field_megatron_lm_reads(which, pretrained, converted):
    path = pretrained["root"] if which == "pretrained" else converted
    common = common_state(path)
    keys = COMMON_KEYS if which == "pretrained" else [k for k in COMMON_KEYS if k != "opt_param_scheduler"]
    missing = [k for k in keys + MEGAREC_KEYS if k not in common]
    assert not missing, missing
    args = common["args"]
    assert isinstance(args, argparse.Namespace)
    absent = [a for a in ARGS_READ if not hasattr(args, a)]
    assert not absent, absent
    assert set(compat.ARGS_READ_ON_LOAD) | set(compat.ARGS_FOR_USE_CHECKPOINT_ARGS) == set(ARGS_READ)
    assert set(compat.COMMON_KEYS_READ) == set(COMMON_KEYS)
    assert common["checkpoint_version"] == 3.0
    expected = dict(
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=128,
        num_attention_heads=4,
        num_query_groups=2,
        group_query_attention=True,
        qk_layernorm=True,
        normalization="RMSNorm",
        layernorm_epsilon=1e-6,
        swiglu=True,
        add_bias_linear=False,
        add_qkv_bias=False,
        position_embedding_type="rope",
        add_position_embedding=True,
        rotary_base=1000000,
        rotary_percent=1.0,
        ckpt_format="torch_dist",
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1,
        world_size=1,
        data_parallel_size=1,
        make_vocab_size_divisible_by=128,
        no_save_rng=True,
        skipped_train_samples=0,
        consumed_valid_samples=0,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )
    if which == "pretrained":
        expected.update(
            kv_channels=24,
            untie_embeddings_and_output_weights=True,
            padded_vocab_size=1024,
            max_position_embeddings=4096,
            seq_length=128,
            global_batch_size=GBS,
            bf16=False,
            consumed_train_samples=4 * GBS,
            no_save_optim=False,
            train_iters=4,
        )
        assert common["iteration"] == 4
        sched = common["opt_param_scheduler"]
        assert {k: sched[k] for k in compat.SCHEDULER_STEP_FIELDS} == {
            "num_steps": 4 * GBS,
            "lr_warmup_steps": 0,
            "lr_decay_steps": 4 * GBS,
            "wd_incr_steps": 4 * GBS,
        }
        assert common["scheduler"]["num_steps"] == 4  # megarec's own record is untouched
    else:
        expected.update(
            kv_channels=16,
            untie_embeddings_and_output_weights=False,
            padded_vocab_size=1280,
            max_position_embeddings=256,
            seq_length=None,
            bf16=True,
            consumed_train_samples=0,
            no_save_optim=True,
        )
        assert common["iteration"] == 0 and "opt_param_scheduler" not in common
    got = {k: getattr(args, k) for k in expected}
    assert got == expected


@pytest.mark.parametrize("which", ["pretrained", "converted"])
def test_megatron_lm_model_loads_megarec_weights_bit_identically(which, pretrained, converted, tmp_path):
    """Loaded as Megatron-LM loads it (--finetune); the converted checkpoint (bf16) with --bf16, where
    Megatron-LM's Float16Module makes every parameter bf16 while megarec's local spec keeps norms in fp32: the
    values still match bit for bit (bf16 → fp32 is exact)."""
    if which == "pretrained":
        root, flags, dtype = pretrained["root"], PRETRAIN_FLAGS, torch.float32
    else:
        root, flags, dtype = converted, [*TIED_FLAGS, "--bf16"], torch.bfloat16
    dump = str(tmp_path / "loaded.pt")
    megatron_lm("load", dump, *flags, "--load", root, "--finetune")
    loaded = torch.load(dump)
    assert (loaded["iteration"], loaded["consumed_train_samples"]) == (0, 0)
    model = loaded["model"]
    expected = as_module_state(full_tensors(root), model)
    assert sorted(expected) == sorted(model), set(model) ^ set(expected)
    assert ("output_layer.weight" in model) == (which == "pretrained")
    for name, t in model.items():
        assert t.dtype == dtype and torch.equal(t.to(expected[name].dtype), expected[name]), name
    assert model["embedding.word_embeddings.weight"].shape == ((1024, 64) if which == "pretrained" else (1280, 64))


@pytest.mark.slow
def test_interleaved_pipeline_checkpoint_loads_into_one_megatron_lm_chunk(tmp_path):
    """PP=2 × VP=2 saves model0/model1 on two ranks; the dist-checkpoint keys are global, so a Megatron-LM run
    without pipelining (one "model") loads all 4 layers bit-identically; the args record the layout."""
    save = str(tmp_path / "ckpt")
    ok(
        run_cli(
            [
                "pretrain",
                "--config",
                "configs/pretrain/tiny_cpu.yaml",
                "data.mock=true",
                "train.steps=1",
                "model.num_layers=4",
                "parallel.pipeline_model_parallel_size=2",
                "parallel.virtual_pipeline_model_parallel_size=2",
                f"checkpoint.dir={save}",
                f"logging.run_dir={tmp_path / 'run'}",
                "logging.progress=false",
                "logging.wandb_mode=disabled",
            ],
            nproc=2,
            timeout=600,
        )
    )
    args = common_state(save)["args"]
    assert (
        args.pipeline_model_parallel_size,
        args.virtual_pipeline_model_parallel_size,
        args.world_size,
        args.data_parallel_size,
        args.num_layers,
    ) == (2, 2, 2, 1, 4)
    dump = str(tmp_path / "loaded.pt")
    flags = [*PRETRAIN_FLAGS, "--num-layers", "4", "--kv-channels", "16", "--load", save, "--finetune"]
    megatron_lm("load", dump, *flags)
    model = torch.load(dump)["model"]
    expected = as_module_state(full_tensors(save), model)
    assert len(expected) == len(model) == 35 and "decoder.layers.3.mlp.linear_fc2.weight" in model
    assert all(torch.equal(model[n], expected[n]) for n in expected)


def test_megatron_lm_resume_gets_optimizer_moments_and_schedule(pretrained, tmp_path):
    """Megatron-LM's optimizer (its own parameter groups) and sample-counted scheduler, loading iteration 2 of 4
    (--ckpt-step 2): Adam moments equal megarec's by parameter, the schedule sits at megarec's learning rate."""
    root = pretrained["root"]
    dump = str(tmp_path / "resumed.pt")
    megatron_lm("load", dump, *PRETRAIN_FLAGS, *RESUME_FLAGS, "--load", root, "--ckpt-step", "2")
    loaded = torch.load(dump)
    assert (loaded["iteration"], loaded["consumed_train_samples"]) == (2, 2 * GBS)
    ckpt2 = os.path.join(root, "iter_0000002")
    saved = full_tensors(ckpt2, optimizer=True)
    weights = as_module_state(full_tensors(ckpt2), loaded["model"])
    assert all(torch.equal(loaded["model"][n], weights[n]) for n in weights)
    moments = loaded["moments"]
    assert len(moments) == 19  # 3 + 8 per layer (qkv, proj, fc1, fc2, four norms)
    for name, state in moments.items():
        for kind in ("exp_avg", "exp_avg_sq"):
            ref = as_module_state(
                {k.removeprefix(f"optimizer.state.{kind}."): v for k, v in saved.items()}, {name: None}
            )[name]
            assert torch.count_nonzero(ref) > 0 and torch.equal(state[kind], ref), (name, kind)
        assert float(state["step"]) == 2.0
    sched = loaded["scheduler"]
    assert (sched["num_steps"], sched["lr_decay_steps"]) == (2 * GBS, 4 * GBS)
    # megarec's learning rate of step 2 (cosine half-way from 3e-3 to 3e-4), now in Megatron-LM's units
    assert pretrained["lrs"][1] == pytest.approx(3e-4 + 0.5 * 2.7e-3 * (1 + math.cos(math.pi * 2 / 4)), rel=1e-12)
    assert loaded["lr"] == [pytest.approx(pretrained["lrs"][1], rel=1e-12)]
    assert loaded["betas"] == [(0.9, 0.95)]  # restored from megarec's param groups over the run's default 0.999
    # Megatron-LM's own groups: the input embedding now gets weight decay (megarec exempts it)
    assert loaded["weight_decay"]["embedding.word_embeddings.weight"] == 0.1
    assert loaded["weight_decay"]["decoder.final_layernorm.weight"] == 0.0


def test_flag_printer(pretrained):
    """`megarec convert megatron-lm-flags` prints exactly the documented flags (resume: with the schedule's)."""
    from megatron_lm_side import flag_parser

    root = os.path.abspath(pretrained["root"])
    proc = ok(run_cli(["convert", "megatron-lm-flags", "--mcore-dir", root, "--mode", "resume"], timeout=300))
    printed = vars(flag_parser().parse_args(shlex.split(proc.stdout.strip().splitlines()[-1])))
    want = vars(flag_parser().parse_args([*PRETRAIN_FLAGS, *RESUME_FLAGS, "--load", root]))
    assert printed.pop("transformer_impl") == "transformer_engine"  # left to the user (Megatron-LM's default)
    want.pop("transformer_impl")
    assert printed == want
    proc = ok(run_cli(["convert", "megatron-lm-flags", "--mcore-dir", os.path.join(root, "iter_0000002")], timeout=300))
    printed = flag_parser().parse_args(shlex.split(proc.stdout.strip().splitlines()[-1]))
    assert (printed.load, printed.ckpt_step, printed.finetune, printed.train_iters) == (root, 2, True, None)


# ---------------------------------------------------------------- Megatron-LM → megarec


def test_megarec_starts_from_megatron_lm_weights(mlm_checkpoint, hf_tied, tmp_path):
    """checkpoint.init_from=<Megatron-LM root>: its 1280-row padding (args.padded_vocab_size) is kept although
    megarec at TP=1 would pad 1100 to 1152, and the weights megarec saves are Megatron-LM's, bit for bit."""
    theirs_common = common_state(mlm_checkpoint)
    assert compat.is_megatron_lm_checkpoint(theirs_common) and theirs_common["checkpoint_version"] == 3.0
    assert theirs_common["args"].padded_vocab_size == 1280 and "padded_vocab_size" not in theirs_common
    save = str(tmp_path / "ckpt")
    ok(
        run_cli(
            [
                "pretrain",
                f"model.hf_config={hf_tied}",
                "model.dtype=fp32",
                "model.transformer_impl=local",
                f"checkpoint.init_from={mlm_checkpoint}",
                "data.mock=true",
                "train.steps=0",
                "train.seq_length=32",
                "train.micro_batch_size=1",
                "train.global_batch_size=1",
                f"checkpoint.dir={save}",
                f"logging.run_dir={tmp_path / 'run'}",
                "logging.progress=false",
                "logging.wandb_mode=disabled",
            ],
            timeout=300,
        )
    )
    ours = full_tensors(save)
    theirs = full_tensors(mlm_checkpoint)
    assert sorted(ours) == sorted(theirs)
    assert ours["embedding.word_embeddings.weight"].shape == (1280, 64)
    for key in theirs:
        assert ours[key].dtype == torch.float32 and torch.equal(ours[key], theirs[key]), key
    assert common_state(save)["padded_vocab_size"] == 1280


def test_megatron_lm_checkpoint_exports_to_hf(mlm_checkpoint, hf_tied, tmp_path):
    from megarec.common import hfdir as hf_io
    from megarec.convert.exporter import mcore_to_hf

    out = tmp_path / "hf"
    mcore_to_hf(mlm_checkpoint, str(out), hf_template=hf_tied)
    a, b = hf_io.HFWeights(hf_tied), hf_io.HFWeights(str(out))
    assert sorted(a.names()) == sorted(b.names())
    for n in a.names():
        assert torch.equal(a.get(n), b.get(n)), n


def test_megarec_refuses_to_resume_a_megatron_lm_checkpoint(mlm_checkpoint, hf_tied, tmp_path):
    proc = run_cli(
        [
            "pretrain",
            f"model.hf_config={hf_tied}",
            f"checkpoint.resume_from={mlm_checkpoint}",
            "data.mock=true",
            "train.steps=1",
            "train.seq_length=32",
            "train.micro_batch_size=1",
            "train.global_batch_size=1",
            f"logging.run_dir={tmp_path / 'run'}",
            "logging.progress=false",
            "logging.wandb_mode=disabled",
        ],
        timeout=300,
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        f"{mlm_checkpoint} is a Megatron-LM checkpoint: start from its weights with checkpoint.init_from=<it>" in last
    ), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- Megatron-LM itself (opt-in)

MEGATRON_LM_DIR = os.environ.get("MEGATRON_LM_DIR")
real = pytest.mark.skipif(
    not MEGATRON_LM_DIR,
    reason="set MEGATRON_LM_DIR to a Megatron-LM checkout at core_v0.16.1 to run Megatron-LM's own code",
)
# What a CPU run of Megatron-LM needs on top (no fused kernels, no TE); not part of the documented flags.
CPU_FLAGS = (
    "--transformer-impl local --no-rope-fusion --no-masked-softmax-fusion --no-bias-swiglu-fusion "
    "--no-bias-dropout-fusion --no-persist-layer-norm --no-gradient-accumulation-fusion "
    "--use-cpu-initialization --tokenizer-type NullTokenizer --vocab-size 1000"
).split()


def megatron_lm_real(action: str, out: str, flags: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "megatron_lm_real.py"), action, out, *flags],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "WORLD_SIZE": "1",
            "PYTHONPATH": os.pathsep.join([MEGATRON_LM_DIR, REPO]),
        },
    )
    ok(proc)


@real
@pytest.mark.parametrize("preset,tp", [("qwen3-1.7b", 2), ("qwen3-8b", 4)])
def test_real_megatron_lm_accepts_documented_flags(preset, tp, tmp_path):
    out = str(tmp_path / "args.json")
    # at TP=1: validate_args asks CUDA for the device architecture when TP > 1; the padding is explicit anyway
    megatron_lm_real(
        "parse",
        out,
        [
            *_doc_block(preset),
            "--seq-length",
            "4096",
            "--micro-batch-size",
            "1",
            "--train-iters",
            "10",
            "--tokenizer-type",
            "NullTokenizer",
            "--vocab-size",
            "176247",
        ],
    )
    parsed = json.load(open(out))
    args = _preset_args(preset, 176256, tp)
    for name in (
        "num_layers",
        "hidden_size",
        "ffn_hidden_size",
        "num_attention_heads",
        "group_query_attention",
        "num_query_groups",
        "kv_channels",
        "qk_layernorm",
        "normalization",
        "swiglu",
        "add_bias_linear",
        "position_embedding_type",
        "rotary_base",
        "max_position_embeddings",
        "untie_embeddings_and_output_weights",
        "padded_vocab_size",
        "make_vocab_size_divisible_by",
        "attention_dropout",
        "hidden_dropout",
        "bf16",
        "ckpt_format",
        "add_position_embedding",
    ):
        assert parsed[name] == getattr(args, name), name
    assert parsed["layernorm_epsilon"] == args.layernorm_epsilon and parsed["finetune"] is True


@real
def test_real_megatron_lm_loads_megarec_checkpoint(pretrained, tmp_path):
    """Megatron-LM's load_checkpoint with the printed flags: --finetune (weights), then a full resume."""
    root = os.path.abspath(pretrained["root"])
    expected = None
    for mode in ("weights", "resume"):
        proc = ok(
            run_cli(
                ["convert", "megatron-lm-flags", "--mcore-dir", os.path.join(root, "iter_0000002"), "--mode", mode],
                timeout=300,
            )
        )
        flags = shlex.split(proc.stdout.strip().splitlines()[-1])
        out = str(tmp_path / f"{mode}.pt")
        run = RESUME_FLAGS[:8] if mode == "weights" else []  # a run's own batch and length flags
        megatron_lm_real("load", out, [*flags, *run, *CPU_FLAGS])
        loaded = torch.load(out)
        if expected is None:
            expected = as_module_state(full_tensors(os.path.join(root, "iter_0000002")), loaded["model"])
        assert sorted(loaded["model"]) == sorted(expected)
        assert all(torch.equal(loaded["model"][n], expected[n]) for n in expected)
        if mode == "weights":
            assert (loaded["iteration"], loaded["consumed_train_samples"]) == (0, 0) and "moments" not in loaded
            continue
        assert (loaded["iteration"], loaded["consumed_train_samples"]) == (2, 2 * GBS)
        saved = full_tensors(os.path.join(root, "iter_0000002"), optimizer=True)
        assert len(loaded["moments"]) == 19
        for name, state in loaded["moments"].items():
            for kind in ("exp_avg", "exp_avg_sq"):
                ref = as_module_state(
                    {k.removeprefix(f"optimizer.state.{kind}."): v for k, v in saved.items()}, {name: None}
                )[name]
                assert torch.equal(state[kind], ref), (name, kind)
        assert loaded["scheduler"]["num_steps"] == 2 * GBS
        assert loaded["lr"] == [pytest.approx(pretrained["lrs"][1], rel=1e-12)]
