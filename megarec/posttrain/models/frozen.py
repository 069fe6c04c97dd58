"""Frozen models that only give log-probs: the KL reference of GRPO and the teacher of on-policy
distillation. Loaded in the compute dtype, never trained; sharded with FSDP2 across ranks when asked
(every rank then runs the same number of forward passes, which the algorithms guarantee)."""

from __future__ import annotations

from typing import Optional

import torch

from megarec.common.errors import ConfigError
from megarec.posttrain import hf
from megarec.posttrain.batching import micro_batches
from megarec.posttrain.models import sharding
from megarec.posttrain.models.logprobs import token_logprobs
from megarec.runtime.distributed import DistEnv

ARCH_FIELDS = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
)


class FrozenModel:
    def __init__(
        self,
        path: str,
        env: DistEnv,
        *,
        key: str,
        tokenizer_path: Optional[str] = None,
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        shard: bool = True,
        micro_batch_size: int = 4,
        logprob_temperature: float = 1.0,
        vocab_limit: Optional[int] = None,
    ):
        hf.check_hf_dir(path, key)
        self.path, self.env = path, env
        self.tokenizer = hf.load_tokenizer(tokenizer_path or path)
        self.compute_dtype = hf.compute_dtype(dtype, env.device)
        self.model = hf.load_causal_lm(path, self.compute_dtype, attn_implementation).to(env.device)
        self.model.requires_grad_(False)
        self.model.eval()
        if env.distributed and shard:
            sharding.shard(
                self.model,
                reshard_after_forward=True,
                compute_dtype=self.compute_dtype,
                params_dtype=self.compute_dtype,
            )
        self.config = self.model.config
        self.micro_batch_size = micro_batch_size
        self.logprob_temperature = logprob_temperature
        self.vocab_limit = vocab_limit

    def _logits(self, mb: dict) -> torch.Tensor:
        dev = self.env.device
        with torch.no_grad():
            out = self.model(
                input_ids=mb["input_ids"].to(dev), attention_mask=mb["attention_mask"].to(dev), use_cache=False
            )
        logits = out.logits
        return logits if self.vocab_limit is None else logits[..., : self.vocab_limit]

    def get_logits(self, mb: dict) -> torch.Tensor:
        return self._logits(mb)

    def get_logprobs(self, batch: dict) -> torch.Tensor:
        """[B, T] log-probs (CPU, fp32), under the batch's constraint masks when it carries them."""
        out = []
        dev = self.env.device
        for mb in micro_batches(batch, self.micro_batch_size):
            logits = self._logits(mb)
            m_ids, masks = mb.get("mask_ids"), mb.get("masks")
            lp = (
                token_logprobs(
                    logits,
                    mb["input_ids"].to(dev),
                    temperature=self.logprob_temperature,
                    mask_ids=None if m_ids is None else m_ids.to(dev),
                    masks=None if masks is None else masks.to(dev),
                )
                .float()
                .cpu()
            )
            out.append(torch.nn.functional.pad(lp, (0, batch["input_ids"].shape[1] - lp.shape[1])))
        return torch.cat(out)


class ReferenceModel(FrozenModel):
    """The KL anchor of RL: same vocabulary as the policy."""


class TeacherModel(FrozenModel):
    """The distillation teacher: the original base model, whose vocabulary lacks the itemic tokens.

    Token ids the teacher does not know (`unknown` lookup over the student's vocabulary) are replaced by
    the pad id as inputs (they only occur at or after a trajectory's end) and get `unknown_logprob` as
    targets.
    """

    def __init__(self, path: str, env: DistEnv, *, unknown: torch.Tensor, unknown_logprob: float, **kwargs):
        super().__init__(path, env, key="teacher.path", **kwargs)
        self.vocab_limit = len(self.tokenizer)
        self.unknown = unknown.cpu()
        self.unknown_logprob = unknown_logprob

    def teacher_inputs(self, mb: dict) -> tuple[dict, torch.Tensor]:
        """(batch with unknown ids replaced by the pad id, [B, T] bool of unknown ids)."""
        ids = mb["input_ids"]
        unk = self.unknown[ids.clamp(max=len(self.unknown) - 1)]
        return {**mb, "input_ids": ids.masked_fill(unk, self.tokenizer.pad_token_id)}, unk

    def get_logprobs(self, batch: dict) -> torch.Tensor:
        safe, unk = self.teacher_inputs({k: v for k, v in batch.items() if k not in ("mask_ids", "masks")})
        lp = super().get_logprobs(safe)
        lp = lp.masked_fill(unk, self.unknown_logprob)
        lp[:, 0] = 0.0
        return lp


def check_teacher_compatible(
    student, teacher_config, teacher_tokenizer, same_size: bool, student_path: str, teacher_path: str
) -> None:
    """Clear errors when the teacher cannot score the student's samples: another architecture family,
    another size (when same_size), or a vocabulary whose ids disagree with the student's base vocabulary."""
    s_cfg, t_cfg = student.model.config, teacher_config
    fields = ARCH_FIELDS if same_size else ARCH_FIELDS[:1]
    diffs = [
        f"{f} {getattr(s_cfg, f, None)} vs {getattr(t_cfg, f, None)}"
        for f in fields
        if getattr(s_cfg, f, None) != getattr(t_cfg, f, None)
    ]
    if diffs:
        raise ConfigError(
            f"teacher {teacher_path} does not match the student {student_path}: "
            + ", ".join(diffs)
            + ("" if not same_size else " (set teacher.same_size=false to allow another size)")
        )
    s_tok, t_tok = student.tokenizer, teacher_tokenizer
    n_t = len(t_tok)
    if n_t > len(s_tok):
        raise ConfigError(f"teacher vocabulary ({n_t} tokens) is larger than the student's ({len(s_tok)})")
    layout = student.item_layout
    if layout is not None:
        first = min(layout.itemic_token_ids())
        if n_t > first:
            raise ConfigError(
                f"teacher vocabulary ({n_t} tokens) overlaps the student's itemic ids (from {first}): "
                "the teacher must be the base model without itemic tokens"
            )
    probe = [t for t in ("<|im_start|>", "<|im_end|>", "<think>", "</think>", t_tok.eos_token, t_tok.pad_token) if t]
    for t in probe:
        if s_tok.convert_tokens_to_ids(t) != t_tok.convert_tokens_to_ids(t):
            raise ConfigError(
                f"teacher and student tokenizers disagree on the id of {t!r} "
                f"({t_tok.convert_tokens_to_ids(t)} vs {s_tok.convert_tokens_to_ids(t)})"
            )
    text = "Recommend three films for a rainy evening. /think"
    if s_tok(text, add_special_tokens=False)["input_ids"] != t_tok(text, add_special_tokens=False)["input_ids"]:
        raise ConfigError("teacher and student tokenizers encode plain text differently")
    t_rows = int(t_cfg.get_text_config().vocab_size if hasattr(t_cfg, "get_text_config") else t_cfg.vocab_size)
    if t_rows < n_t:
        raise ConfigError(f"teacher {teacher_path}: {t_rows} embedding rows for {n_t} tokenizer entries")
