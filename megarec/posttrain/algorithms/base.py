"""The loop every post-training algorithm shares: resume, step, log, validate, checkpoint, exit on signals,
export the final HF checkpoint. Algorithms implement `setup`, `train_step`, `validate` and their data
position (`data_state` / `load_data_state`); the policy model owns forward, loss and optimizer.

A step is one optimizer step for SFT and one rollout iteration (sampling + `ppo.epochs × ppo.mini_batches`
optimizer steps) for distillation and GRPO. Per-step randomness (sampling, suffix choices) is seeded from
(train.seed, step, rank), so a resumed run draws exactly what the uninterrupted run would have.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional

import yaml

from megarec.common.config import to_dict
from megarec.common.errors import ConfigError, TrainingDivergedError
from megarec.posttrain import checkpoint as ckpt
from megarec.posttrain import distributed as dist_utils
from megarec.posttrain import hf
from megarec.posttrain.distributed import DistEnv
from megarec.runtime.metrics import MetricsLogger, StepTimer


@dataclass
class RunSummary:
    start_step: int
    final_step: int
    history: list = field(default_factory=list)        # one metrics dict per step
    validations: list = field(default_factory=list)    # one dict per validation
    exit_reason: str = "finished"                      # finished | signal | exit_interval
    output: Optional[str] = None                       # final HF checkpoint (when finished)
    checkpoint: Optional[str] = None                   # newest step checkpoint written by this run


class Trainer:
    verb = "posttrain"

    def __init__(self, cfg, env: DistEnv):
        self.cfg = cfg
        self.env = env
        self.policy = None
        self.step = 0
        run_dir = cfg.logging.run_dir
        self.ckpt_root = cfg.checkpoint.dir or os.path.join(run_dir, "checkpoints")
        self.output_dir = cfg.checkpoint.output or os.path.join(run_dir, "hf")
        self.resume_from = ckpt.latest_checkpoint(self.ckpt_root) if cfg.checkpoint.resume else None

    # ------------------------------------------------------------------------- algorithm interface
    def setup(self) -> None:
        raise NotImplementedError

    def updates_per_step(self) -> int:
        return 1

    def train_step(self, step: int) -> dict:
        raise NotImplementedError

    def has_validation(self) -> bool:
        return False

    def validate(self, step: int) -> dict:
        return {}

    def data_state(self) -> dict:
        return {}

    def load_data_state(self, state: dict) -> None:
        pass

    # ------------------------------------------------------------------------------------- helpers
    @property
    def policy_path(self) -> str:
        """Where the policy weights come from: the newest checkpoint when resuming, else model.path."""
        return os.path.join(self.resume_from, ckpt.HF_SUBDIR) if self.resume_from else self.cfg.model.path

    def step_seed(self, step: int, salt: int = 0) -> int:
        return (self.cfg.train.seed * 1_000_003 + step * 9973 + self.env.rank * 131 + salt) % (2**31 - 1)

    # ---------------------------------------------------------------------------------------- loop
    def fit(self) -> RunSummary:
        from megarec.runtime.signals import ExitSignalHandler

        cfg, env = self.cfg, self.env
        if env.is_rank0:
            os.makedirs(cfg.logging.run_dir, exist_ok=True)
            with open(os.path.join(cfg.logging.run_dir, "config.yaml"), "w") as f:
                yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
        self.setup()
        total = cfg.train.steps
        self.policy.setup_optimizer(cfg.optimizer, total * self.updates_per_step())
        if self.resume_from:
            state = ckpt.read_state(self.resume_from)
            if state.get("verb") != self.verb:
                raise ConfigError(f"{self.resume_from} is a `megarec {state.get('verb')}` checkpoint, not {self.verb}: "
                                  "use another checkpoint.dir (or logging.run_dir) for this stage")
            ckpt.restore_optimizer(self.resume_from, self.policy)
            self.policy.scheduler.load_state_dict(state["scheduler"])
            self.load_data_state(state.get("data", {}))
            self.step = int(state["step"])
            if env.is_rank0:
                print(f"megarec {self.verb}: resumed from {self.resume_from} at step {self.step}", flush=True)
        summary = RunSummary(start_step=self.step, final_step=self.step)
        logger = MetricsLogger(cfg.logging.run_dir, env.is_rank0, cfg.logging.wandb_mode, cfg.logging.wandb_project,
                               cfg.logging.wandb_name, to_dict(cfg), total, self.step, cfg.logging.progress)
        signals = ExitSignalHandler(cfg.train.exit_signals)
        timer = StepTimer()
        steps_this_run = 0
        try:
            if self.has_validation() and cfg.train.eval_at_start and self.step == 0:
                val = {"step": 0, **self.validate(0)}
                summary.validations.append(val)
                logger.log(val)
            self.policy.prepare_for_training()
            while self.step < total:
                metrics = self.train_step(self.step + 1)
                self.step += 1
                steps_this_run += 1
                dt = timer.lap()
                loss = metrics.get("loss", 0.0)
                if not math.isfinite(loss):
                    raise TrainingDivergedError(f"step {self.step}: loss is {loss}; lower optimizer.lr or "
                                                f"inspect the data (last checkpoint: {self.resume_from})")
                record = {"step": self.step, **metrics, "step_time_s": dt}
                if "tokens" in metrics:
                    record["tokens_per_s"] = metrics["tokens"] / dt if dt > 0 else float("nan")
                summary.history.append(record)
                if self.step % cfg.train.log_interval == 0 or self.step == total:
                    logger.log(record)
                logger.advance(1, loss=loss)
                last = self.step == total
                if self.has_validation() and ((cfg.train.eval_interval and self.step % cfg.train.eval_interval == 0)
                                              or (last and not cfg.train.eval_interval)):
                    val = {"step": self.step, **self.validate(self.step)}
                    summary.validations.append(val)
                    logger.log(val)
                    self.policy.prepare_for_training()
                stop_signal = signals.any_rank_received()
                stop_interval = bool(cfg.train.exit_interval) and steps_this_run >= cfg.train.exit_interval
                periodic = bool(cfg.checkpoint.save_interval) and self.step % cfg.checkpoint.save_interval == 0
                if last or stop_signal or stop_interval or periodic:
                    summary.checkpoint = self.save_checkpoint(cfg.checkpoint.keep_last)
                if stop_signal or (stop_interval and not last):
                    summary.exit_reason = "signal" if stop_signal else "exit_interval"
                    break
            if self.step >= total and summary.exit_reason == "finished":
                summary.output = self.export()
        finally:
            signals.restore()
            logger.close()
        summary.final_step = self.step
        return summary

    def save_checkpoint(self, keep_last: int) -> str:
        return ckpt.save(self.ckpt_root, self.step, self.policy, {"verb": self.verb, "data": self.data_state()},
                         keep_last)

    def export(self) -> str:
        """The final HF checkpoint (the next stage's model.path and evaluation's input)."""
        name = self.cfg.checkpoint.export_dtype
        dtype = hf.source_dtype(self.cfg.model.path) if name == "source" else hf.DTYPES[name]
        self.policy.save(self.output_dir, dtype=dtype)
        if self.env.is_rank0:
            print(f"megarec {self.verb}: wrote {self.output_dir}", flush=True)
        return self.output_dir


def even_share(items: list, env: DistEnv) -> tuple[list, list[bool]]:
    """This rank's share of `items` (round-robin) padded to the same length on every rank; the flags say
    which entries are real (fillers repeat the first item and must be masked out)."""
    per = -(-len(items) // env.world_size)
    mine = items[env.rank::env.world_size]
    real = [True] * len(mine)
    while len(mine) < per:
        mine.append(items[0])
        real.append(False)
    return mine, real


def global_sum(values: list[float], env: DistEnv) -> list[float]:
    return dist_utils.sum_floats(values, env.device)
