"""The policy of the best validation so far, kept beside the step checkpoints so that the export can be the best
model instead of the last (`checkpoint.export=best`): RL on a small held-out set can end below where it started,
and the start (the validation at step 0, `train.eval_at_start`) is a candidate too.

Layout under `<logging.run_dir>/best/`: `step_XXXXXXX/` (an fp32 HF checkpoint, written under a temporary name
and renamed) and `best.json` ({step, metric, value}), replaced atomically after the directory it names is complete;
the previous best directory is removed only then. A crash at any point leaves a pointer to a complete checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Optional

import torch

from megarec.common.atomic import write_json
from megarec.common.errors import ConfigError
from megarec.runtime import distributed as dist_utils

POINTER = "best.json"


def step_name(step: int) -> str:
    return f"step_{step:07d}"


class BestPolicy:
    def __init__(self, root: str, metric: str, mode: str, resumed_step: Optional[int]):
        if mode not in ("min", "max"):
            raise ConfigError(f"checkpoint.best_mode must be min or max, got {mode!r}")
        self.root, self.metric, self.mode = root, metric, mode
        self.record = self._read()
        if self.record is not None and resumed_step is not None and self.record["step"] > resumed_step:
            self.record = None  # from past the checkpoint being resumed: that stretch is trained again

    def _read(self) -> Optional[dict]:
        path = os.path.join(self.root, POINTER)
        if not os.path.isfile(path):
            return None
        record = json.load(open(path))
        if record.get("metric") != self.metric or not os.path.isdir(self.hf_dir(record["step"])):
            return None
        return record

    def hf_dir(self, step: int) -> str:
        return os.path.join(self.root, step_name(step))

    @property
    def path(self) -> Optional[str]:
        """HF directory of the best policy so far, or None before the first validation."""
        return self.hf_dir(self.record["step"]) if self.record else None

    def better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.record is None:
            return True
        best = self.record["value"]
        return value > best if self.mode == "max" else value < best

    def observe(self, step: int, metrics: dict, policy) -> bool:
        """Collective (every rank calls with the same global metrics): snapshot the policy when `metrics` improves
        on the best so far; True when it did."""
        if self.metric not in metrics:
            raise ConfigError(
                f"checkpoint.best_metric={self.metric!r} is not a validation metric of this run "
                f"(it reports {sorted(metrics)})"
            )
        value = float(metrics[self.metric])
        if not self.better(value):
            return False
        previous = self.path
        policy.save(self.hf_dir(step), dtype=torch.float32)  # collective; appears complete or not at all
        self.record = {"step": step, "metric": self.metric, "value": value}
        if policy.env.is_rank0:
            write_json(os.path.join(self.root, POINTER), self.record)
            if previous and previous != self.hf_dir(step):
                shutil.rmtree(previous, ignore_errors=True)
        dist_utils.barrier()
        return True
