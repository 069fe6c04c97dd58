"""The demo's stages as the exact `megarec` commands a user would type, with the paths they read and write.

Every stage is one command line (shown in the report, so any stage can be repeated by hand on other data);
`DemoPaths` fixes where each stage writes under the demo's output directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Optional

from megarec.demo.config import DemoConfig


@dataclass(frozen=True)
class DemoPaths:
    out: str

    def __getattr__(self, name: str) -> str:
        rel = _LAYOUT.get(name)
        if rel is None:
            raise AttributeError(name)
        return os.path.join(self.out, rel)


_LAYOUT = {
    "tokenizer": "assets/tokenizer",
    "base_model": "assets/base_model",
    "embeddings": "itemic/items.npy",
    "embeddings_fused": "itemic/items_fused.npy",
    "itemic": "itemic/tokenizer",
    "codes": "itemic/codes.csv",
    "expanded": "model/expanded",
    "data": "data",
    "datasets": "datasets",
    "pretrain_prefix": "datasets/pretrain",
    "mcore_init": "mcore/init",
    "stage1": "stage1",
    "stage1_ckpt": "stage1/checkpoints",
    "stage2": "stage2",
    "stage2_ckpt": "stage2/checkpoints",
    "stage2_hf": "stage2/hf",
    "sft": "sft",
    "sft_hf": "sft/hf",
    "grpo": "grpo",
    "grpo_hf": "grpo/hf",
    "bench": "bench",
    "samples": "samples.json",
    "logs": "logs",
    "markers": ".stages",
}


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    command: Callable[[DemoConfig, DemoPaths], List[str]]  # argv after `megarec`
    outputs: Callable[[DemoPaths], List[str]]  # removed before a changed command reruns
    distributed: bool = False  # run under torchrun with cfg.stages.nproc
    resumes: bool = False  # the verb resumes in its own partial outputs
    # the seed whose training chain the stage belongs to; None = shared (its outputs feed every later stage)
    chain: Optional[int] = None


def _pretrain_args(
    cfg: DemoConfig, p: DemoPaths, recipe: str, run_dir: str, ckpt: str, init_from: str, extra: List[str], tp: int = 0
) -> List[str]:
    return [
        "pretrain",
        "--config",
        recipe,
        f"model.hf_config={p.expanded}",
        f"data.tokenizer={p.expanded}",
        f"data.data_path=[{p.pretrain_prefix}_text_document]",
        f"parallel.tensor_model_parallel_size={tp or cfg.stages.tensor_parallel}",
        f"checkpoint.init_from={init_from}",
        f"checkpoint.dir={ckpt}",
        f"logging.run_dir={run_dir}",
        f"data.cache_dir={os.path.join(run_dir, 'index_cache')}",
        "logging.progress=false",
        *extra,
    ]


def _tokenizer(cfg, p):
    cmd = ["tokenizer", "build-qwen3", "--out", p.tokenizer]
    return cmd + (["--bpe-ranks", str(cfg.data.bpe_ranks)] if cfg.data.bpe_ranks else [])


def _base_model(cfg, p):
    m = cfg.model
    return [
        "init-model",
        "--tokenizer",
        p.tokenizer,
        "--out",
        p.base_model,
        "--preset",
        "qwen3-small",
        "--num-layers",
        str(m.num_layers),
        "--hidden-size",
        str(m.hidden_size),
        "--ffn-hidden-size",
        str(m.ffn_hidden_size),
        "--num-attention-heads",
        str(m.num_attention_heads),
        "--num-query-groups",
        str(m.num_query_groups),
        "--head-dim",
        str(m.head_dim),
        "--seed",
        str(cfg.data.seed),
        "--force",
    ]


def _sft(cfg, p):
    return [
        "sft",
        "--config",
        cfg.stages.sft_recipe,
        f"model.path={p.stage2_hf}",
        f"data.sources=[{{name: rec, path: {p.data}/sft/train.jsonl, weight: 1.0}}]",
        f"data.valid=[{{name: rec_valid, path: {p.data}/sft/valid.jsonl}}]",
        f"logging.run_dir={p.sft}",
        *cfg.stages.sft_overrides,
    ]


def _grpo(cfg, p):
    return [
        "grpo",
        "--config",
        cfg.stages.grpo_recipe,
        f"model.path={p.sft_hf}",
        f"data.sources=[{{name: rec_rl, path: {p.data}/rl/train.jsonl, weight: 1.0}}]",
        f"data.valid=[{{name: rec_valid, path: {p.data}/rl/valid.jsonl}}]",
        f"data.codes={p.codes}",
        f"logging.run_dir={p.grpo}",
        *cfg.stages.grpo_overrides,
    ]


STAGES: List[Stage] = [
    Stage("tokenizer", "Qwen3-layout tokenizer (offline BPE ranks)", _tokenizer, lambda p: [p.tokenizer]),
    Stage("base_model", "random small Qwen3 base model", _base_model, lambda p: [p.base_model]),
    Stage(
        "embed",
        "item text -> MiniLM embeddings",
        lambda c, p: ["itemic", "embed", "--source", c.data.source, "--out", p.embeddings],
        lambda p: [p.embeddings],
    ),
    Stage(
        "collab",
        "text + collaborative item embeddings (training split only)",
        lambda c, p: [
            "itemic",
            "collab",
            "--source",
            c.data.source,
            "--embeddings",
            p.embeddings,
            "--out",
            p.embeddings_fused,
            "--weight",
            str(c.data.collab_weight),
        ],
        lambda p: [p.embeddings_fused, p.embeddings_fused[: -len(".npy")] + ".ids.txt"],
    ),
    Stage(
        "itemic",
        "RQ-KMeans itemic tokenizer",
        lambda c, p: [
            "itemic",
            "train",
            "--embeddings",
            p.embeddings_fused if c.data.collab_weight else p.embeddings,
            "--out",
            p.itemic,
            "--layers",
            str(c.data.itemic_layers),
            "--codebook-size",
            str(c.data.codebook_size),
            "--normalize",
            "l2",
            "--seed",
            str(c.data.seed),
            "--codes-out",
            p.codes,
        ],
        lambda p: [p.itemic, p.codes],
    ),
    Stage(
        "expand_vocab",
        "vocabulary expansion with itemic tokens",
        lambda c, p: [
            "expand-vocab",
            "--hf-dir",
            p.base_model,
            "--itemic-tokenizer",
            p.itemic,
            "--out",
            p.expanded,
            "--seed",
            str(c.data.seed),
        ],
        lambda p: [p.expanded],
    ),
    Stage(
        "data_build",
        "task samples (pre-training, SFT, RL) with leave-one-out split",
        lambda c, p: [
            "data",
            "build",
            "--source",
            c.data.source,
            "--codes",
            p.codes,
            "--out",
            p.data,
            "--samples-per-user",
            str(c.data.samples_per_user),
            "--max-history",
            str(c.data.max_history),
            "--seed",
            str(c.data.seed),
            *(["--sequence-windows", c.data.sequence_windows] if c.data.sequence_windows != "last" else []),
        ],
        lambda p: [p.data],
    ),
    Stage(
        "preprocess",
        "Megatron indexed dataset (C++ helpers)",
        lambda c, p: [
            "preprocess",
            "--input",
            f"{p.data}/pretrain/train.jsonl",
            "--tokenizer",
            p.expanded,
            "--output-prefix",
            p.pretrain_prefix,
            "--kind",
            "segments",
            "--workers",
            "2",
            "--no-progress",
        ],
        lambda p: [p.datasets],
        resumes=True,
    ),
    Stage(
        "convert_in",
        "HF -> Megatron-Core checkpoint",
        lambda c, p: [
            "convert",
            "hf-to-mcore",
            "--hf-dir",
            p.expanded,
            "--out",
            p.mcore_init,
            "--tp",
            str(c.stages.tensor_parallel),
            "--force",
        ],
        lambda p: [p.mcore_init],
    ),
    Stage(
        "stage1",
        "stage 1: itemic-text alignment (Megatron-Core, TP)",
        lambda c, p: _pretrain_args(
            c, p, c.stages.stage1_recipe, p.stage1, p.stage1_ckpt, p.mcore_init, c.stages.stage1_overrides
        ),
        lambda p: [p.stage1],
        distributed=True,
        resumes=True,
    ),
    Stage(
        "stage2",
        "stage 2: co-pretraining (Megatron-Core, DP or TP)",
        lambda c, p: _pretrain_args(
            c,
            p,
            c.stages.stage2_recipe,
            p.stage2,
            p.stage2_ckpt,
            p.stage1_ckpt,
            c.stages.stage2_overrides,
            c.stages.stage2_tensor_parallel,
        ),
        lambda p: [p.stage2],
        distributed=True,
        resumes=True,
    ),
    Stage(
        "convert_out",
        "Megatron-Core -> HF checkpoint",
        lambda c, p: [
            "convert",
            "mcore-to-hf",
            "--mcore-dir",
            p.stage2_ckpt,
            "--out",
            p.stage2_hf,
            "--hf-template",
            p.expanded,
            "--force",
        ],
        lambda p: [p.stage2_hf],
    ),
    Stage("sft", "SFT on the RecIF tasks (assistant tokens only)", _sft, lambda p: [p.sft], resumes=True),
    Stage("grpo", "GRPO Rec-RL (trie-constrained policy samples)", _grpo, lambda p: [p.grpo], resumes=True),
]
