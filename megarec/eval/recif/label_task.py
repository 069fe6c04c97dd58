"""Label prediction: the score of a sample is p(yes) / (p(yes) + p(no)) from the model's distribution over
the first answer token, with the yes/no words taken from the sample's template language
(`metadata.answer_choices`); AUC over samples, plus accuracy at 0.5 and log-loss."""

from __future__ import annotations

import math

import numpy as np
import torch

from megarec.common.errors import ConfigError, DataError
from megarec.eval import metrics as M
from megarec.eval.recif.samples import prompt_messages, where


def first_token_id(tokenizer, word: str) -> int:
    """Id of the first token of `word` as it starts an assistant answer (no leading space)."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"answer word {word!r} tokenises to nothing")
    return int(ids[0])


def evaluate_label_task(loaded, samples: list[dict], *, batch_size: int = 8) -> dict:
    from megarec.decoding.batching import left_pad, model_device, pad_token_id_for
    from megarec.eval.hf_model import chat_prompt

    tok, model = loaded.tokenizer, loaded.model
    scores, labels, per_sample = [], [], []
    rows = []
    for s in samples:
        md = s["metadata"]
        choices = md.get("answer_choices") or {}
        pos, neg, ans = choices.get("positive"), choices.get("negative"), md.get("answer")
        if not (isinstance(pos, str) and isinstance(neg, str) and ans in (pos, neg)):
            raise DataError(
                f"{where(s)}: label prediction needs metadata.answer_choices "
                "{positive, negative} and metadata.answer equal to one of them"
            )
        yes, no = first_token_id(tok, pos), first_token_id(tok, neg)
        if yes == no:
            raise ConfigError(f"answers {pos!r} and {neg!r} share their first token")
        ids = tok(chat_prompt(tok, prompt_messages(s)), add_special_tokens=False)["input_ids"]
        rows.append((s, ids, yes, no, ans == pos))
    pad, device = pad_token_id_for(model, tok), model_device(model)
    with torch.inference_mode():
        for b in range(0, len(rows), batch_size):
            batch = rows[b : b + batch_size]
            ids, attn = left_pad([r[1] for r in batch], pad, device)
            pos_ids = (attn.cumsum(-1) - 1).clamp(min=0)
            logp = torch.log_softmax(
                model(input_ids=ids, attention_mask=attn, position_ids=pos_ids, logits_to_keep=1).logits[:, -1].float(),
                -1,
            )
            for (s, _, yes, no, label), lp in zip(batch, logp):
                ly, ln = float(lp[yes]), float(lp[no])
                score = 1.0 / (1.0 + math.exp(ln - ly))  # p(yes) / (p(yes) + p(no))
                scores.append(score)
                labels.append(int(label))
                per_sample.append(
                    {
                        "row": s["_row"],
                        "label": int(label),
                        "p_yes": round(score, 6),
                        "mass_yes_no": round(math.exp(ly) + math.exp(ln), 6),
                    }
                )
    y, p = np.asarray(labels), np.asarray(scores)
    metrics = {
        "accuracy": float(np.mean((p >= 0.5) == (y == 1))),
        "logloss": float(-np.mean(y * np.log(np.clip(p, 1e-12, 1)) + (1 - y) * np.log(np.clip(1 - p, 1e-12, 1)))),
        "positive_rate": float(y.mean()),
        "mean_yes_no_mass": float(np.mean([r["mass_yes_no"] for r in per_sample])),
    }
    try:
        metrics["auc"] = M.auc(p, y)
    except M.MetricError as e:
        metrics["auc"] = None
        metrics["auc_note"] = str(e)
    return {"kind": "label", "n": len(samples), "metrics": metrics, "samples": per_sample}
