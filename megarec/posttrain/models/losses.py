"""Token-level losses owned by the policy model. Each returns per-token losses [B, T] and per-token metric
values; the policy sums them over `loss_mask` and divides by the global number of loss tokens (all
micro-batches, all ranks), so the objective does not depend on how the batch is split.

Estimators:
  * NLL (SFT): −log p(token).
  * Clipped policy gradient (PPO / GRPO / on-policy distillation): with ratio r = exp(log p − log p_old)
    and advantage A, loss = max(−A·r, −A·clip(r, 1−ε, 1+ε)).
  * KL to a reference, k3 (low-variance, unbiased, ≥ 0): with d = log p_ref − log p,
    k3 = exp(d) − d − 1; its expectation under the policy is KL(policy ‖ reference).
"""

from __future__ import annotations

from typing import Protocol

import torch

_LOG_RATIO_LIMIT = 20.0  # exp() stays finite; a log-ratio this large means the sample is off-policy anyway


class TokenLoss(Protocol):
    def __call__(self, logprobs: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy ‖ reference) from log-probs of tokens sampled from the policy."""
    d = (ref_logprobs - logprobs).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
    return torch.exp(d) - d - 1.0


class NLLLoss:
    """Supervised fine-tuning: negative log-likelihood of the masked (assistant) tokens."""

    def __call__(self, logprobs: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return -logprobs, {}


class ClippedPolicyGradientLoss:
    """PPO-clip surrogate with per-token advantages and an optional k3 KL penalty to a reference.

    batch keys: `advantages` [B, T], `old_logprobs` [B, T]; `ref_logprobs` [B, T] when kl_coef > 0.
    """

    def __init__(self, clip_eps: float = 0.2, kl_coef: float = 0.0):
        self.clip_eps = clip_eps
        self.kl_coef = kl_coef

    def __call__(self, logprobs: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        adv = batch["advantages"]
        log_ratio = (logprobs - batch["old_logprobs"]).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
        ratio = torch.exp(log_ratio)
        unclipped = -adv * ratio
        clipped = -adv * ratio.clamp(1.0 - self.clip_eps, 1.0 + self.clip_eps)
        loss = torch.maximum(unclipped, clipped)
        metrics = {"pg_loss": loss.detach(), "clip_frac": (clipped > unclipped).float(), "ratio": ratio.detach()}
        if "ref_logprobs" in batch:
            kl = k3_kl(logprobs, batch["ref_logprobs"])
            metrics["kl"] = kl.detach()
            if self.kl_coef:
                loss = loss + self.kl_coef * kl
        return loss, metrics
