"""A run directory, as every training verb opens it: `config.yaml` (the resolved config), `metrics.jsonl`
and the other sinks of the metrics logger, and the exit-signal handler; all closed again when the run ends."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import yaml

from megarec.common.config import to_dict
from megarec.runtime.config import LoggingConfig
from megarec.runtime.metrics import MetricsLogger
from megarec.runtime.signals import ExitSignalHandler


@dataclass
class Run:
    logger: MetricsLogger
    signals: ExitSignalHandler


@contextlib.contextmanager
def open_run(
    cfg, logging: LoggingConfig, is_rank0: bool, total_steps: int, start_step: int, exit_signals: list[str]
) -> Iterator[Run]:
    """Rank 0 creates the run directory and writes config.yaml; every rank gets the logger (which writes
    only on rank 0) and the signal handler."""
    if is_rank0:
        os.makedirs(logging.run_dir, exist_ok=True)
        with open(os.path.join(logging.run_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    logger = MetricsLogger(
        logging.run_dir,
        is_rank0,
        logging.wandb_mode,
        logging.wandb_project,
        logging.wandb_name,
        to_dict(cfg),
        total_steps,
        start_step,
        logging.progress,
    )
    signals = ExitSignalHandler(exit_signals)
    try:
        yield Run(logger, signals)
    finally:
        signals.restore()
        logger.close()
