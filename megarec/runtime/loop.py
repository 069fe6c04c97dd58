"""The step loop both pre-training and the post-training algorithms drive: the cadence of logging, validation,
checkpointing and exiting, the divergence stop, and the run summary. Stages bring only their decisions: what a
step does, what validation measures, how a checkpoint is written.

Per step, in this order: run the step (timed alone) → stop if its loss or gradient norm is NaN/Inf, naming the
newest checkpoint → log (every `log_interval` steps and at the last) → validate (every `eval_interval` steps
and at the last; 0 = never) → exit on a signal any rank received (SLURM pre-emption) or after `exit_interval`
steps of this run → save (every `save_interval` steps, on exit and at the last step) → leave if exiting.
Every record goes to the metrics logger (metrics.jsonl, stdout, wandb) with its step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from megarec.common.errors import TrainingDivergedError
from megarec.runtime.metrics import MetricsLogger
from megarec.runtime.signals import ExitSignalHandler


class NonFinite(Exception):
    """Raised by a step (or found by the loop) when a monitored value is NaN or Inf."""

    def __init__(self, name: str, value: float, detail: str = ""):
        super().__init__(name)
        self.name, self.value, self.detail = name, value, detail


def check_finite(name: str, value: float, detail: str = "") -> float:
    """`value`, or NonFinite when it is NaN/Inf (steps call it before applying an update they cannot undo)."""
    if not math.isfinite(value):
        raise NonFinite(name, value, detail)
    return value


@dataclass
class Cadence:
    total_steps: int
    log_interval: int = 1
    eval_interval: int = 0
    save_interval: int = 0
    exit_interval: int = 0
    validate_at_start: bool = False


@dataclass
class RunSummary:
    start_step: int
    final_step: int
    history: list = field(default_factory=list)  # the record of every step
    validations: list = field(default_factory=list)  # one dict per validation
    exit_reason: str = "finished"  # finished | signal | exit_interval
    checkpoint: Optional[str] = None  # newest checkpoint (written by this run or resumed from)
    output: Optional[str] = None  # the stage's final export, when it writes one

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.history]


class StepLoop:
    def __init__(
        self,
        cadence: Cadence,
        logger: MetricsLogger,
        signals: ExitSignalHandler,
        verb: str,
        is_rank0: bool,
        hint: str = "lower optimizer.lr or inspect the data",
    ):
        self.cadence = cadence
        self.logger = logger
        self.signals = signals
        self.verb = verb
        self.is_rank0 = is_rank0
        self.hint = hint

    def run(
        self,
        start_step: int,
        train_step: Callable[[int], dict],
        save: Optional[Callable[[int], str]] = None,
        validate: Optional[Callable[[int], dict]] = None,
        last_checkpoint: Optional[str] = None,
    ) -> RunSummary:
        """Steps start_step + 1 .. total. `train_step(step)` returns the step's record (with `loss`; may add
        `step_time_s`, otherwise the loop times the call); `save(step)` writes a checkpoint and returns its path
        (None: nothing is saved); `validate(step)` returns validation metrics."""
        c = self.cadence
        summary = RunSummary(start_step, start_step, checkpoint=last_checkpoint)
        if validate is not None and c.validate_at_start and start_step == 0:
            self._validate(validate, 0, summary)
        step, steps_this_run = start_step, 0
        while step < c.total_steps:
            step += 1
            steps_this_run += 1
            started = time.perf_counter()
            try:
                record = train_step(step)
                check_finite("loss", float(record.get("loss", 0.0)))
                if "grad_norm" in record:
                    check_finite("gradient norm", float(record["grad_norm"]), f"(loss {record['loss']:.4f})")
            except NonFinite as e:
                raise TrainingDivergedError(
                    f"step {step}: {e.name} is {e.value}{' ' + e.detail if e.detail else ''} — stopping without "
                    f"saving (last checkpoint: {summary.checkpoint or 'none'}); {self.hint}"
                ) from None
            record = {"step": step, **record}
            record.setdefault("step_time_s", time.perf_counter() - started)
            summary.history.append(record)
            summary.final_step = step
            last = step == c.total_steps
            if step % c.log_interval == 0 or last:
                self.logger.log(record)
            self.logger.advance(1, loss=record.get("loss", 0.0))
            if validate is not None and c.eval_interval and (step % c.eval_interval == 0 or last):
                self._validate(validate, step, summary)
            stop_signal = self.signals.any_rank_received()
            stop_interval = bool(c.exit_interval) and steps_this_run >= c.exit_interval and not last
            periodic = bool(c.save_interval) and step % c.save_interval == 0
            if save is not None and (last or stop_signal or stop_interval or periodic):
                self._save(save, step, summary)
            if stop_signal or stop_interval:
                summary.exit_reason = "signal" if stop_signal else "exit_interval"
                break
        if summary.exit_reason == "signal" and self.is_rank0:
            saved = summary.checkpoint if save is not None else "nothing (no checkpoint directory)"
            print(
                f"megarec {self.verb}: received {self.signals.received or 'an exit signal on another rank'}; "
                f"saved {saved} at step {summary.final_step}; exiting",
                flush=True,
            )
        return summary

    def _validate(self, validate: Callable[[int], dict], step: int, summary: RunSummary) -> None:
        started = time.perf_counter()
        result = {"step": step, **validate(step), "eval_time_s": time.perf_counter() - started}
        summary.validations.append(result)
        self.logger.log(result)

    def _save(self, save: Callable[[int], str], step: int, summary: RunSummary) -> None:
        started = time.perf_counter()
        path = save(step)
        summary.checkpoint = path
        self.logger.log({"step": step, "checkpoint": path, "save_time_s": time.perf_counter() - started})
