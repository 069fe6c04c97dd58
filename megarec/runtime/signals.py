"""Exit signals (SLURM pre-emption sends SIGTERM or, with --signal, SIGUSR1): remember that one
arrived; the training loop agrees across ranks, saves a checkpoint and exits cleanly."""

from __future__ import annotations

import signal

import torch


class ExitSignalHandler:
    def __init__(self, names: list[str]):
        self.received: str | None = None
        self._previous = {}
        for name in names:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def any_rank_received(self) -> bool:
        """Collective: True on every rank if any rank got a signal."""
        import torch.distributed as dist

        flag = torch.tensor(
            [1 if self.received else 0], dtype=torch.int32, device="cuda" if torch.cuda.is_available() else "cpu"
        )
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
