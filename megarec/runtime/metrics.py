"""Run observability: metrics.jsonl, stdout lines, wandb (offline unless configured) and a progress bar.
Only global rank 0 writes."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Optional


class MetricsLogger:
    def __init__(
        self,
        run_dir: str,
        enabled: bool,
        wandb_mode: str,
        wandb_project: str,
        wandb_name: Optional[str],
        config: dict,
        total_steps: int,
        start_step: int,
        progress: bool,
    ):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._wandb = None
        self._bar = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        if wandb_mode != "disabled":
            try:
                import wandb

                self._wandb = wandb.init(
                    project=wandb_project,
                    name=wandb_name or os.path.basename(os.path.abspath(run_dir)),
                    dir=run_dir,
                    mode=wandb_mode,
                    config=config,
                    resume="allow",
                    # No banner, sync hints or log paths on every run; a failure still raises (below).
                    settings=wandb.Settings(silent=True),
                )
            except Exception as e:  # wandb is an extra sink; the run must not die with it
                print(f"megarec: wandb disabled ({type(e).__name__}: {e})", file=sys.stderr)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr
            )

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        parts = [f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()]
        line = " | ".join(parts)
        if self._bar is not None:
            self._bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)
        if self._wandb is not None:
            self._wandb.log(
                {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))},
                step=record.get("step"),
            )

    def advance(self, n: int = 1, **postfix) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.finish()
