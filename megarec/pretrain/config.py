"""The pre-training recipe: typed sections loaded from `configs/pretrain/*.yaml` plus dotted overrides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, List, Literal, Optional

from megarec.common.config import help_field
from megarec.models.config import ModelConfig
from megarec.runtime.config import CheckpointConfig, LoggingConfig, OptimizerConfig, ParallelConfig, StepsConfig


@dataclass
class TrainConfig(StepsConfig):
    micro_batch_size: int = help_field(2, "Sequences per micro-batch per data-parallel rank.")
    global_batch_size: int = help_field(
        8, "Sequences per optimizer step across all DP ranks (= micro_batch_size × DP × gradient-accumulation steps)."
    )
    seq_length: int = help_field(256, "Tokens per training sequence (context length).")
    eval_iters: int = help_field(2, "Validation batches per evaluation.")


@dataclass
class DataConfig:
    data_path: List[str] = help_field(
        default_factory=list,
        help="Megatron blend: 'PREFIX' or 'W1 PREFIX1 W2 "
        "PREFIX2 ...' (weights normalised), prefixes without .bin/.idx.",
    )
    mock: bool = help_field(False, "Train on Megatron-Core's MockGPTDataset (no files needed).")
    split: str = help_field("98,2,0", "train,valid,test split of each dataset, as weights.")
    tokenizer: Optional[str] = help_field(
        None, "HF tokenizer directory: vocabulary size and EOD id come from it (required for real data)."
    )
    itemic: Optional[str] = help_field(
        None,
        "itemic.json (or a directory holding it) written by vocabulary "
        "expansion; defaults to the one inside data.tokenizer.",
    )
    loss_mask: bool = help_field(
        False,
        "Read per-token loss masks from the sibling <prefix>_loss_mask_document "
        "datasets (chat data: assistant tokens only).",
    )
    packed: bool = help_field(
        False,
        "The prefixes are `megarec preprocess --pack` output: each training "
        "sequence is one pack, padded to train.seq_length, with position ids restarting "
        "at 0, block-diagonal causal attention and loss only inside each packed "
        "document (with data.loss_mask: assistant tokens only). Needs "
        "train.seq_length >= the --seq-length the packs were built for.",
    )
    reset_position_ids: bool = help_field(
        False,
        "Restart position ids after every EOD (unpacked GPTDataset streams; data.packed always resets per document).",
    )
    reset_attention_mask: bool = help_field(
        False,
        "Block attention across EOD boundaries (unpacked GPTDataset streams; data.packed always resets per document).",
    )
    eod_mask_loss: bool = help_field(False, "Exclude EOD tokens from the loss.")
    cache_dir: Optional[str] = help_field(
        None, "Where Megatron's dataset index caches go (default: <run_dir>/data_cache)."
    )
    num_workers: int = help_field(1, "DataLoader worker processes per rank.")


@dataclass
class FreezeConfig:
    stage: Literal["full", "itemic"] = help_field(
        "full",
        "full = every parameter trains (stage 2); itemic = only the itemic rows of the embedding train (stage 1).",
    )
    train_output_rows: Optional[bool] = help_field(
        None, "Stage 1: also train the itemic rows of an untied output layer (default: yes for untied models)."
    )
    first_id: Optional[int] = help_field(None, "First itemic token id (default: from itemic.json).")
    last_id: Optional[int] = help_field(None, "Last itemic token id, inclusive (default: from itemic.json).")


@dataclass
class PretrainCheckpointConfig(CheckpointConfig):
    resume_from: Optional[str] = help_field(
        None, "Resume from this checkpoint root instead of checkpoint.dir (Megatron-LM's --load beside --save)."
    )
    init_from: Optional[str] = help_field(
        None, "Start from these model weights only (e.g. `megarec convert hf-to-mcore` output); ignored when resuming."
    )
    no_load_optim: bool = help_field(False, "Resume weights/iteration but start a fresh optimizer.")
    no_load_rng: bool = help_field(False, "Do not restore RNG states on resume.")


@dataclass
class PretrainLoggingConfig(LoggingConfig):
    run_dir: str = help_field(
        "runs/pretrain", "Run directory: config.yaml, metrics.jsonl, checkpoints (by default) and data caches."
    )
    gpu_peak_tflops: float = help_field(
        989.0, "Per-GPU dense bf16 peak TFLOP/s, the MFU denominator without FP8 (H100 SXM = 989)."
    )
    gpu_peak_tflops_fp8: float = help_field(
        1979.0, "Per-GPU dense FP8 peak TFLOP/s, the MFU denominator when model.fp8 is set (H100 SXM = 1979)."
    )


@dataclass
class PretrainConfig:
    model: ModelConfig = help_field(default_factory=ModelConfig)
    parallel: ParallelConfig = help_field(default_factory=ParallelConfig)
    train: TrainConfig = help_field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = help_field(default_factory=OptimizerConfig)
    data: DataConfig = help_field(default_factory=DataConfig)
    freeze: FreezeConfig = help_field(default_factory=FreezeConfig)
    checkpoint: PretrainCheckpointConfig = help_field(default_factory=PretrainCheckpointConfig)
    logging: PretrainLoggingConfig = help_field(default_factory=PretrainLoggingConfig)

    # Keys of earlier releases, still read (with a one-line warning) in this one.
    RENAMED: ClassVar[dict] = {
        "train.train_iters": "train.steps",
        "checkpoint.save": "checkpoint.dir",
        "checkpoint.load": "checkpoint.resume_from",
        "model.precision": "model.dtype",
    }
