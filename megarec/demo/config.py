"""Typed settings of `megarec demo` (recipes in configs/demo/{full,ci}.yaml, dotted overrides on the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from megarec.common.config import help_field


@dataclass
class DemoDataConfig:
    source: str = help_field("ml-100k", "Recommendation log (`megarec data build --source`).")
    bpe_ranks: int = help_field(
        8192,
        "BPE ranks of the Qwen3-layout tokenizer (`tokenizer build-qwen3 --bpe-ranks`); "
        "0 = all 151,643 (real Qwen3 ids, ~20x the output-layer compute).",
    )
    itemic_layers: int = help_field(3, "RQ-KMeans layers (code tokens per item).")
    codebook_size: int = help_field(32, "Codes per RQ-KMeans layer (sized for ~1.7k items).")
    samples_per_user: int = help_field(8, "SFT/RL cut points per user and task (`data build --samples-per-user`).")
    max_history: int = help_field(20, "Longest history shown in a prompt.")
    sequence_windows: str = help_field(
        "last",
        "Stage-2 behaviour sequences of users with more than 100 training items: the most recent 100 "
        "(last) or every window of 100 from the end (all; `data build --sequence-windows`).",
    )
    collab_weight: float = help_field(
        0.5,
        "Share of collaborative (training-split co-occurrence) embedding in the "
        "item embeddings the itemic tokenizer clusters (`itemic collab --weight`); "
        "0 = text only (the collab stage is skipped).",
    )
    seed: int = help_field(0, "Seed of the data build, tokenizer training and model initialisation.")


@dataclass
class DemoModelConfig:
    num_layers: int = help_field(4, "Decoder layers of the small Qwen3.")
    hidden_size: int = help_field(128, "Hidden size.")
    ffn_hidden_size: int = help_field(384, "SwiGLU intermediate size.")
    num_attention_heads: int = help_field(4, "Query heads.")
    num_query_groups: int = help_field(2, "KV heads.")
    head_dim: int = help_field(32, "Head dimension.")


@dataclass
class DemoStagesConfig:
    nproc: int = help_field(2, "Processes of the Megatron-Core stages (torchrun, gloo on CPU).")
    tensor_parallel: int = help_field(2, "Tensor-parallel size of stage 1 (and of stage 2 unless set below).")
    stage2_tensor_parallel: int = help_field(
        0,
        "Tensor-parallel size of stage 2 (0 = tensor_parallel; 1 with nproc 2 "
        "= data parallel, about 2x the tokens/s of TP=2 at the demo's size).",
    )
    stage1_recipe: str = help_field(
        "configs/demo/stage1.yaml", "Stage-1 recipe (a relative path resolves beside the demo recipe)."
    )
    stage2_recipe: str = help_field("configs/demo/stage2.yaml", "Stage-2 recipe.")
    sft_recipe: str = help_field("configs/demo/sft.yaml", "SFT recipe.")
    grpo_recipe: str = help_field("configs/demo/grpo.yaml", "GRPO recipe.")
    stage1_overrides: List[str] = help_field(default_factory=list, help="Extra dotted overrides for stage 1.")
    stage2_overrides: List[str] = help_field(default_factory=list, help="Extra dotted overrides for stage 2.")
    sft_overrides: List[str] = help_field(default_factory=list, help="Extra dotted overrides for SFT.")
    grpo_overrides: List[str] = help_field(default_factory=list, help="Extra dotted overrides for GRPO.")


@dataclass
class AblationRow:
    name: str = help_field("row", "Row name (also its output directory ablation/<name>).")
    what: str = help_field("", "What the row changes, as shown in the report.")
    checkpoint: str = help_field(
        "grpo", "Checkpoint of seed 0 to evaluate: grpo (final), sft (before GRPO) or stage2 (before SFT)."
    )
    num_beams: int = help_field(0, "Beam width (0 = bench.num_beams).")
    max_history: int = help_field(0, "Items of history in the prompt (0 = data.max_history).")
    prompt: str = help_field(
        "chat", "chat (the SFT next-item conversation) or sequence (the stage-2 behaviour-sequence text)."
    )


@dataclass
class DemoBenchConfig:
    baselines: List[str] = help_field(
        default_factory=lambda: ["pop", "sasrec", "gru4rec"], help="Baselines of `bench seqrec`."
    )
    seeds: List[int] = help_field(
        default_factory=lambda: [0, 1, 2],
        help="Seeds of the comparison: the generative model's initialisation and training "
        "stages run once per seed, and the neural baselines train once per seed "
        "(mean ± std in the report).",
    )
    equal_budget: bool = help_field(
        True,
        "Give every baseline run the generative model's measured training time "
        "(stage 1 + stage 2 + SFT + GRPO, averaged over the seeds) as its budget "
        "(early stopping still applies); false: sasrec_time_budget.",
    )
    ablations: List[AblationRow] = help_field(
        default_factory=list, help="Extra evaluations of seed 0's checkpoints (the ablation table)."
    )
    num_beams: int = help_field(20, "Beam width of the generative model (> 10: history items are dropped).")
    max_eval_users: int = help_field(0, "Evaluate the generative model on a seeded subset of users (0 = all).")
    sasrec_time_budget: float = help_field(
        0.0, "Seconds of baseline training when equal_budget is false (0 = early stopping only)."
    )
    sasrec_epochs: int = help_field(200, "Maximum SASRec epochs.")
    sample_users: int = help_field(32, "Test users whose free (unconstrained) generations are checked and shown.")


@dataclass
class DemoConfig:
    data: DemoDataConfig = help_field(default_factory=DemoDataConfig)
    model: DemoModelConfig = help_field(default_factory=DemoModelConfig)
    stages: DemoStagesConfig = help_field(default_factory=DemoStagesConfig)
    bench: DemoBenchConfig = help_field(default_factory=DemoBenchConfig)
