"""Typed recipes of the three post-training verbs (`megarec sft | distill | grpo`).

Sections shared by every verb (model, train, optimizer, checkpoint, logging, parallel) come first, built on
the training vocabulary every verb shares (`megarec.runtime.config`); each verb adds its own data / rollout /
algorithm sections. Values come from `configs/posttrain/*.yaml`, then from dotted `key=value` overrides (see
`megarec.common.config`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar, List, Literal, Optional

from megarec.common.config import help_field
from megarec.common.errors import ConfigError
from megarec.common.outdir import check_out_dir, has_entry
from megarec.runtime.config import (
    CheckpointConfig,
    LoggingConfig,
    OptimizerConfig,
    StepsConfig,
    check_shared,
    checkpoint_dir,
)


# ----------------------------------------------------------------------------------------------- shared
@dataclass
class ModelSection:
    path: Optional[str] = help_field(
        None,
        "HF checkpoint directory of the policy (config.json, safetensors, tokenizer files, itemic.json). Required.",
    )
    tokenizer: Optional[str] = help_field(None, "Tokenizer directory (default: model.path).")
    dtype: Literal["auto", "fp32", "bf16"] = help_field(
        "auto", "Compute dtype: auto = bf16 on GPU (fp32 master weights), fp32 on CPU."
    )
    attn_implementation: Literal["sdpa", "eager"] = help_field("sdpa", "Attention kernel of the HF model.")
    gradient_checkpointing: bool = help_field(False, "Recompute activations in the backward pass.")


@dataclass
class TrainSection(StepsConfig):
    global_batch_size: int = help_field(32, "Per step, over all ranks: sequences (sft) or prompts (distill/grpo).")
    micro_batch_size: int = help_field(4, "Sequences per forward/backward pass on one rank.")
    eval_at_start: bool = help_field(False, "Also validate before the first step of a fresh run (a baseline).")


@dataclass
class OptimizerSection(OptimizerConfig):
    """Pre-training's AdamW keys with fine-tuning defaults."""

    lr: float = help_field(2e-5, "Peak learning rate.")
    min_lr: float = help_field(5e-6, "Final learning rate of the decay.")
    warmup_fraction: float = help_field(0.03, "Linear warm-up over this fraction of the optimizer steps.")


@dataclass
class CheckpointSection(CheckpointConfig):
    output: Optional[str] = help_field(
        None, "Final HF checkpoint that the next stage and evaluation load; default <logging.run_dir>/hf."
    )
    export_dtype: Literal["source", "fp32", "bf16"] = help_field(
        "source", "dtype of the final HF weights (source = as in model.path). Step checkpoints are always fp32."
    )
    export: Literal["last", "best"] = help_field(
        "last",
        "Which policy the final HF checkpoint holds: the last step's, or the one with the best "
        "checkpoint.best_metric over all validations (including step 0 with train.eval_at_start), kept "
        "under <logging.run_dir>/best/.",
    )
    best_metric: str = help_field("", "Validation metric that export=best ranks by (e.g. val_reward, val_loss).")
    best_mode: Literal["auto", "min", "max"] = help_field(
        "auto", "Whether lower or higher best_metric is better (auto: min for names containing 'loss', else max)."
    )


@dataclass
class LoggingSection(LoggingConfig):
    run_dir: str = help_field(
        "runs/posttrain",
        "Run directory: config.yaml, metrics.jsonl, checkpoints (by default) and the final HF checkpoint (by default).",
    )


# Keys of earlier releases, still read (with a one-line warning) in this one.
RENAMED = {"train.log_interval": "logging.log_interval"}


@dataclass
class ParallelSection:
    reshard_after_forward: bool = help_field(
        True, "FSDP2: free gathered parameters after each forward (less memory, one more all-gather in backward)."
    )
    shard_frozen: bool = help_field(
        True, "Also shard reference/teacher models over the ranks (else each rank holds a full copy)."
    )


@dataclass
class SourceSpec:
    path: Optional[str] = help_field(None, "JSONL(.gz) or parquet file.")
    weight: float = help_field(1.0, "Mixture weight (weights are normalised over the sources).")
    name: Optional[str] = help_field(None, "Label in metrics (default: file name).")


# ---------------------------------------------------------------------------------------------------- SFT
@dataclass
class SFTSourceSpec(SourceSpec):
    loss_weight: float = help_field(
        1.0,
        "Weight of each trained token of this source in the loss (the loss is the weighted mean over "
        "the global batch); below 1 keeps long plain documents from outweighing short answers.",
    )
    tasks: List[str] = help_field(
        default_factory=list, help="Keep only rows whose metadata.task is one of these (empty = every row)."
    )


@dataclass
class SFTData:
    sources: List[SFTSourceSpec] = help_field(
        default_factory=list,
        help="Training mixture: list of {path, weight, name, loss_weight, tasks}; chat rows "
        '{"messages": [...]} train on assistant tokens (report: 64.98% general / 35.02% recommendation); '
        'plain documents {"text": ...} or {"segments": [...]} (e.g. the pre-training samples of '
        "`data build`, for rehearsal) train on every token.",
    )
    valid: List[SFTSourceSpec] = help_field(
        default_factory=list, help="Held-out chat (or plain) files for validation loss."
    )
    max_seq_length: int = help_field(4096, "Longest tokenised conversation.")
    overlong: Literal["error", "skip"] = help_field(
        "error", "A conversation longer than max_seq_length: stop with an error naming the row, or skip it (counted)."
    )
    think_flags: Literal["keep", "auto"] = help_field(
        "keep",
        "Qwen3 soft switches: keep = messages as given; auto = append ' /think' to the last user turn "
        "when the final answer has reasoning and ' /no_think' when it has none, with probability "
        "data.think_flag_prob.",
    )
    think_flag_prob: float = help_field(0.5, "Probability of adding the soft switch when think_flags=auto.")
    valid_samples: int = help_field(256, "At most this many held-out conversations per validation.")


@dataclass
class SFTConfig:
    RENAMED: ClassVar[dict] = RENAMED
    model: ModelSection = help_field(default_factory=ModelSection)
    data: SFTData = help_field(default_factory=SFTData)
    train: TrainSection = help_field(default_factory=TrainSection)
    optimizer: OptimizerSection = help_field(default_factory=OptimizerSection)
    checkpoint: CheckpointSection = help_field(default_factory=CheckpointSection)
    logging: LoggingSection = help_field(default_factory=LoggingSection)
    parallel: ParallelSection = help_field(default_factory=ParallelSection)


# --------------------------------------------------------------------------------------- prompt datasets
@dataclass
class PromptData:
    sources: List[SourceSpec] = help_field(
        default_factory=list,
        help="Prompt mixture: chat rows whose last user turn is the prompt (a trailing assistant turn is dropped).",
    )
    valid: List[SourceSpec] = help_field(default_factory=list, help="Held-out prompts for validation.")
    max_prompt_length: int = help_field(1024, "Longest prompt in tokens (after the chat template).")
    overlong: Literal["error", "skip"] = help_field(
        "error", "A prompt longer than max_prompt_length: stop with an error naming the row, or skip it (counted)."
    )
    valid_samples: int = help_field(64, "At most this many held-out prompts per validation.")


@dataclass
class RolloutSection:
    samples_per_prompt: int = help_field(1, "Completions sampled per prompt (GRPO: the group size G).")
    temperature: float = help_field(1.0, "Sampling temperature.")
    max_new_tokens: int = help_field(512, "Longest sampled completion.")
    batch_size: int = help_field(64, "Sequences per generate() call on one rank.")
    valid_temperature: float = help_field(1.0, "Sampling temperature of validation rollouts.")


@dataclass
class RLOptimizerSection(OptimizerSection):
    lr: float = help_field(1e-6, "Peak learning rate.")
    min_lr: float = help_field(1e-6, "Final learning rate of the decay.")
    weight_decay: float = help_field(0.0, "AdamW decoupled weight decay (never on norms, biases, embeddings).")
    warmup_fraction: float = help_field(0.0, "Linear warm-up over this fraction of the optimizer steps.")
    lr_decay_style: Literal["cosine", "linear", "constant"] = help_field("constant", "Decay after warm-up.")


@dataclass
class DistillRollout(RolloutSection):
    temperature: float = help_field(1.2, "Sampling temperature (> 1 explores beyond the student's mode).")


@dataclass
class PPOSection:
    clip_eps: float = help_field(0.2, "PPO ratio clip: ratios outside [1-eps, 1+eps] get no gradient.")
    epochs: int = help_field(1, "Passes over each rollout batch.")
    mini_batches: int = help_field(1, "Optimizer steps per pass (the rollout batch is split evenly).")


# --------------------------------------------------------------------------------------- distillation
@dataclass
class TeacherSection:
    path: Optional[str] = help_field(
        None, "HF checkpoint of the teacher: the original base Qwen3 (its vocabulary has no itemic tokens). Required."
    )
    same_size: bool = help_field(
        True,
        "Require the teacher's architecture (layers, hidden, heads, ffn) to equal "
        "the student's (the report distils from the original model of the same size).",
    )


@dataclass
class DistillAlgorithm:
    advantage_min: float = help_field(
        -5.0, "Per-token advantage −(log p_student − log p_teacher) is clipped below at this value."
    )
    advantage_max: float = help_field(5.0, "… and above at this value.")
    itemic_teacher_logprob: float = help_field(
        -30.0,
        "Teacher log-prob given to an itemic token sampled in a "
        "general answer (the teacher cannot produce it); the "
        "trajectory ends at that token.",
    )
    think_suffix_probs: List[float] = help_field(
        default_factory=lambda: [1 / 3, 1 / 3, 1 / 3],
        help="Probabilities of appending ' /think', ' /no_think' or nothing to a prompt's last user turn.",
    )
    ppo: PPOSection = help_field(default_factory=PPOSection)


@dataclass
class DistillConfig:
    RENAMED: ClassVar[dict] = RENAMED
    model: ModelSection = help_field(default_factory=ModelSection)
    teacher: TeacherSection = help_field(default_factory=TeacherSection)
    data: PromptData = help_field(default_factory=PromptData)
    rollout: DistillRollout = help_field(default_factory=DistillRollout)
    algorithm: DistillAlgorithm = help_field(default_factory=DistillAlgorithm)
    train: TrainSection = help_field(default_factory=TrainSection)
    optimizer: RLOptimizerSection = help_field(default_factory=RLOptimizerSection)
    checkpoint: CheckpointSection = help_field(default_factory=CheckpointSection)
    logging: LoggingSection = help_field(default_factory=LoggingSection)
    parallel: ParallelSection = help_field(default_factory=ParallelSection)


# ------------------------------------------------------------------------------------------------ GRPO
@dataclass
class RecPromptData(PromptData):
    codes: Optional[str] = help_field(
        None,
        "Codes table of the real items (item_id, c1..cL; parquet or csv, as "
        "written by `megarec itemic encode`): the decoding trie and the map from "
        "target item ids to codes. Required.",
    )


@dataclass
class ReferenceSection:
    path: Optional[str] = help_field(
        None,
        "HF checkpoint of the KL reference (default: model.path, i.e. the "
        "post-distillation model the run starts from). Loaded when "
        "algorithm.kl_coef > 0, or when set explicitly (then the KL is logged even "
        "with kl_coef 0).",
    )


@dataclass
class GRPORollout(RolloutSection):
    samples_per_prompt: int = help_field(8, "Completions sampled per prompt: the group size G.")
    max_new_tokens: int = help_field(16, "Longest sampled completion (reasoning + item + end).")
    reasoning: bool = help_field(
        False,
        "Sample a free-text <think> part first, then the item (constrained); "
        "off: the prompt ends with the empty think block and only the item is sampled.",
    )
    max_think_tokens: int = help_field(256, "Reasoning longer than this is closed with </think>.")


@dataclass
class RewardSection:
    kind: Literal["hit", "prefix"] = help_field(
        "hit",
        "hit: 1 if a generated item is in the target set, else 0. prefix: hit, else prefix_weight × the "
        "longest run of leading codes shared with a target / number of layers (shaped).",
    )
    prefix_weight: float = help_field(0.5, "Scale of the partial credit of reward.kind=prefix.")


@dataclass
class GRPOAlgorithm:
    kl_coef: float = help_field(0.001, "Weight of the KL penalty to the reference (k3 estimator, per token).")
    scale_by_std: bool = help_field(True, "Divide group-centred rewards by the group's standard deviation.")
    ppo: PPOSection = help_field(default_factory=PPOSection)


@dataclass
class GRPOConfig:
    RENAMED: ClassVar[dict] = RENAMED
    model: ModelSection = help_field(default_factory=ModelSection)
    reference: ReferenceSection = help_field(default_factory=ReferenceSection)
    data: RecPromptData = help_field(default_factory=RecPromptData)
    rollout: GRPORollout = help_field(default_factory=GRPORollout)
    reward: RewardSection = help_field(default_factory=RewardSection)
    algorithm: GRPOAlgorithm = help_field(default_factory=GRPOAlgorithm)
    train: TrainSection = help_field(default_factory=TrainSection)
    optimizer: RLOptimizerSection = help_field(default_factory=RLOptimizerSection)
    checkpoint: CheckpointSection = help_field(default_factory=CheckpointSection)
    logging: LoggingSection = help_field(default_factory=LoggingSection)
    parallel: ParallelSection = help_field(default_factory=ParallelSection)


# ------------------------------------------------------------------------------------------ validation
def check_common(cfg, world_size: int, unit: str) -> None:
    """Checks every verb shares; `unit` names what global_batch_size counts (sequences or prompts)."""
    if not cfg.model.path:
        raise ConfigError("model.path is required (an HF checkpoint directory)")
    t = cfg.train
    for key, value in (
        ("train.micro_batch_size", t.micro_batch_size),
        ("train.global_batch_size", t.global_batch_size),
    ):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if t.global_batch_size % world_size:
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} {unit} cannot be split evenly over {world_size} ranks"
        )
    check_shared(t, cfg.checkpoint, cfg.logging)
    if not 0.0 <= cfg.optimizer.warmup_fraction < 1.0:
        raise ConfigError("optimizer.warmup_fraction must be in [0, 1)")
    if cfg.optimizer.min_lr > cfg.optimizer.lr:
        raise ConfigError(f"optimizer.min_lr={cfg.optimizer.min_lr} is above optimizer.lr={cfg.optimizer.lr}")
    check_export_dir(cfg)


def export_dir(cfg) -> str:
    """The final HF checkpoint's directory (checkpoint.output, default <logging.run_dir>/hf)."""
    return cfg.checkpoint.output or os.path.join(cfg.logging.run_dir, "hf")


def check_export_dir(cfg) -> None:
    """The export replaces its directory when the run finishes, so refuse before any model load: the cwd
    or an ancestor, a directory that is or holds an input or the run's own files, and a non-empty directory
    that is not an earlier export (an HF checkpoint with config.json, which a rerun replaces)."""
    run_dir = cfg.logging.run_dir
    inputs = [
        ("model.path", cfg.model.path),
        ("model.tokenizer", cfg.model.tokenizer),
        ("logging.run_dir", run_dir),
        ("checkpoint.dir", checkpoint_dir(cfg.checkpoint, cfg.logging)),
    ]
    for section in ("teacher", "reference"):
        if hasattr(cfg, section):
            inputs.append((f"{section}.path", getattr(cfg, section).path))
    data = cfg.data
    inputs += [("data.sources", s.path) for s in data.sources] + [("data.valid", s.path) for s in data.valid]
    inputs.append(("data.codes", getattr(data, "codes", None)))
    check_out_dir(
        export_dir(cfg),
        flag="checkpoint.output",
        inputs=inputs,
        own=has_entry("config.json"),
        hint="point checkpoint.output at a new or empty directory",
    )


def check_sources(sources: List[SourceSpec], key: str, required: bool) -> None:
    if required and not sources:
        raise ConfigError(f"{key} is empty: give at least one {{path, weight}} source")
    for i, s in enumerate(sources):
        if not s.path:
            raise ConfigError(f"{key}[{i}].path is required")
        if not s.weight > 0:
            raise ConfigError(f"{key}[{i}].weight must be > 0, got {s.weight}")
        if not getattr(s, "loss_weight", 1.0) > 0:
            raise ConfigError(f"{key}[{i}].loss_weight must be > 0, got {s.loss_weight}")


def check_ppo(ppo: PPOSection, key: str) -> None:
    if ppo.clip_eps <= 0 or ppo.epochs < 1 or ppo.mini_batches < 1:
        raise ConfigError(f"{key}: clip_eps must be > 0, epochs and mini_batches >= 1")


def check_rollout(r: RolloutSection) -> None:
    if r.samples_per_prompt < 1 or r.max_new_tokens < 1 or r.batch_size < 1:
        raise ConfigError("rollout.samples_per_prompt, rollout.max_new_tokens and rollout.batch_size must be >= 1")
    if r.temperature <= 0 or r.valid_temperature <= 0:
        raise ConfigError("rollout temperatures must be > 0")
