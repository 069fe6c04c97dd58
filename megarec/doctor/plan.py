"""The exact `megarec` command lines the checks run, built from the doctor's settings alone.

Keeping every command line here, as data, lets the tests load each planned `megarec pretrain` through the real
config loader without a GPU, and lets the summary show what was run.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from megarec.common.errors import ConfigError
from megarec.doctor.device import DeviceInfo, fits

SEED = 1234

# The small Qwen3 of the loss-parity checks (`megarec init-model` flags). Every width is a multiple of 16 so
# FP8 GEMMs accept it; heads and KV groups split over TP=2; head_dim 64 suits every fused attention backend.
# --init-std 0.1 (not the usual 0.02) makes the converted weights recognisable: its first loss is ~11.5 where
# Megatron's own std-0.02 initialisation gives ~9.1, so a run that ignored checkpoint.init_from cannot pass
# the parity tolerance; on CPU it also trains as smoothly (loss 11.5 -> ~4 in 20 steps).
SMALL_MODEL_FLAGS = (
    "--preset",
    "qwen3-small",
    "--num-layers",
    "4",
    "--hidden-size",
    "512",
    "--ffn-hidden-size",
    "1536",
    "--num-attention-heads",
    "8",
    "--num-query-groups",
    "4",
    "--head-dim",
    "64",
    "--init-std",
    "0.1",
    "--seed",
    "0",
)
BPE_RANKS = 8192  # `tokenizer build-qwen3 --bpe-ranks`: vocabulary 8,218 with Qwen3's added tokens
SMALL_SEQ_LENGTH = 1024  # a multiple of 2·CP·TP = 4 for the CP=2 and TP=2+SP runs
SMALL_MICRO_BATCH = 4
SMALL_GLOBAL_BATCH = 8
SMALL_LR, SMALL_MIN_LR = 1e-3, 1e-4

THROUGHPUT_PRESETS = ("qwen3-0.6b", "qwen3-1.7b")
THROUGHPUT_SEQ_LENGTH = 4096
THROUGHPUT_STEPS = 10  # the first THROUGHPUT_WARMUP of them are not counted
THROUGHPUT_WARMUP = 3
THROUGHPUT_MICRO_BATCH = 1
THROUGHPUT_GLOBAL_BATCH = 8

MEMORY_PRESET = "qwen3-8b"
MEMORY_LAYERS = (2, 4)
MEMORY_VOCAB = 8192  # the per-layer delta does not depend on it; a small one leaves room for 32K tokens
MEMORY_STEPS = 3  # Adam's state exists from the first optimizer step on; step 2 peaks with it
MEMORY_RECIPE = os.path.join("configs", "models", "qwen3_8b_h100.yaml")
MEMORY_MIN_SEQ = 4096
FIT_FRACTION = 0.8  # a run is attempted when its memory estimate stays within 80% of the GPU's memory


def repo_root() -> str:
    """The checkout this package runs from (recipes live in its configs/)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class WorkPaths:
    """Where everything goes under --out: logs and the JSON summary stay, work/ is removed unless --keep."""

    out: str

    @property
    def work(self) -> str:
        return os.path.join(self.out, "work")

    @property
    def logs(self) -> str:
        return os.path.join(self.out, "logs")

    @property
    def summary(self) -> str:
        return os.path.join(self.out, "doctor_gpu.json")

    @property
    def tokenizer(self) -> str:
        return os.path.join(self.work, "tokenizer")

    @property
    def hf_model(self) -> str:
        return os.path.join(self.work, "hf_model")

    @property
    def mcore(self) -> str:
        return os.path.join(self.work, "mcore")

    def run_dir(self, name: str) -> str:
        return os.path.join(self.work, "runs", name)

    def log(self, name: str) -> str:
        return os.path.join(self.logs, f"{name}.log")


@dataclass(frozen=True)
class Command:
    """One `megarec` invocation: argv after `megarec`, on `nproc` GPUs (torchrun when more than one)."""

    name: str
    args: tuple[str, ...]
    nproc: int = 1
    notes: dict = field(default_factory=dict, compare=False, hash=False)

    def argv(self, python: str = sys.executable) -> list[str]:
        if self.nproc > 1:
            return [
                python,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={self.nproc}",
                "-m",
                "megarec",
                *self.args,
            ]
        return [python, "-m", "megarec", *self.args]

    @property
    def overrides(self) -> list[str]:
        """The KEY=VALUE overrides of a `pretrain` command."""
        assert self.args[0] == "pretrain"
        return list(self.args[1:])


def setup_commands(paths: WorkPaths, tiktoken: Optional[str] = None) -> list[Command]:
    """Tokenizer → random small HF Qwen3 → Megatron-Core checkpoint: the shared start of the parity checks."""
    tok = ["tokenizer", "build-qwen3", "--out", paths.tokenizer, "--bpe-ranks", str(BPE_RANKS)]
    if tiktoken:
        tok += ["--tiktoken", tiktoken]
    return [
        Command("setup_tokenizer", tuple(tok)),
        Command(
            "setup_init_model",
            ("init-model", "--tokenizer", paths.tokenizer, "--out", paths.hf_model, *SMALL_MODEL_FLAGS),
        ),
        Command(
            "setup_convert",
            ("convert", "hf-to-mcore", "--hf-dir", paths.hf_model, "--out", paths.mcore, "--dtype", "bf16"),
        ),
    ]


def _common(paths: WorkPaths, name: str, steps: int) -> list[str]:
    return [
        "data.mock=true",
        f"train.steps={steps}",
        "train.eval_interval=0",
        f"train.seed={SEED}",
        "model.dtype=bf16",
        "logging.log_interval=1",
        "logging.progress=false",
        "logging.wandb_mode=disabled",
        f"logging.run_dir={paths.run_dir(name)}",
    ]


# name → (layer spec, extra overrides, processes) of the runs on the small converted model
SMALL_RUNS: dict[str, tuple[str, tuple[str, ...], int]] = {
    "te_bf16": ("transformer_engine", (), 1),
    "local_bf16": ("local", (), 1),
    "te_fp8": ("transformer_engine", ("model.fp8=hybrid",), 1),
    "tp2_sp": ("transformer_engine", ("parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"), 2),
    "cp2": ("transformer_engine", ("parallel.context_parallel_size=2",), 2),
}


def small_run(paths: WorkPaths, name: str, steps: int) -> Command:
    """A run of the small model from the converted checkpoint; same seed, data and batches for every name."""
    impl, extra, nproc = SMALL_RUNS[name]
    args = [
        "pretrain",
        *_common(paths, name, steps),
        f"model.hf_config={paths.hf_model}",
        f"checkpoint.init_from={paths.mcore}",
        f"model.transformer_impl={impl}",
        f"train.seq_length={SMALL_SEQ_LENGTH}",
        f"train.micro_batch_size={SMALL_MICRO_BATCH}",
        f"train.global_batch_size={SMALL_GLOBAL_BATCH}",
        f"optimizer.lr={SMALL_LR}",
        f"optimizer.min_lr={SMALL_MIN_LR}",
        *extra,
    ]
    return Command(name, tuple(args), nproc)


def throughput_run(paths: WorkPaths, preset: str, peak_tflops: Optional[float]) -> Command:
    """A random-init preset at 4096 tokens, TP=1, bf16, Transformer Engine, mock data."""
    name = "throughput_" + preset.replace("qwen3-", "").replace(".", "p")
    args = [
        "pretrain",
        *_common(paths, name, THROUGHPUT_STEPS),
        f"model.preset={preset}",
        "model.transformer_impl=transformer_engine",
        "parallel.tensor_model_parallel_size=1",
        f"train.seq_length={THROUGHPUT_SEQ_LENGTH}",
        f"train.micro_batch_size={THROUGHPUT_MICRO_BATCH}",
        f"train.global_batch_size={THROUGHPUT_GLOBAL_BATCH}",
    ]
    if peak_tflops is not None:
        args.append(f"logging.gpu_peak_tflops={peak_tflops:g}")
    return Command(name, tuple(args))


def memory_run(paths: WorkPaths, layers: int, seq_length: int) -> Command:
    """Qwen3-8B's width with `layers` layers and a small vocabulary at `seq_length` tokens, TP=1, DP=1."""
    name = f"memory_{layers}l"
    args = [
        "pretrain",
        *_common(paths, name, MEMORY_STEPS),
        f"model.preset={MEMORY_PRESET}",
        f"model.num_layers={layers}",
        f"model.vocab_size={MEMORY_VOCAB}",
        "model.transformer_impl=transformer_engine",
        f"train.seq_length={seq_length}",
        "train.micro_batch_size=1",
        "train.global_batch_size=1",
    ]
    return Command(name, tuple(args))


THD_SEQ_LENGTH = 512


def thd_probe_argv(python: str = sys.executable) -> list[str]:
    """The THD check's subprocess (megarec.doctor.thd_probe: product model and batch code, one JSON line)."""
    return [python, "-m", "megarec.doctor.thd_probe", "--seq-length", str(THD_SEQ_LENGTH), "--seed", str(SEED)]


def recipe_seq_length(recipe: Optional[str] = None) -> int:
    """train.seq_length of the 8B recipe (32K)."""
    from megarec.common.config import load_config
    from megarec.pretrain.config import PretrainConfig

    path = recipe or os.path.join(repo_root(), MEMORY_RECIPE)
    if not os.path.isfile(path):
        raise ConfigError(f"the 8B recipe {path} is missing (run the doctor from a megarec checkout)")
    return load_config(PretrainConfig, path, []).train.seq_length


def memory_estimate(layers: int, seq_length: int):
    """megarec.models.qwen3.memory's estimate for one memory run (TP=1, DP=1, bf16, no recomputation)."""
    from megarec.models.qwen3.builder import padded_vocab_size
    from megarec.models.qwen3.memory import estimate_memory
    from megarec.models.qwen3.presets import get_preset

    arch = get_preset(MEMORY_PRESET).replace(num_layers=layers, vocab_size=MEMORY_VOCAB)
    return estimate_memory(
        arch, seq_length=seq_length, micro_batch_size=1, padded_vocab=padded_vocab_size(MEMORY_VOCAB, 128, 1)
    )


def memory_seq_length(dev: DeviceInfo, recipe_seq: int) -> Optional[int]:
    """The recipe's sequence length, halved until the 4-layer run's estimate fits the GPU (None: not even
    MEMORY_MIN_SEQ tokens fit)."""
    seq = recipe_seq
    while seq >= MEMORY_MIN_SEQ:
        if fits(memory_estimate(max(MEMORY_LAYERS), seq).total, dev, FIT_FRACTION):
            return seq
        seq //= 2
    return None


def throughput_estimate(preset: str):
    from megarec.models.qwen3.builder import padded_vocab_size
    from megarec.models.qwen3.memory import estimate_memory
    from megarec.models.qwen3.presets import get_preset

    arch = get_preset(preset)
    return estimate_memory(
        arch,
        seq_length=THROUGHPUT_SEQ_LENGTH,
        micro_batch_size=THROUGHPUT_MICRO_BATCH,
        padded_vocab=padded_vocab_size(arch.vocab_size, 128, 1),
    )


def planned_pretrain_runs(
    paths: WorkPaths, steps: int, peak_tflops: Optional[float] = None, memory_seq: int = 32768
) -> list[Command]:
    """Every `megarec pretrain` the doctor can launch (the tests load each one's overrides)."""
    runs = [small_run(paths, name, steps) for name in SMALL_RUNS]
    runs += [throughput_run(paths, preset, peak_tflops) for preset in THROUGHPUT_PRESETS]
    runs += [memory_run(paths, layers, memory_seq) for layers in MEMORY_LAYERS]
    return runs
