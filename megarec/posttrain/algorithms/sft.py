"""`SFTTrainer`: supervised fine-tuning on chat data, loss on assistant tokens only.

Each step draws `train.global_batch_size` conversations from the weighted mixture (general-domain and
recommendation sources; the report mixes 64.98% / 35.02%), every rank trains on its contiguous share in
micro-batches, and the loss is the sum of assistant-token NLLs divided by the number of assistant tokens
in the whole global batch. Sources are chat files or `megarec preprocess` datasets (see `sft_data`).
Validation reports the same loss on held-out conversations.
"""

from __future__ import annotations

from megarec.common.errors import ConfigError
from megarec.posttrain.algorithms.base import Trainer, even_share, global_sum
from megarec.posttrain.batching import pad_batch, rank_slice
from megarec.posttrain.config import SFTConfig, check_common, check_sources
from megarec.posttrain.datasets import MixtureSampler
from megarec.posttrain.models.losses import NLLLoss
from megarec.posttrain.models.policy import PolicyModel
from megarec.posttrain.sft_data import load_sft_sources


def validate_config(cfg: SFTConfig, world_size: int) -> None:
    check_common(cfg, world_size, "sequences")
    check_sources(cfg.data.sources, "data.sources", required=True)
    check_sources(cfg.data.valid, "data.valid", required=False)
    if cfg.data.max_seq_length < 2:
        raise ConfigError("data.max_seq_length must be >= 2")
    if not 0.0 <= cfg.data.think_flag_prob <= 1.0:
        raise ConfigError("data.think_flag_prob must be in [0, 1]")


class SFTTrainer(Trainer):
    verb = "sft"

    def setup(self) -> None:
        cfg, env = self.cfg, self.env
        validate_config(cfg, env.world_size)
        self.policy = PolicyModel(
            self.policy_path,
            env,
            tokenizer_path=cfg.model.tokenizer if not self.resume_from else None,
            dtype=cfg.model.dtype,
            attn_implementation=cfg.model.attn_implementation,
            gradient_checkpointing=cfg.model.gradient_checkpointing,
            reshard_after_forward=cfg.parallel.reshard_after_forward,
            micro_batch_size=cfg.train.micro_batch_size,
            loss_fn=NLLLoss(),
            asset_dirs=[cfg.model.path, cfg.model.tokenizer],
        )
        tok_dir, vocab = self.policy.tokenizer_path, len(self.policy.tokenizer)
        self.sources = load_sft_sources(cfg.data.sources, cfg.data, tok_dir, vocab, cfg.train.seed)
        self.valid = load_sft_sources(
            cfg.data.valid, cfg.data, tok_dir, vocab, cfg.train.seed, limit=cfg.data.valid_samples
        )
        self.sampler = MixtureSampler(
            [len(s.rows) for s in self.sources], [s.weight for s in self.sources], cfg.train.seed
        )
        skipped = sum(s.skipped for s in self.sources)
        if skipped and env.is_rank0:
            print(f"megarec sft: skipped {skipped} conversations longer than data.max_seq_length", flush=True)

    def _batch(self, examples: list, real: list[bool] | None = None) -> dict:
        seqs = [ids for ids, _ in examples]
        masks = [m if (real is None or real[i]) else [0] * len(m) for i, (_, m) in enumerate(examples)]
        return pad_batch(seqs, self.policy.tokenizer.pad_token_id, {"loss_mask": masks})

    def train_step(self, step: int) -> dict:
        cfg, env = self.cfg, self.env
        draws = self.sampler.take(cfg.train.global_batch_size)
        mine = draws[rank_slice(len(draws), env.rank, env.world_size)]
        examples = [self.sources[s].rows[i] for s, i in mine]
        batch = self._batch(examples)
        self.policy.prepare_for_training_step()
        metrics = self.policy.get_loss_and_metrics(batch)
        metrics.update(self.policy.finish_training_step())
        (tokens,) = global_sum([float(batch["attention_mask"].sum())], env)
        counts = global_sum([float(sum(1 for s, _ in mine if s == k)) for k in range(len(self.sources))], env)
        out = {"loss": metrics.pop("loss"), **metrics, "tokens": tokens}
        if len(self.sources) > 1:
            for src, c in zip(self.sources, counts):
                out[f"frac_{src.name}"] = c / cfg.train.global_batch_size
        return out

    def has_validation(self) -> bool:
        return bool(self.valid)

    def validate(self, step: int) -> dict:
        items = [src.rows[i] for src in self.valid for i in range(len(src.rows))][: self.cfg.data.valid_samples]
        mine, real = even_share(items, self.env)
        self.policy.model.eval()
        m = self.policy.get_loss_and_metrics(self._batch(mine, real), forward_only=True)
        return {"val_loss": m["loss"], "val_loss_tokens": m["loss_tokens"]}

    def data_state(self) -> dict:
        return self.sampler.state_dict()

    def load_data_state(self, state: dict) -> None:
        if state:
            self.sampler.load_state_dict(state)
