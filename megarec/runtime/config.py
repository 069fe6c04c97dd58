"""The config sections every training verb shares (`megarec pretrain | sft | distill | grpo`), so that one
concept has one key with one meaning and one default everywhere:

- `train.steps`, `train.seed`, `train.eval_interval` (every N steps and at the last; 0 = never),
  `train.exit_interval`, `train.exit_signals`;
- `checkpoint.dir` (default `<logging.run_dir>/checkpoints`), `checkpoint.resume`, `checkpoint.save_interval`,
  `checkpoint.keep_last` (0 = keep all);
- `optimizer.*` (AdamW and the learning-rate schedule);
- `logging.*` (run directory, log interval, Weights & Biases, progress bar);
- `parallel.*` of the Megatron-Core engine (pre-training, conversion).
Each verb extends these with its own keys (batch shapes, model, data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Literal, Optional

from megarec.common.config import help_field
from megarec.common.errors import ConfigError
from megarec.common.outdir import check_writable


@dataclass
class StepsConfig:
    steps: int = help_field(
        100,
        "Training steps to run: optimizer steps (pretrain, sft) or rollout iterations "
        "(distill, grpo). The total: a resumed run continues to it.",
    )
    seed: int = help_field(1234, "Seed of weight init, data order and sampling.")
    eval_interval: int = help_field(0, "Validate every N steps and after the last step (0 = never).")
    exit_interval: int = help_field(
        0, "Save a checkpoint and exit after this many steps of this run (0 = run to train.steps); for time-boxed jobs."
    )
    exit_signals: List[str] = help_field(
        default_factory=lambda: ["SIGTERM", "SIGUSR1"], help="Signals that trigger save-and-exit (SLURM pre-emption)."
    )


@dataclass
class OptimizerConfig:
    lr: float = help_field(1e-4, "Peak learning rate (reached at the end of warm-up).")
    min_lr: float = help_field(2e-5, "Final learning rate of the decay.")
    weight_decay: float = help_field(0.1, "AdamW decoupled weight decay (never on norms, biases, embeddings).")
    adam_beta1: float = help_field(0.9, "AdamW beta1.")
    adam_beta2: float = help_field(0.95, "AdamW beta2.")
    adam_eps: float = help_field(1e-8, "AdamW epsilon.")
    clip_grad: float = help_field(
        1.0, "Clip the global gradient norm to this value (0 = off). The logged grad_norm is the norm before clipping."
    )
    warmup_fraction: float = help_field(0.1, "Linear warm-up over this fraction of the optimizer steps.")
    lr_decay_style: Literal["cosine", "linear", "constant"] = help_field("cosine", "Decay after warm-up.")


@dataclass
class CheckpointConfig:
    dir: Optional[str] = help_field(
        None,
        "Checkpoint root: iter_XXXXXXX/ per saved step and a "
        "latest_checkpointed_iteration.txt pointer (default <logging.run_dir>/"
        "checkpoints).",
    )
    resume: bool = help_field(True, "Continue from the newest checkpoint in checkpoint.dir when there is one.")
    save_interval: int = help_field(0, "Save every N steps (0 = at the end and on exit signals only).")
    keep_last: int = help_field(0, "Keep only the newest N checkpoints (0 = keep all).")


@dataclass
class LoggingConfig:
    run_dir: str = help_field(
        "runs/train", "Run directory: config.yaml, metrics.jsonl, checkpoints (by default) and caches."
    )
    log_interval: int = help_field(1, "Log metrics every N steps (and at the last step).")
    wandb_mode: Literal["offline", "online", "disabled"] = help_field("offline", "Weights & Biases mode.")
    wandb_project: str = help_field("megarec", "Weights & Biases project.")
    wandb_name: Optional[str] = help_field(None, "Weights & Biases run name (default: run_dir name).")
    progress: bool = help_field(True, "Show a progress bar on rank 0.")


def checkpoint_dir(checkpoint: CheckpointConfig, logging: LoggingConfig) -> str:
    return checkpoint.dir or os.path.join(logging.run_dir, "checkpoints")


def check_shared(train: StepsConfig, checkpoint: CheckpointConfig, logging: LoggingConfig) -> None:
    """The checks of the shared keys every training verb runs before anything starts: counts in range, and
    the run and checkpoint directories creatable (no file in the way, a writable file system), so that a
    run never trains for hours to fail at its first save."""
    for key, value, low in (
        ("train.steps", train.steps, 0),
        ("train.eval_interval", train.eval_interval, 0),
        ("train.exit_interval", train.exit_interval, 0),
        ("checkpoint.save_interval", checkpoint.save_interval, 0),
        ("checkpoint.keep_last", checkpoint.keep_last, 0),
        ("logging.log_interval", logging.log_interval, 1),
    ):
        if value < low:
            raise ConfigError(f"{key} must be >= {low}, got {value}")
    check_writable(logging.run_dir, "logging.run_dir")
    if checkpoint.dir:
        check_writable(checkpoint.dir, "checkpoint.dir")


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = help_field(1, "Tensor parallel size (TP).")
    pipeline_model_parallel_size: int = help_field(1, "Pipeline parallel size (PP).")
    virtual_pipeline_model_parallel_size: Optional[int] = help_field(
        None, "Model chunks per pipeline rank for the interleaved schedule (needs PP > 1)."
    )
    sequence_parallel: bool = help_field(False, "Sequence parallelism (with TP > 1; needs Transformer Engine).")
    context_parallel_size: int = help_field(
        1, "Context parallel size (TE ring attention on GPUs; all-gather attention of the local spec without TE)."
    )
    use_distributed_optimizer: bool = help_field(False, "Shard optimizer state across data-parallel ranks.")
    overlap_grad_reduce: bool = help_field(False, "Overlap DP gradient reduce-scatter/all-reduce with backward.")
    overlap_param_gather: bool = help_field(False, "Overlap distributed-optimizer param all-gather with forward.")
    distributed_timeout_minutes: int = help_field(
        10,
        "Timeout of the default process group (minutes): how long ranks wait in a collective, e.g. while "
        "rank 0 builds the dataset index on a first run. The SLURM launchers raise it (PG_TIMEOUT_MINUTES).",
    )

    @property
    def model_parallel_size(self) -> int:
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.context_parallel_size
