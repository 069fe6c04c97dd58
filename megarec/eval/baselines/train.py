"""Training loop shared by the neural sequential baselines: next-item prediction at every position with
full-softmax cross-entropy over all items, Adam, validation NDCG@10 after every epoch, early stopping
(best weights restored), then full-ranking test metrics."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from megarec.common.errors import ConfigError
from megarec.eval.seqrec_data import SeqRecData
from megarec.eval.seqrec_eval import evaluate_full_ranking


@dataclass
class SeqTrainConfig:
    """Hyper-parameters of a neural sequential baseline."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping
    time_budget_s: float | None = None  # stop after this much training time (best weights still restored)
    seed: int = 0

    def validate(self) -> None:
        if min(self.hidden, self.layers, self.heads, self.max_len, self.epochs, self.batch_size) < 1:
            raise ConfigError("hidden, layers, heads, max_len, epochs and batch_size must be >= 1")
        if not 0.0 <= self.dropout < 1.0 or self.lr <= 0 or self.patience < 1:
            raise ConfigError("need 0 <= dropout < 1, lr > 0, patience >= 1")


def build_model(kind: str, num_items: int, cfg: SeqTrainConfig) -> torch.nn.Module:
    if kind == "sasrec":
        from megarec.eval.baselines.sasrec import SASRec

        return SASRec(num_items, cfg.hidden, cfg.layers, cfg.heads, cfg.max_len, cfg.dropout)
    if kind == "gru4rec":
        from megarec.eval.baselines.gru4rec import GRU4Rec

        return GRU4Rec(num_items, cfg.hidden, 1, cfg.max_len, cfg.dropout)
    raise ConfigError(f"unknown baseline {kind!r} (sasrec, gru4rec)")


def training_windows(train_sequences: Sequence[np.ndarray], max_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, next-item targets) windows of at most max_len positions, cut from the end of every
    training sequence so that long histories are used in full."""
    out = []
    for s in train_sequences:
        inp, tgt = s[:-1], s[1:]
        end = len(inp)
        while end > 0:
            start = max(0, end - max_len)
            out.append((inp[start:end], tgt[start:end]))
            end = start
    return out


def _left_pad(rows: Sequence[np.ndarray], width: int) -> torch.Tensor:
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        r = r[-width:]
        if len(r):
            out[i, width - len(r) :] = r
    return torch.from_numpy(out)


def score_function(model: torch.nn.Module, max_len: int):
    """histories → [B, num_items + 1] scores from the hidden state at the last position."""

    def score(histories: list[np.ndarray]) -> torch.Tensor:
        model.eval()
        with torch.inference_mode():
            width = max(1, min(max_len, max(len(h) for h in histories)))
            hidden = model(_left_pad(histories, width))[:, -1]
            return model.logits(hidden)

    return score


def train_sequential(kind: str, data: SeqRecData, cfg: SeqTrainConfig, *, progress: bool = True, log=print) -> dict:
    """Train a baseline with early stopping; returns {"valid": metrics, "test": metrics, "epochs", ...}."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_model(kind, data.num_items, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    windows = training_windows(data.train_sequences(), cfg.max_len)
    if not windows:
        raise ConfigError("no training windows: every sequence is too short")
    v_hist, v_tgt = data.split_inputs("valid")
    score = score_function(model, cfg.max_len)
    best, best_state, best_epoch, bad, history = -1.0, None, 0, 0, []
    t0 = time.perf_counter()
    epochs = range(1, cfg.epochs + 1)
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc=f"train {kind}", unit="epoch", leave=False)
    for epoch in epochs:
        model.train()
        order = rng.permutation(len(windows))
        total, count = 0.0, 0
        for s in range(0, len(order), cfg.batch_size):
            batch = [windows[i] for i in order[s : s + cfg.batch_size]]
            width = max(len(x) for x, _ in batch)
            inp = _left_pad([x for x, _ in batch], width)
            tgt = _left_pad([y for _, y in batch], width)
            hidden = model(inp)
            # scores of real items only (column j = item j + 1); padded positions are ignored
            logits = hidden @ model.item_emb.weight[1:].T
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt.view(-1) - 1, ignore_index=-1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = int((tgt > 0).sum())
            total += float(loss.detach()) * n
            count += n
        valid = evaluate_full_ranking(score, v_hist, v_tgt, data.num_items)
        history.append({"epoch": epoch, "loss": total / max(count, 1), **{f"valid_{k}": v for k, v in valid.items()}})
        if valid["ndcg@10"] > best:
            best, best_epoch, bad = valid["ndcg@10"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        if progress and hasattr(epochs, "set_postfix"):
            epochs.set_postfix(loss=f"{total / max(count, 1):.3f}", ndcg10=f"{valid['ndcg@10']:.4f}", best=best_epoch)
        if bad >= cfg.patience:
            break
        if cfg.time_budget_s is not None and time.perf_counter() - t0 > cfg.time_budget_s:
            log(f"{kind}: time budget of {cfg.time_budget_s:.0f}s reached after epoch {epoch}")
            break
    model.load_state_dict(best_state)
    t_hist, t_tgt = data.split_inputs("test")
    return {
        "valid": evaluate_full_ranking(score, v_hist, v_tgt, data.num_items),
        "test": evaluate_full_ranking(score, t_hist, t_tgt, data.num_items),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "train_seconds": time.perf_counter() - t0,
        "config": asdict(cfg),
        "history": history,
        "model": model,
    }
