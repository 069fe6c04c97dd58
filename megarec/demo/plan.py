"""The demo's full stage list for a config: the shared stages of `stages.STAGES`, the generative pipeline's
per-seed stages repeated for every extra seed of `bench.seeds`, the benchmark (all seeds of the generative
model and of the baselines, the baselines under the generative model's measured training time when
`bench.equal_budget`), and one evaluation stage per ablation row (`bench.ablations`).

Seed k > 0 writes its own base model, expanded model, Megatron checkpoints and post-training runs under
`seeds/seed<k>/` (the item codes, task samples and indexed dataset are shared); its stages carry the suffix
`_seed<k>` and take the seed as `--seed` / `train.seed`. Seed 0 uses the usual paths.
"""

from __future__ import annotations

import copy
import os
from typing import List

from megarec.common.errors import ConfigError
from megarec.demo.config import DemoConfig
from megarec.demo.stages import STAGES, DemoPaths, Stage
from megarec.eval.seqrec_generative import PROMPT_KINDS

# the stages that depend on the seed (model initialisation and every training stage)
SEEDED = ("base_model", "expand_vocab", "convert_in", "stage1", "stage2", "convert_out", "sft", "grpo")
# the generative model's training stages: their measured seconds are the baselines' equal CPU budget
TRAINING = ("stage1", "stage2", "sft", "grpo")
# checkpoints an ablation row may evaluate
CHECKPOINTS = {"grpo": "grpo_hf", "sft": "sft_hf", "stage2": "stage2_hf"}

_SEED_DIRS = {
    "base_model": "assets/base_model",
    "expanded": "model/expanded",
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
}


class SeedPaths(DemoPaths):
    """DemoPaths of seed k: the seed's own model and run directories, the shared data of the demo."""

    def __init__(self, out: str, seed_index: int):
        object.__setattr__(self, "out", out)
        object.__setattr__(self, "seed_index", seed_index)

    def __getattr__(self, name: str) -> str:
        rel = _SEED_DIRS.get(name)
        if rel is not None and self.seed_index:
            return os.path.join(self.out, "seeds", f"seed{self.seed_index}", rel)
        return DemoPaths.__getattr__(self, name)


def seed_config(cfg: DemoConfig, k: int) -> DemoConfig:
    """The config of seed index k: data.seed (initialisation) and the training stages' train.seed."""
    c = copy.deepcopy(cfg)
    c.data.seed = cfg.bench.seeds[k]
    seed = c.data.seed
    for name in ("stage1_overrides", "stage2_overrides", "sft_overrides", "grpo_overrides"):
        setattr(c.stages, name, [f"train.seed={1234 + seed}", *getattr(c.stages, name)])
    return c


def _seeded(stage: Stage, k: int, seed_cfg: DemoConfig) -> Stage:
    return Stage(
        f"{stage.name}_seed{k}" if k else stage.name,
        stage.title + (f" (seed {seed_cfg.data.seed})" if k else ""),
        lambda c, p, _s=stage, _c=seed_cfg, _k=k: _s.command(_c, SeedPaths(p.out, _k)),
        lambda p, _s=stage, _k=k: _s.outputs(SeedPaths(p.out, _k)),
        stage.distributed,
        stage.resumes,
        chain=k,
    )


def _marker(p: DemoPaths, name: str) -> str:
    return os.path.join(p.markers, f"{name}.json")


def _seqrec_args(
    cfg: DemoConfig, p: DemoPaths, baselines: str, hf_dirs: List[str], num_beams: int, max_history: int, out: str
) -> List[str]:
    """`megarec bench seqrec` on the demo's dataset and codes: what the benchmark and every ablation row share."""
    cmd = ["bench", "seqrec", "--dataset", cfg.data.source, "--baselines", baselines]
    for hf_dir in hf_dirs:
        cmd += ["--hf-dir", hf_dir]
    cmd += ["--codes", p.codes, "--num-beams", str(num_beams), "--max-history", str(max_history)]
    cmd += ["--seed", str(cfg.data.seed), "--out", out]
    if cfg.bench.max_eval_users:
        cmd += ["--max-eval-users", str(cfg.bench.max_eval_users)]
    return cmd


def _bench(cfg: DemoConfig, p: DemoPaths) -> List[str]:
    b = cfg.bench
    seeds = range(len(b.seeds))
    hf_dirs = [SeedPaths(p.out, k).grpo_hf for k in seeds]
    cmd = _seqrec_args(cfg, p, ",".join(b.baselines), hf_dirs, b.num_beams, cfg.data.max_history, p.bench)
    cmd += ["--epochs", str(b.sasrec_epochs), "--seeds", ",".join(str(s) for s in b.seeds)]
    if b.equal_budget:
        names = [f"{n}_seed{k}" if k else n for k in seeds for n in TRAINING]
        cmd += ["--time-budget-from", ",".join(_marker(p, n) for n in names)]
    elif b.sasrec_time_budget:
        cmd += ["--time-budget", str(b.sasrec_time_budget)]
    return cmd


def _ablation_stage(row) -> Stage:
    def command(cfg: DemoConfig, p: DemoPaths) -> List[str]:
        ckpt = getattr(p, CHECKPOINTS[row.checkpoint])
        out = os.path.join(p.out, "ablation", row.name)
        beams, history = row.num_beams or cfg.bench.num_beams, row.max_history or cfg.data.max_history
        return _seqrec_args(cfg, p, "", [ckpt], beams, history, out) + ["--prompt", row.prompt]

    return Stage(
        f"ablation_{row.name}", f"ablation: {row.what}", command, lambda p: [os.path.join(p.out, "ablation", row.name)]
    )


def demo_stages(cfg: DemoConfig) -> List[Stage]:
    """Every stage of this config, in run order."""
    if cfg.data.sequence_windows not in ("last", "all"):
        raise ConfigError(f"data.sequence_windows must be last or all, got {cfg.data.sequence_windows!r}")
    for row in cfg.bench.ablations:
        if row.checkpoint not in CHECKPOINTS:
            raise ConfigError(f"bench.ablations: checkpoint {row.checkpoint!r} is not one of {', '.join(CHECKPOINTS)}")
        if row.prompt not in PROMPT_KINDS:
            raise ConfigError(f"bench.ablations: prompt {row.prompt!r} is not one of {', '.join(PROMPT_KINDS)}")
    base = [s for s in STAGES if s.name != "collab" or cfg.data.collab_weight > 0]
    out = [_seeded(s, 0, seed_config(cfg, 0)) if s.name in SEEDED else s for s in base]
    for k in range(1, len(cfg.bench.seeds)):
        sc = seed_config(cfg, k)
        out += [_seeded(s, k, sc) for s in base if s.name in SEEDED]
    out.append(Stage("bench", "full-ranking benchmark vs the baselines (every seed)", _bench, lambda p: [p.bench]))
    out += [_ablation_stage(row) for row in cfg.bench.ablations]
    return out
