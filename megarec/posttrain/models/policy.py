"""`PolicyModel`: the trainable model of every post-training algorithm, around an HF causal LM (Qwen3).

Interface (NeMo-Aligner style; the algorithm owns the loop, the model owns forward + loss):
  * `get_loss_and_metrics(batch, forward_only=False)` — forward (and backward) over the rank's batch in
    micro-batches; the loss is the sum of token losses divided by the *global* number of loss tokens
    (every micro-batch of every rank), gradients accumulate until `finish_training_step`.
  * `get_logprobs(batch)` — per-token log-probs without gradients (old log-probs for PPO ratios).
  * `generate(prompts, spec)` — policy samples via `generate(do_sample=True)` (see `rollout.py`).
  * hooks `prepare_for_training()` / `finish_training()`, `prepare_for_training_step()` /
    `finish_training_step()` (clip, optimizer and schedule step), `prepare_for_inference()` /
    `finish_inference()` (FSDP: gather the parameters once for generation, then shard again).
  * `save(dir)` / `PolicyModel.load(dir)` — HF format (config, safetensors, tokenizer, itemic.json).
Parameters are fp32 (the optimizer's master copy); compute runs in `compute_dtype` (bf16 on GPU through
FSDP's mixed precision, or autocast on a single GPU; fp32 on CPU).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import torch

from megarec.common.errors import ConfigError, TrainingDivergedError
from megarec.common.hfdir import source_dtype
from megarec.posttrain import hf
from megarec.posttrain.batching import micro_batches
from megarec.posttrain.models import sharding
from megarec.posttrain.models.logprobs import token_logprobs
from megarec.posttrain.models.losses import NLLLoss, TokenLoss
from megarec.posttrain.rollout import Rollout, SamplingSpec, sample
from megarec.runtime import distributed as dist_utils
from megarec.runtime.distributed import DistEnv


class PolicyModel:
    def __init__(
        self,
        path: str,
        env: DistEnv,
        *,
        tokenizer_path: Optional[str] = None,
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        gradient_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        micro_batch_size: int = 4,
        loss_fn: Optional[TokenLoss] = None,
        logprob_temperature: float = 1.0,
        vocab_limit: Optional[int] = None,
        asset_dirs: Sequence[Optional[str]] = (),
    ):
        hf.check_hf_dir(path, "model.path")
        self.path, self.env = path, env
        self.tokenizer_path = tokenizer_path or path
        # where exports copy non-weight files (itemic.json, generation config) from, first found wins;
        # `asset_dirs` (the run's model.path) outlive a resumed-from checkpoint that keep_last prunes
        self.asset_dirs = [path, self.tokenizer_path, *[d for d in asset_dirs if d]]
        self.tokenizer = hf.load_tokenizer(self.tokenizer_path)
        self.item_layout = hf.load_item_layout(path, tokenizer_path)
        self.source_dtype = source_dtype(path)
        self.compute_dtype = hf.compute_dtype(dtype, env.device)
        self.model = hf.load_causal_lm(path, torch.float32, attn_implementation).to(env.device)
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        if len(self.tokenizer) > self.vocab_size:
            raise ConfigError(
                f"{path}: tokenizer has {len(self.tokenizer)} tokens but the model only "
                f"{self.vocab_size} embedding rows"
            )
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.reshard_after_forward = reshard_after_forward
        if env.distributed:
            sharding.shard(
                self.model,
                reshard_after_forward=reshard_after_forward,
                compute_dtype=self.compute_dtype,
                params_dtype=torch.float32,
            )
        # one process: autocast to the compute dtype (several: FSDP's mixed precision casts instead)
        self._autocast = self.compute_dtype != torch.float32 and not sharding.is_sharded(self.model)
        self.micro_batch_size = micro_batch_size
        self.loss_fn: TokenLoss = loss_fn or NLLLoss()
        self.logprob_temperature = logprob_temperature
        self.vocab_limit = vocab_limit  # softmax over ids < vocab_limit only (None = every row)
        self.optimizer = None
        self.scheduler = None

    @classmethod
    def load(cls, path: str, env: Optional[DistEnv] = None, **kwargs) -> "PolicyModel":
        return cls(path, env or dist_utils.single_process_env(), **kwargs)

    # ------------------------------------------------------------------------------------ optimizer
    def setup_optimizer(self, cfg, total_updates: int) -> None:
        """AdamW (no weight decay on norms, biases or embeddings) and the warm-up + decay schedule."""
        from megarec.runtime.schedule import lambda_scheduler

        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if p.dim() < 2 or name.endswith(".bias") or "embed_tokens" in name:
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps
        )
        self.scheduler = lambda_scheduler(
            self.optimizer, total_updates, cfg.lr, cfg.min_lr, cfg.warmup_fraction, cfg.lr_decay_style
        )
        self.clip_grad = cfg.clip_grad

    # ----------------------------------------------------------------------------------------- hooks
    def prepare_for_training(self) -> None:
        self.model.train()

    def finish_training(self) -> None:
        self.model.eval()

    def prepare_for_training_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def finish_training_step(self) -> dict:
        """Clip (the returned grad_norm is the norm before clipping), then optimizer and schedule step."""
        max_norm = self.clip_grad if self.clip_grad > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        norm = float(norm)
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDivergedError(f"gradient norm is {norm}: stopping before the optimizer applies it")
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": norm, "lr": lr}

    def prepare_for_inference(self) -> None:
        self.model.eval()
        if sharding.is_sharded(self.model):
            sharding.gather_for_inference(self.model)

    def finish_inference(self) -> None:
        if sharding.is_sharded(self.model):
            sharding.release_after_inference(self.model, self.reshard_after_forward)
        self.model.train()

    # --------------------------------------------------------------------------------------- forward
    def _ctx(self):
        if self._autocast:
            return torch.autocast(self.env.device.type, dtype=self.compute_dtype)
        return contextlib.nullcontext()

    def _logits(self, mb: dict) -> torch.Tensor:
        dev = self.env.device
        with self._ctx():
            out = self.model(
                input_ids=mb["input_ids"].to(dev), attention_mask=mb["attention_mask"].to(dev), use_cache=False
            )
        return out.logits

    def _token_logprobs(self, logits: torch.Tensor, mb: dict) -> torch.Tensor:
        dev = self.env.device
        if self.vocab_limit is not None:
            logits = logits[..., : self.vocab_limit]
        mask_ids = mb.get("mask_ids")
        masks = mb.get("masks")
        return token_logprobs(
            logits,
            mb["input_ids"].to(dev),
            temperature=self.logprob_temperature,
            mask_ids=None if mask_ids is None else mask_ids.to(dev),
            masks=None if masks is None else masks.to(dev),
        )

    def get_logprobs(self, batch: dict) -> torch.Tensor:
        """[B, T] log-probs (CPU, fp32) of every token given its prefix; no gradients."""
        out = []
        with torch.no_grad():
            for mb in micro_batches(batch, self.micro_batch_size):
                lp = self._token_logprobs(self._logits(mb), mb).float().cpu()
                out.append(torch.nn.functional.pad(lp, (0, batch["input_ids"].shape[1] - lp.shape[1])))
        return torch.cat(out)

    def get_logits(self, mb: dict) -> torch.Tensor:
        """Raw logits of one micro-batch, no gradients (validation)."""
        with torch.no_grad():
            return self._logits(mb)

    def get_loss_and_metrics(self, batch: dict, forward_only: bool = False) -> dict:
        """Forward (+ backward unless forward_only) over this rank's batch; returns the global loss and
        the loss-token-weighted means of the loss function's metrics (identical on every rank)."""
        dev = self.env.device
        mbs = micro_batches(batch, self.micro_batch_size)
        n_local = float(batch["loss_mask"][:, 1:].sum())
        n_global = dist_utils.sum_floats([n_local], dev)[0]
        scale = self.env.world_size / max(n_global, 1.0)  # FSDP averages gradients over ranks
        sums: dict[str, torch.Tensor] = {}
        for i, mb in enumerate(mbs):
            if not forward_only:
                sharding.set_gradient_sync(self.model, i == len(mbs) - 1)
            with contextlib.nullcontext() if not forward_only else torch.no_grad():
                logits = self._logits(mb)
                lp = self._token_logprobs(logits, mb)
                on_dev = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in mb.items() if k != "masks"}
                tok_loss, metrics = self.loss_fn(lp, on_dev)
                mask = on_dev["loss_mask"]
                loss_sum = (tok_loss * mask).sum()
                if not forward_only:
                    (loss_sum * scale).backward()
            sums["loss"] = sums.get("loss", 0.0) + loss_sum.detach().double()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + (v.detach() * mask).sum().double()
        if not forward_only:
            sharding.set_gradient_sync(self.model, True)
        names = sorted(sums)
        totals = dist_utils.sum_floats([float(sums[k]) for k in names], dev)
        out = {k: t / max(n_global, 1.0) for k, t in zip(names, totals)}
        out["loss_tokens"] = n_global
        return out

    # -------------------------------------------------------------------------------------- generate
    def generate(self, prompts: Sequence[Sequence[int]], spec: SamplingSpec, seed: Optional[int] = None) -> Rollout:
        """Sample completions (one per prompt row) on this rank; no collectives inside, so ranks may
        generate different lengths."""
        self.prepare_for_inference()
        try:
            with self._ctx():
                return sample(
                    self.model,
                    prompts,
                    spec,
                    pad_token_id=self.tokenizer.pad_token_id,
                    vocab_size=self.vocab_size,
                    device=self.env.device,
                    seed=seed,
                )
        finally:
            self.finish_inference()

    # ------------------------------------------------------------------------------------ save / load
    def state_dict_full(self) -> dict:
        return sharding.full_state_dict(self.model)

    def save(self, out_dir: str, dtype: Optional[torch.dtype] = None) -> str:
        """HF checkpoint of the current weights (collective under FSDP; rank 0 writes)."""
        state = self.state_dict_full()
        if self.env.is_rank0:
            hf.save_hf_checkpoint(
                out_dir, self.model.config, state, self.tokenizer, self.asset_dirs, dtype or torch.float32
            )
        dist_utils.barrier()
        return out_dir
