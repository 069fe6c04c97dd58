"""General-domain checks: held-out perplexity on a text file, and lm-evaluation-harness tasks when the
`lm_eval` package is importable (it is optional and not installed by default)."""

from __future__ import annotations

import math
import os

import torch

from megarec.common.errors import ConfigError, DataError


def perplexity(loaded, path: str, *, window: int = 512, max_tokens: int | None = None, batch_size: int = 4) -> dict:
    """Token-level perplexity of the file's text, in non-overlapping windows of `window` tokens (every
    token but the first of each window is predicted)."""
    from megarec.decoding.batching import model_device

    if not os.path.isfile(path):
        raise DataError(f"{path}: text file for --general not found")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise DataError(f"{path}: too little text for perplexity")
    if window < 2:
        raise ConfigError("--ppl-window must be >= 2")
    chunks = [ids[s : s + window] for s in range(0, len(ids), window)]
    chunks = [c for c in chunks if len(c) >= 2]
    nll, count = 0.0, 0
    device = model_device(loaded.model)
    with torch.inference_mode():
        for b in range(0, len(chunks), batch_size):
            batch = chunks[b : b + batch_size]
            width = max(len(c) for c in batch)
            x = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, c in enumerate(batch):  # right padding: causal attention never sees it
                x[i, : len(c)] = torch.tensor(c)
                mask[i, : len(c)] = 1
            logits = loaded.model(input_ids=x.to(device), attention_mask=mask.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, x[:, 1:, None].to(device)).squeeze(-1)
            valid = mask[:, 1:].bool().to(device)
            nll -= float(logp[valid].sum())
            count += int(valid.sum())
    return {
        "file": os.path.abspath(path),
        "tokens": count,
        "window": window,
        "nll": nll / count,
        "perplexity": math.exp(nll / count),
    }


def lm_eval_available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except Exception:
        return False
    return True


def run_lm_eval(model_path: str, tasks: list[str], *, limit: int | None = None, batch_size: int = 4) -> dict:
    """lm-evaluation-harness results for `tasks`, or a skip note when lm_eval is not importable."""
    if not tasks:
        return {}
    if not lm_eval_available():
        return {"skipped": "lm_eval is not installed (pip install lm-eval to run these tasks)", "tasks": tasks}
    import lm_eval

    res = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model_path}", tasks=tasks, limit=limit, batch_size=batch_size
    )
    return {"tasks": tasks, "results": res.get("results", {})}
