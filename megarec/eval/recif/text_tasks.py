"""Text tasks (item understanding, explanation): greedy generation, then the judge's score against the
reference; the lexical fallback's unigram F1 is reported alongside whatever judge is used."""

from __future__ import annotations

import numpy as np
import torch

from megarec.eval.recif.judges import Judge, rouge_l_f1, unigram_f1
from megarec.eval.recif.samples import prompt_messages


def generate_answers(loaded, prompts: list[str], *, max_new_tokens: int, batch_size: int) -> list[str]:
    from megarec.decoding.batching import left_pad, model_device, pad_token_id_for

    tok, model = loaded.tokenizer, loaded.model
    pad, device = pad_token_id_for(model, tok), model_device(model)
    eos = [
        t
        for t in {getattr(tok, "eos_token_id", None), tok.convert_tokens_to_ids("<|im_end|>")}
        if isinstance(t, int) and t >= 0
    ]
    out = []
    with torch.inference_mode():
        for b in range(0, len(prompts), batch_size):
            ids, attn = left_pad(
                [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[b : b + batch_size]], pad, device
            )
            gen = model.generate(
                input_ids=ids,
                attention_mask=attn,
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos or None,
                temperature=None,
                top_k=None,
                top_p=None,
            )
            out.extend(tok.batch_decode(gen[:, ids.shape[1] :], skip_special_tokens=True))
    return [o.strip() for o in out]


def evaluate_text_task(
    loaded, samples: list[dict], judge: Judge, *, max_new_tokens: int = 96, batch_size: int = 8
) -> dict:
    from megarec.eval.hf_model import chat_prompt

    prompts = [chat_prompt(loaded.tokenizer, prompt_messages(s)) for s in samples]
    answers = generate_answers(loaded, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    per_sample = []
    for s, ans in zip(samples, answers):
        ref = s["metadata"].get("reference") or s["messages"][-1]["content"]
        question = prompt_messages(s)[-1]["content"]
        per_sample.append(
            {
                "row": s["_row"],
                "answer": ans,
                "reference": ref,
                "judge": judge.score(question, ref, ans),
                "rouge_l_f1": rouge_l_f1(ref, ans),
                "unigram_f1": unigram_f1(ref, ans),
            }
        )
    metrics = {
        "judge_score": float(np.mean([r["judge"] for r in per_sample])),
        "rouge_l_f1": float(np.mean([r["rouge_l_f1"] for r in per_sample])),
        "unigram_f1": float(np.mean([r["unigram_f1"] for r in per_sample])),
    }
    return {
        "kind": "text",
        "n": len(samples),
        "judge": judge.describe(),
        "llm_judge": judge.is_llm,
        "metrics": metrics,
        "samples": per_sample,
    }
