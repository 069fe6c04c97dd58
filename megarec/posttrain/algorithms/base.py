"""The loop every post-training algorithm shares: resume, step, log, validate, checkpoint, exit on signals,
export the final HF checkpoint. Algorithms implement `setup`, `train_step`, `validate` and their data
position (`data_state` / `load_data_state`); the policy model owns forward, loss and optimizer.

A step is one optimizer step for SFT and one rollout iteration (sampling + `ppo.epochs × ppo.mini_batches`
optimizer steps) for distillation and GRPO. Per-step randomness (sampling, suffix choices) is seeded from
(train.seed, step, rank), so a resumed run draws exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import os
import time

from megarec.common.dtypes import dtype_from_name
from megarec.common.errors import ConfigError
from megarec.common.hfdir import HFWeights, source_dtype
from megarec.posttrain import checkpoint as ckpt
from megarec.posttrain.best import BestPolicy
from megarec.posttrain.config import export_dir
from megarec.posttrain.hf import save_hf_checkpoint
from megarec.runtime import distributed as dist_utils
from megarec.runtime.config import checkpoint_dir
from megarec.runtime.distributed import DistEnv
from megarec.runtime.loop import Cadence, RunSummary, StepLoop
from megarec.runtime.rundir import open_run


class Trainer:
    verb = "posttrain"

    def __init__(self, cfg, env: DistEnv):
        self.cfg = cfg
        self.env = env
        self.policy = None
        self.step = 0
        self.ckpt_root = checkpoint_dir(cfg.checkpoint, cfg.logging)
        self.output_dir = export_dir(cfg)
        self.resume_from = ckpt.latest_checkpoint(self.ckpt_root) if cfg.checkpoint.resume else None
        self.best: BestPolicy | None = None

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
        cfg, env = self.cfg, self.env
        self.setup()
        total = cfg.train.steps
        self.policy.setup_optimizer(cfg.optimizer, total * self.updates_per_step())
        if self.resume_from:
            state = ckpt.read_state(self.resume_from)
            if state.get("verb") != self.verb:
                raise ConfigError(
                    f"{self.resume_from} is a `megarec {state.get('verb')}` checkpoint, not {self.verb}: "
                    "use another checkpoint.dir (or logging.run_dir) for this stage"
                )
            ckpt.restore_optimizer(self.resume_from, self.policy)
            self.policy.scheduler.load_state_dict(state["scheduler"])
            self.load_data_state(state.get("data", {}))
            self.step = int(state["step"])
            if env.is_rank0:
                print(f"megarec {self.verb}: resumed from {self.resume_from} at step {self.step}", flush=True)

        def train_step(step: int) -> dict:
            started = time.perf_counter()
            metrics = self.train_step(step)
            self.step = step
            dt = time.perf_counter() - started
            record = {**metrics, "step_time_s": dt}
            if "tokens" in metrics:
                record["tokens_per_s"] = metrics["tokens"] / dt if dt > 0 else float("nan")
            return record

        self.best = self._best_policy()

        def validate(step: int) -> dict:
            result = self.validate(step)
            if self.best is not None:
                self.best.observe(step, result, self.policy)
            self.policy.prepare_for_training()
            return result

        cadence = Cadence(
            total,
            cfg.logging.log_interval,
            cfg.train.eval_interval,
            cfg.checkpoint.save_interval,
            cfg.train.exit_interval,
            validate_at_start=cfg.train.eval_at_start,
        )
        with open_run(cfg, cfg.logging, env.is_rank0, total, self.step, cfg.train.exit_signals) as run:
            self.policy.prepare_for_training()
            loop = StepLoop(cadence, run.logger, run.signals, self.verb, env.is_rank0)
            summary = loop.run(
                self.step,
                train_step,
                lambda step: self.save_checkpoint(cfg.checkpoint.keep_last),
                validate if self.has_validation() else None,
                self.resume_from,
            )
            if self.step >= total and summary.exit_reason == "finished":
                summary.output = self.export()
        return summary

    def _best_policy(self) -> BestPolicy | None:
        c = self.cfg.checkpoint
        if c.export != "best":
            return None
        if not c.best_metric:
            raise ConfigError("checkpoint.export=best needs checkpoint.best_metric (e.g. val_reward or val_loss)")
        if not self.has_validation() or self.cfg.train.eval_interval <= 0:
            raise ConfigError("checkpoint.export=best needs validation: held-out data and train.eval_interval > 0")
        mode = c.best_mode if c.best_mode != "auto" else ("min" if "loss" in c.best_metric else "max")
        resumed = self.step if self.resume_from else None
        return BestPolicy(os.path.join(self.cfg.logging.run_dir, "best"), c.best_metric, mode, resumed)

    def save_checkpoint(self, keep_last: int) -> str:
        return ckpt.save(
            self.ckpt_root, self.step, self.policy, {"verb": self.verb, "data": self.data_state()}, keep_last
        )

    def export(self) -> str:
        """The final HF checkpoint (the next stage's model.path and evaluation's input)."""
        name = self.cfg.checkpoint.export_dtype
        dtype = source_dtype(self.cfg.model.path) if name == "source" else dtype_from_name(name)
        best = self.best.path if self.best is not None else None
        if best is None:
            self.policy.save(self.output_dir, dtype=dtype)
            what = f"step {self.step}"
        else:
            if self.env.is_rank0:
                weights = HFWeights(best)
                state = {n: weights.get(n) for n in weights.names()}
                p = self.policy
                save_hf_checkpoint(self.output_dir, p.model.config, state, p.tokenizer, p.asset_dirs, dtype)
            dist_utils.barrier()
            r = self.best.record
            what = f"the best validation: {r['metric']} {r['value']:.6g} at step {r['step']}"
        if self.env.is_rank0:
            print(f"megarec {self.verb}: wrote {self.output_dir} ({what})", flush=True)
        return self.output_dir


def even_share(items: list, env: DistEnv) -> tuple[list, list[bool]]:
    """This rank's share of `items` (round-robin) padded to the same length on every rank; the flags say
    which entries are real (fillers repeat the first item and must be masked out)."""
    per = -(-len(items) // env.world_size)
    mine = items[env.rank :: env.world_size]
    real = [True] * len(mine)
    while len(mine) < per:
        mine.append(items[0])
        real.append(False)
    return mine, real


def global_sum(values: list[float], env: DistEnv) -> list[float]:
    return dist_utils.sum_floats(values, env.device)
