"""HF Qwen3 ↔ Megatron-Core conversion: bit-exact round trips, fp32 logit parity at TP/PP, the
pre-training engine loading a converted checkpoint, and clear refusals that leave nothing behind."""

from __future__ import annotations

import json
import os

import pytest
import torch

from megarec.common import hfdir as hf_io
from megarec.common.errors import ConfigError
from megarec.models.qwen3 import mapping
from megarec.models.qwen3.presets import Qwen3Arch

from conftest import run_cli

TOKENIZER_FILES = {
    "tokenizer.json": '{"model": {"type": "WordLevel"}}',
    "tokenizer_config.json": '{"eos": 1}',
    "chat_template.jinja": "{{ messages }}",
}
# head_dim 24 != hidden 64 / 4 heads; 1000 / 1100 rows: "expanded" vocabularies, not multiples of 128.
MODELS = {
    "untied": dict(vocab_size=1000, head_dim=24, tie_word_embeddings=False, dtype=torch.float32),
    "tied": dict(vocab_size=1100, head_dim=16, tie_word_embeddings=True, dtype=torch.bfloat16),
}


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def last_json(proc) -> dict:
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def make_hf(path, vocab_size, head_dim, tie_word_embeddings, dtype, seed=0, **over):
    """A random tiny Qwen3ForCausalLM saved offline, with tokenizer-like files, itemic.json and a
    generation config beside it."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        max_position_embeddings=256,
        tie_word_embeddings=tie_word_embeddings,
        **over,
    )
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():  # norms too, so that a swapped tensor cannot go unnoticed
            p.normal_(0.0, 0.3)
    model.to(dtype).save_pretrained(path)
    for name, text in TOKENIZER_FILES.items():
        (path / name).write_text(text)
    (path / "itemic.json").write_text(
        json.dumps({"first_id": vocab_size - 100, "last_id": vocab_size - 1, "num_layers": 3, "codebook_size": 32})
    )
    return str(path)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {name: make_hf(root / name, **kw) for name, kw in MODELS.items()}


@pytest.fixture(scope="module")
def mcore(hf, tmp_path_factory):
    """untied → Megatron at TP=2, PP=2; tied (bf16) → Megatron at TP=1."""
    root = tmp_path_factory.mktemp("mcore")
    out = {}
    for name, (tp, pp) in {"untied": (2, 2), "tied": (1, 1)}.items():
        out[name] = str(root / name)
        proc = ok(
            run_cli(
                ["convert", "hf-to-mcore", "--hf-dir", hf[name], "--out", out[name], "--tp", str(tp), "--pp", str(pp)],
                timeout=300,
            )
        )
        summary = last_json(proc)
        assert (summary["tp"], summary["pp"]) == (tp, pp)
    return out


def hf_tensors(path) -> dict:
    w = hf_io.HFWeights(path)
    return {n: w.get(n) for n in w.names()}


def assert_bit_exact(a_dir, b_dir):
    a, b = hf_tensors(a_dir), hf_tensors(b_dir)
    assert sorted(a) == sorted(b)
    for n in a:
        assert a[n].dtype == b[n].dtype and torch.equal(a[n], b[n]), n


# ---------------------------------------------------------------- mapping table


def test_fused_qkv_layout_is_per_kv_group():
    arch = Qwen3Arch(1, 8, 4, 2, 3, 16, 10, False)
    q = torch.arange(4 * 3 * 8, dtype=torch.float32).reshape(12, 8)
    k, v = -torch.arange(48.0).reshape(6, 8) - 1, 1000 + torch.arange(48.0).reshape(6, 8)
    fused = mapping.FusedQKV().to_mcore([q, k, v], arch, 10)
    # group 0: q heads 0,1 then k head 0 then v head 0; group 1 likewise
    expected = torch.cat([q[0:6], k[0:3], v[0:3], q[6:12], k[3:6], v[3:6]])
    assert torch.equal(fused, expected)
    assert all(torch.equal(x, y) for x, y in zip(mapping.FusedQKV().to_hf(fused, arch), [q, k, v]))


def test_mapping_covers_both_directions_for_tied_and_untied():
    for tied in (False, True):
        arch = Qwen3Arch(3, 16, 4, 2, 8, 32, 100, tied)
        hf_shapes = mapping.expected_hf_shapes(arch)
        src = {n: torch.randn(s) for n, s in hf_shapes.items()}
        mc = dict(mapping.hf_to_mcore(src.__getitem__, arch, 128))
        assert mc.keys() == mapping.expected_mcore_shapes(arch, 128).keys()
        assert ("output_layer.weight" in mc) == (not tied) and ("lm_head.weight" in hf_shapes) == (not tied)
        assert torch.all(mc["embedding.word_embeddings.weight"][100:] == 0)
        back = dict(mapping.mcore_to_hf(mc.__getitem__, arch, 128))
        assert back.keys() == src.keys() and all(torch.equal(back[n], src[n]) for n in src)
    assert mapping.stacked_key("decoder.layers.7.mlp.linear_fc2.weight") == ("decoder.layers.mlp.linear_fc2.weight", 7)
    assert mapping.layer_name("decoder.layers.mlp.linear_fc2.weight", 7) == "decoder.layers.7.mlp.linear_fc2.weight"


@pytest.mark.parametrize("text,expected", [("5GB", 5 * 10**9), ("2GiB", 2 * 2**30), ("100KB", 100_000), ("123", 123)])
def test_parse_size(text, expected):
    assert hf_io.parse_size(text) == expected


def test_reads_pytorch_bin_like_safetensors(hf, tmp_path):
    src = hf_tensors(hf["untied"])
    torch.save(src, tmp_path / "pytorch_model.bin")
    w = hf_io.HFWeights(str(tmp_path))
    assert sorted(w.names()) == sorted(src)
    assert all(w.shape(n) == tuple(t.shape) and torch.equal(w.get(n), t) for n, t in src.items())


def test_plan_shards():
    assert hf_io.plan_shards([("a", 4), ("b", 4), ("c", 9), ("d", 1)], 8) == [["a", "b"], ["c"], ["d"]]


# ---------------------------------------------------------------- round trips


def test_checkpoint_contents_and_metadata(hf, mcore):
    import torch.distributed as dist

    from megarec.runtime.megatron_checkpoint import checkpoint_padded_vocab, read_common_state, read_full_tensors

    try:
        t = read_full_tensors(mcore["untied"])
        common = read_common_state(os.path.join(mcore["untied"], "iter_0000000"))
        assert checkpoint_padded_vocab(mcore["untied"]) == 1024  # 1000 → multiple of 128 × TP=2
        assert checkpoint_padded_vocab(mcore["tied"]) == 1152  # 1100 → multiple of 128
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        assert t[key].shape == (1024, 64) and torch.all(t[key][1000:] == 0)  # deterministic padding rows
    assert t["decoder.layers.self_attention.linear_qkv.weight"].shape == (2, (4 + 2 * 2) * 24, 64)
    src = hf_tensors(hf["untied"])
    assert torch.equal(
        t["decoder.layers.self_attention.linear_qkv.layer_norm_weight"][1], src["model.layers.1.input_layernorm.weight"]
    )
    gate_up = [src["model.layers.0.mlp.gate_proj.weight"], src["model.layers.0.mlp.up_proj.weight"]]
    assert torch.equal(t["decoder.layers.mlp.linear_fc1.weight"][0], torch.cat(gate_up))
    meta = common["megarec"]["convert"]
    assert meta["source"] == os.path.abspath(hf["untied"]) and meta["hf_config"]["vocab_size"] == 1000
    assert (meta["target_tensor_model_parallel_size"], meta["target_pipeline_model_parallel_size"]) == (2, 2)
    assert meta["itemic"]["last_id"] == 999
    assert sorted(os.listdir(os.path.join(mcore["untied"], "hf_assets"))) == sorted(
        ["config.json", "generation_config.json", "itemic.json", *TOKENIZER_FILES]
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_is_bit_exact(name, hf, mcore, tmp_path):
    from megarec.convert.exporter import mcore_to_hf

    out = tmp_path / "hf"
    summary = mcore_to_hf(mcore[name], str(out))
    assert summary["weight_files"] == ["model.safetensors"]
    assert_bit_exact(hf[name], out)
    src_cfg, cfg = (json.load(open(os.path.join(d, "config.json"))) for d in (hf[name], out))
    assert cfg["vocab_size"] == MODELS[name]["vocab_size"]
    assert cfg["tie_word_embeddings"] == MODELS[name]["tie_word_embeddings"]
    assert {k: v for k, v in cfg.items() if k != "transformers_version"} == {
        k: v for k, v in src_cfg.items() if k != "transformers_version"
    }
    for f in ["generation_config.json", "itemic.json", *TOKENIZER_FILES]:
        assert open(os.path.join(hf[name], f), "rb").read() == open(out / f, "rb").read(), f


def test_sharded_export_loads_in_transformers(hf, mcore, tmp_path):
    from transformers import Qwen3ForCausalLM

    from megarec.convert.exporter import mcore_to_hf

    out = tmp_path / "sharded"
    summary = mcore_to_hf(mcore["untied"], str(out), max_shard_size="100KB")
    shards = [f for f in summary["weight_files"] if f.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in summary["weight_files"]
    index = json.load(open(out / "model.safetensors.index.json"))
    assert set(index["weight_map"].values()) == set(shards)
    assert_bit_exact(hf["untied"], out)
    model = Qwen3ForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    src = hf_tensors(hf["untied"])
    assert all(torch.equal(p, src[n]) for n, p in model.state_dict().items())


# ---------------------------------------------------------------- logits


@pytest.mark.parametrize("name", list(MODELS))
def test_verify_single_process(name, hf, mcore):
    proc = ok(
        run_cli(
            ["convert", "verify", "--hf-dir", hf[name], "--mcore-dir", mcore[name], "--max-abs-diff", "1e-4"],
            timeout=300,
        )
    )
    m = last_json(proc)
    assert m["ok"] and m["max_abs_diff"] < 1e-4 and m["cosine"] > 0.9999 and m["top1_agreement"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name,tp,pp", [("untied", 2, 1), ("tied", 1, 2), ("tied", 2, 2)])
def test_verify_under_torchrun(name, tp, pp, hf, mcore):
    proc = ok(
        run_cli(
            [
                "convert",
                "verify",
                "--hf-dir",
                hf[name],
                "--mcore-dir",
                mcore[name],
                "--tp",
                str(tp),
                "--pp",
                str(pp),
                "--max-abs-diff",
                "1e-4",
            ],
            nproc=tp * pp,
            timeout=300,
        )
    )
    jsons = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(jsons) == 1, proc.stdout  # one report, from the last stage's TP rank 0
    m = json.loads(jsons[0])
    assert m["ok"] and (m["tp"], m["pp"]) == (tp, pp) and m["max_abs_diff"] < 1e-4 and m["top1_agreement"] == 1.0


def test_verify_fails_on_a_different_model(hf, mcore, tmp_path):
    other = make_hf(tmp_path / "other", seed=1, **MODELS["untied"])
    proc = run_cli(["convert", "verify", "--hf-dir", other, "--mcore-dir", mcore["untied"]], timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    m = last_json(proc)
    assert not m["ok"] and m["cosine"] < 0.9 and m["failed"]


@pytest.mark.slow
def test_pretrain_engine_loads_converted_checkpoint_and_exports_back(hf, mcore, tmp_path):
    """Stage 1 starts from the converted checkpoint at TP=2 (checkpoint.init_from) and saves; that
    engine checkpoint exports back (HF config found through the run's model.hf_config) bit-exactly."""
    from megarec.convert.exporter import mcore_to_hf

    save = tmp_path / "ckpt"
    ok(
        run_cli(
            [
                "pretrain",
                f"model.hf_config={hf['untied']}",
                f"checkpoint.init_from={mcore['untied']}",
                "data.mock=true",
                "train.steps=0",
                "train.seq_length=32",
                "train.micro_batch_size=1",
                "train.global_batch_size=2",
                "parallel.tensor_model_parallel_size=2",
                f"checkpoint.dir={save}",
                f"logging.run_dir={tmp_path / 'run'}",
                "logging.progress=false",
                "logging.wandb_mode=disabled",
            ],
            nproc=2,
            timeout=300,
        )
    )
    out = tmp_path / "hf"
    summary = mcore_to_hf(str(save), str(out))
    assert summary["assets_from"] == hf["untied"]
    assert_bit_exact(hf["untied"], out)
    assert os.path.isfile(out / "itemic.json") and os.path.isfile(out / "tokenizer.json")


@pytest.mark.slow
def test_weights_only_checkpoint_as_load_keeps_its_weights_in_bf16(hf, mcore, tmp_path):
    """checkpoint.resume_from on a conversion output (no optimizer state) in bf16: the optimizer's fp32 main copies
    come from the loaded weights, not the random init. With a learning rate of 0 the saved weights are the
    converted ones, bit for bit."""
    from megarec.convert.exporter import mcore_to_hf

    save = tmp_path / "ckpt"
    proc = ok(
        run_cli(
            [
                "pretrain",
                f"model.hf_config={hf['tied']}",
                f"checkpoint.resume_from={mcore['tied']}",
                "model.dtype=bf16",
                "data.mock=true",
                "train.steps=1",
                "train.seq_length=32",
                "train.micro_batch_size=1",
                "train.global_batch_size=2",
                "optimizer.lr=0",
                "optimizer.min_lr=0",
                f"checkpoint.dir={save}",
                f"logging.run_dir={tmp_path / 'run'}",
                "logging.progress=false",
                "logging.wandb_mode=disabled",
            ],
            timeout=300,
        )
    )
    assert "holds weights only (no optimizer state)" in proc.stdout
    out = tmp_path / "hf"
    mcore_to_hf(str(save), str(out))
    assert_bit_exact(hf["tied"], out)


# ---------------------------------------------------------------- refusals


def _edit_config(src, dst, **changes):
    import shutil

    shutil.copytree(src, dst)
    cfg = json.load(open(os.path.join(dst, "config.json")))
    cfg.update(changes)
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))
    return str(dst)


def _nothing_written(out):
    parent = os.path.dirname(str(out))
    assert not os.path.exists(out)
    assert not [n for n in os.listdir(parent) if n.startswith(f".{os.path.basename(str(out))}.")]  # no staging left


@pytest.mark.parametrize(
    "case,message",
    [
        ("llama", "model_type is 'llama', expected 'qwen3'"),
        ("shape", "tensor model.layers.0.mlp.gate_proj.weight has shape [128, 64], config.json implies [96, 64]"),
        ("layers", "the checkpoint has no tensor model.layers.2.input_layernorm.weight"),
        ("tp3", "num_attention_heads=4 is not divisible by tensor_model_parallel_size=3"),
        ("kv_tp4", "num_query_groups (KV heads)=2 is not divisible by tensor_model_parallel_size=4"),
        ("pp3", "num_layers=2 is not divisible by pipeline stages"),
        ("rope", "RoPE scaling type 'yarn' is not supported"),
        ("tied_differs", "tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight"),
    ],
)
def test_import_refusals(case, message, hf, tmp_path):
    from megarec.convert.importer import hf_to_mcore

    src, tp, pp = hf["untied"], 1, 1
    if case == "llama":
        src = _edit_config(src, tmp_path / "src", model_type="llama", architectures=["LlamaForCausalLM"])
    elif case == "shape":
        src = _edit_config(src, tmp_path / "src", intermediate_size=96)
    elif case == "layers":
        src = _edit_config(src, tmp_path / "src", num_hidden_layers=4, layer_types=["full_attention"] * 4)
    elif case == "rope":
        src = _edit_config(
            src, tmp_path / "src", rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}
        )
    elif case == "tied_differs":  # an untied checkpoint described as tied: lm_head would be dropped silently
        src = _edit_config(src, tmp_path / "src", tie_word_embeddings=True)
    tp = {"tp3": 3, "kv_tp4": 4}.get(case, 1)
    pp = 3 if case == "pp3" else 1
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        hf_to_mcore(src, str(out), tp=tp, pp=pp)
    assert message in str(err.value)
    _nothing_written(out)


def test_export_refusals_leave_nothing(hf, mcore, tmp_path):
    from megarec.convert.exporter import mcore_to_hf

    template = _edit_config(hf["untied"], tmp_path / "template", intermediate_size=96)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"linear_fc1.weight has shape \[256, 64\], config.json implies \[192, 64\]"):
        mcore_to_hf(mcore["untied"], str(out), hf_template=template)
    _nothing_written(out)
    other_vocab = _edit_config(hf["untied"], tmp_path / "other_vocab", vocab_size=900)
    with pytest.raises(ConfigError, match="vocab_size=900 but the checkpoint was converted with a 1000-token"):
        mcore_to_hf(mcore["untied"], str(out), hf_template=other_vocab)
    _nothing_written(out)
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="is not empty"):
        mcore_to_hf(mcore["untied"], str(out))
    assert os.listdir(out) == ["keep.txt"]


def test_cli_error_is_one_line(hf, tmp_path):
    src = _edit_config(hf["untied"], tmp_path / "src", model_type="llama")
    proc = run_cli(["convert", "hf-to-mcore", "--hf-dir", src, "--out", str(tmp_path / "out")], timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("megarec convert: error: ") and "expected 'qwen3'" in lines[0]
    _nothing_written(tmp_path / "out")
    proc = run_cli(
        ["convert", "verify", "--hf-dir", hf["untied"], "--mcore-dir", str(tmp_path), "--tp", "2"], timeout=120
    )
    assert proc.returncode == 2 and "needs 2 processes" in proc.stderr
