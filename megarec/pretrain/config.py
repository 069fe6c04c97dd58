"""The pre-training recipe: typed sections loaded from `configs/pretrain/*.yaml` plus dotted overrides."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Optional

from megarec.common.config import help_field
from megarec.models.config import ModelConfig, ParallelConfig


@dataclass
class TrainConfig:
    train_iters: int = help_field(100, "Optimizer steps to run (the total; a resumed run continues to it).")
    micro_batch_size: int = help_field(2, "Sequences per micro-batch per data-parallel rank.")
    global_batch_size: int = help_field(8, "Sequences per optimizer step across all DP ranks "
                                        "(= micro_batch_size × DP × gradient-accumulation steps).")
    seq_length: int = help_field(256, "Tokens per training sequence (context length).")
    seed: int = help_field(1234, "Seed for weights init, data order and dropout.")
    eval_interval: int = help_field(0, "Run validation every N steps (0 = never).")
    eval_iters: int = help_field(2, "Validation batches per evaluation.")
    exit_interval: int = help_field(0, "Save a checkpoint and exit after this many steps of this run "
                                    "(0 = run to train_iters); for time-boxed jobs.")
    exit_signals: List[str] = help_field(default_factory=lambda: ["SIGTERM", "SIGUSR1"],
                                         help="Signals that trigger save-and-exit (SLURM pre-emption).")


@dataclass
class OptimizerConfig:
    lr: float = help_field(1e-4, "Peak learning rate (reached at the end of warm-up).")
    min_lr: float = help_field(2e-5, "Final learning rate of the cosine decay.")
    weight_decay: float = help_field(0.1, "AdamW decoupled weight decay (never on norms, biases, embeddings).")
    adam_beta1: float = help_field(0.9, "AdamW beta1.")
    adam_beta2: float = help_field(0.95, "AdamW beta2.")
    adam_eps: float = help_field(1e-8, "AdamW epsilon.")
    clip_grad: float = help_field(1.0, "Clip the global gradient norm to this value (0 = off). The logged "
                                  "grad_norm is the norm before clipping.")
    warmup_fraction: float = help_field(0.1, "Linear warm-up over this fraction of train_iters.")
    lr_decay_style: Literal["cosine", "linear", "constant"] = help_field("cosine", "Decay after warm-up.")


@dataclass
class DataConfig:
    data_path: List[str] = help_field(default_factory=list, help="Megatron blend: 'PREFIX' or 'W1 PREFIX1 W2 "
                                      "PREFIX2 ...' (weights normalised), prefixes without .bin/.idx.")
    mock: bool = help_field(False, "Train on Megatron-Core's MockGPTDataset (no files needed).")
    split: str = help_field("98,2,0", "train,valid,test split of each dataset, as weights.")
    tokenizer: Optional[str] = help_field(None, "HF tokenizer directory: vocabulary size and EOD id come from it "
                                          "(required for real data).")
    itemic: Optional[str] = help_field(None, "itemic.json (or a directory holding it) written by vocabulary "
                                       "expansion; defaults to the one inside data.tokenizer.")
    loss_mask: bool = help_field(False, "Read per-token loss masks from the sibling <prefix>_loss_mask_document "
                                 "datasets (chat data: assistant tokens only).")
    packed: bool = help_field(False, "The prefixes are `megarec preprocess --pack` output: each training "
                              "sequence is one pack, padded to train.seq_length, with position ids restarting "
                              "at 0, block-diagonal causal attention and loss only inside each packed "
                              "document (with data.loss_mask: assistant tokens only). Needs "
                              "train.seq_length >= the --seq-length the packs were built for.")
    reset_position_ids: bool = help_field(False, "Restart position ids after every EOD (unpacked GPTDataset "
                                          "streams; data.packed always resets per document).")
    reset_attention_mask: bool = help_field(False, "Block attention across EOD boundaries (unpacked GPTDataset "
                                            "streams; data.packed always resets per document).")
    eod_mask_loss: bool = help_field(False, "Exclude EOD tokens from the loss.")
    cache_dir: Optional[str] = help_field(None, "Where Megatron's dataset index caches go "
                                          "(default: <run_dir>/data_cache).")
    num_workers: int = help_field(1, "DataLoader worker processes per rank.")


@dataclass
class FreezeConfig:
    stage: Literal["full", "itemic"] = help_field("full", "full = every parameter trains (stage 2); itemic = only "
                                                  "the itemic rows of the embedding train (stage 1).")
    train_output_rows: Optional[bool] = help_field(None, "Stage 1: also train the itemic rows of an untied output "
                                                   "layer (default: yes for untied models).")
    first_id: Optional[int] = help_field(None, "First itemic token id (default: from itemic.json).")
    last_id: Optional[int] = help_field(None, "Last itemic token id, inclusive (default: from itemic.json).")


@dataclass
class CheckpointConfig:
    save: Optional[str] = help_field(None, "Checkpoint root directory (iter_XXXXXXX/ + latest pointer).")
    save_interval: int = help_field(0, "Save every N steps (0 = only at the end and on exit signals).")
    load: Optional[str] = help_field(None, "Resume from this root (default: checkpoint.save if it has one).")
    init_from: Optional[str] = help_field(None, "Start from these model weights only (e.g. `megarec convert "
                                          "hf-to-mcore` output); ignored when resuming.")
    no_load_optim: bool = help_field(False, "Resume weights/iteration but start a fresh optimizer.")
    no_load_rng: bool = help_field(False, "Do not restore RNG states on resume.")
    keep_last: int = help_field(0, "Keep only the newest N checkpoints (0 = keep all).")


@dataclass
class RunLoggingConfig:
    """Run directory, Weights & Biases and progress bar: the logging keys pre- and post-training share."""
    run_dir: str = help_field("runs/pretrain", "Run directory: metrics.jsonl, config.yaml, data caches.")
    wandb_mode: Literal["offline", "online", "disabled"] = help_field("offline", "Weights & Biases mode.")
    wandb_project: str = help_field("megarec", "Weights & Biases project.")
    wandb_name: Optional[str] = help_field(None, "Weights & Biases run name (default: run_dir name).")
    progress: bool = help_field(True, "Show a progress bar on rank 0.")


@dataclass
class LoggingConfig(RunLoggingConfig):
    log_interval: int = help_field(1, "Log every N steps.")
    gpu_peak_tflops: float = help_field(989.0, "Per-GPU dense bf16 peak TFLOP/s, the MFU denominator without "
                                        "FP8 (H100 SXM = 989).")
    gpu_peak_tflops_fp8: float = help_field(1979.0, "Per-GPU dense FP8 peak TFLOP/s, the MFU denominator when "
                                            "model.fp8 is set (H100 SXM = 1979).")


@dataclass
class PretrainConfig:
    model: ModelConfig = help_field(default_factory=ModelConfig)
    parallel: ParallelConfig = help_field(default_factory=ParallelConfig)
    train: TrainConfig = help_field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = help_field(default_factory=OptimizerConfig)
    data: DataConfig = help_field(default_factory=DataConfig)
    freeze: FreezeConfig = help_field(default_factory=FreezeConfig)
    checkpoint: CheckpointConfig = help_field(default_factory=CheckpointConfig)
    logging: LoggingConfig = help_field(default_factory=LoggingConfig)
