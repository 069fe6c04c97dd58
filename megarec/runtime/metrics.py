"""Run observability: metrics.jsonl, stdout lines, wandb (offline unless configured), a progress bar,
throughput and (on GPU) model FLOPs utilisation. Only global rank 0 writes."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional

from megarec.models.qwen3.presets import Qwen3Arch


def flops_per_token(arch: Qwen3Arch, seq_length: int, padded_vocab: int) -> float:
    """Training FLOPs per token as Megatron-LM counts them (`num_floating_point_operations`): forward +
    backward = 3 × forward, 2 FLOPs per multiply-add; per layer the QKV, output and SwiGLU projections and
    causal attention, whose QK^T and PV products cover half of the S×S scores on average; plus the logits."""
    h, layers, d = arch.hidden_size, arch.num_layers, arch.head_dim
    q, kv, f = arch.num_attention_heads, arch.num_query_groups, arch.ffn_hidden_size
    projections = h * (q + 2 * kv) * d + q * d * h + 3 * h * f
    causal_attention = 2 * (q * d) * seq_length / 2  # QK^T and PV, half the scores under the causal mask
    return 3 * 2 * (layers * (projections + causal_attention) + h * padded_vocab)


class MetricsLogger:
    def __init__(self, run_dir: str, enabled: bool, wandb_mode: str, wandb_project: str,
                 wandb_name: Optional[str], config: dict, total_steps: int, start_step: int, progress: bool):
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

                self._wandb = wandb.init(project=wandb_project, name=wandb_name or os.path.basename(
                    os.path.abspath(run_dir)), dir=run_dir, mode=wandb_mode, config=config, resume="allow")
            except Exception as e:  # wandb is an extra sink; the run must not die with it
                print(f"megarec: wandb disabled ({type(e).__name__}: {e})", file=sys.stderr)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                             dynamic_ncols=True, file=sys.stderr)

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
            self._wandb.log({k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))},
                            step=record.get("step"))

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


class StepTimer:
    def __init__(self):
        self._t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self._t = now - self._t, now
        return dt
