"""`OnPolicyDistillationTrainer`: the student (the recommendation model) samples answers to general-domain
prompts and learns, token by token, to match the original base model (the teacher) on its own samples.

Per step: draw prompts, append a random ` /think`, ` /no_think` or no suffix (`algorithm.think_suffix_probs`),
sample `rollout.samples_per_prompt` answers at `rollout.temperature` T (> 1 explores), score every sampled
token with the student (log p_s, before the update) and the teacher (log p_t), both at the same temperature T
as the samples. The per-token advantage is A_t = clip(−(log p_s − log p_t), advantage_min, advantage_max), a
sampled-token estimate of the negative reverse KL; the update is the PPO-clipped policy gradient with these
advantages (no discounting).

Objective: with softmax(z / T) written p^(T), the samples are drawn from the student's p_s^(T) and every
log-prob (old, new, teacher) is taken at T, so the update is on-policy and minimises the per-token reverse
KL(p_s^(T) ‖ p_t^(T)). Tempering both sides by the same T is a bijection on full-support distributions, so
its minimiser is p_s = p_t exactly as for T = 1 (where it is KL(p_s ‖ p_t) itself); T > 1 only spreads the
samples. `logprob_mismatch` logs the gap between the sampler's own log-probs and the student's recomputed
ones (≈1e-7 in fp32).
The teacher has no itemic tokens: a sampled itemic token gets log p_t = `itemic_teacher_logprob` (so a
strongly negative advantage) and ends the trajectory — sampling stops there and nothing after it trains.
Validation samples held-out prompts and reports the exact per-token reverse KL(student ‖ teacher) along
the student's samples and the fraction of answers containing an itemic token.
"""

from __future__ import annotations

import torch

from megarec.common.errors import ConfigError
from megarec.posttrain import chat
from megarec.posttrain.algorithms.base import even_share, global_sum
from megarec.posttrain.algorithms.grpo import sample_logprob_tensor
from megarec.posttrain.algorithms.rl_common import (
    OnPolicyTrainer,
    check_mini_batches,
    check_on_policy_config,
    ppo_update,
    rollout_batch,
)
from megarec.posttrain.batching import micro_batches, rank_slice
from megarec.posttrain.config import DistillConfig
from megarec.posttrain.datasets import OverlongError, seeded_rng
from megarec.posttrain.models.frozen import TeacherModel, check_teacher_compatible
from megarec.posttrain.rollout import SamplingSpec


def validate_config(cfg: DistillConfig, world_size: int) -> None:
    check_on_policy_config(cfg, world_size)
    a = cfg.algorithm
    if not cfg.teacher.path:
        raise ConfigError("teacher.path is required (the original base model's HF checkpoint)")
    if a.advantage_min >= a.advantage_max:
        raise ConfigError("algorithm.advantage_min must be below algorithm.advantage_max")
    probs = a.think_suffix_probs
    if len(probs) != 3 or any(p < 0 for p in probs) or sum(probs) <= 0:
        raise ConfigError("algorithm.think_suffix_probs needs three non-negative weights (/think, /no_think, none)")
    check_mini_batches(cfg, world_size)


def prompt_builder(tokenizer, max_len: int):
    longest = max(chat.suffix_choices(), key=len)

    def prepare(rec: dict, where: str):
        messages = chat.prompt_messages(chat.validate_messages(rec.get("messages"), where), where)
        n = len(chat.prompt_ids(tokenizer, chat.add_suffix(messages, longest)))
        if n > max_len:
            raise OverlongError(
                f"{where}: prompt has {n} tokens (with the longest think suffix), more than "
                f"data.max_prompt_length={max_len}"
            )
        return messages

    return prepare


class OnPolicyDistillationTrainer(OnPolicyTrainer):
    verb = "distill"

    def setup(self) -> None:
        from transformers import AutoConfig

        from megarec.posttrain import hf

        cfg, env = self.cfg, self.env
        validate_config(cfg, env.world_size)
        hf.check_hf_dir(cfg.teacher.path, "teacher.path")
        a = cfg.algorithm
        # every log-prob at the sampling temperature: the PPO ratio and the advantage then refer to the
        # distribution that produced the samples (module docstring: the objective)
        self.policy = self.build_policy(kl_coef=0.0, logprob_temperature=cfg.rollout.temperature)
        tok = self.policy.tokenizer
        t_tok = hf.load_tokenizer(cfg.teacher.path)
        check_teacher_compatible(
            self.policy,
            AutoConfig.from_pretrained(cfg.teacher.path),
            t_tok,
            cfg.teacher.same_size,
            cfg.model.path,
            cfg.teacher.path,
        )
        unknown = torch.zeros(self.policy.vocab_size, dtype=torch.bool)
        unknown[len(t_tok) :] = True
        if self.policy.item_layout is not None:
            unknown[torch.tensor(self.policy.item_layout.itemic_token_ids())] = True
        self.unknown = unknown
        self.stop_ids = torch.nonzero(unknown[: len(tok)]).view(-1).tolist()
        self.teacher = TeacherModel(
            cfg.teacher.path,
            env,
            unknown=unknown,
            unknown_logprob=a.itemic_teacher_logprob,
            dtype=cfg.model.dtype,
            attn_implementation=cfg.model.attn_implementation,
            shard=cfg.parallel.shard_frozen,
            micro_batch_size=cfg.train.micro_batch_size,
            logprob_temperature=cfg.rollout.temperature,
        )
        self.load_prompts(prompt_builder(tok, cfg.data.max_prompt_length))
        self.eos_ids = [tok.convert_tokens_to_ids("<|im_end|>")]

    def _spec(self, temperature: float) -> SamplingSpec:
        r = self.cfg.rollout
        return SamplingSpec(
            max_new_tokens=r.max_new_tokens,
            temperature=temperature,
            eos_token_ids=self.eos_ids,
            stop_token_ids=self.stop_ids,
            batch_size=r.batch_size,
            vocab_limit=len(self.policy.tokenizer),
            record_logprobs=True,
        )

    def _prompt(self, messages: list, rng) -> list[int]:
        suffix = rng.choices(chat.suffix_choices(), weights=self.cfg.algorithm.think_suffix_probs)[0]
        return chat.prompt_ids(self.policy.tokenizer, chat.add_suffix(messages, suffix))

    def _itemic_stats(self, rollout) -> tuple[list[bool], list[int]]:
        """Per sample: contains an itemic token; number of non-itemic response tokens."""
        has, plain = [], []
        for resp in rollout.responses:
            flags = [bool(self.unknown[t]) for t in resp]
            has.append(any(flags))
            plain.append(len(flags) - sum(flags))
        return has, plain

    def train_step(self, step: int) -> dict:
        cfg, env = self.cfg, self.env
        a, G = cfg.algorithm, cfg.rollout.samples_per_prompt
        draws = self.sampler.take(cfg.train.global_batch_size)
        share = rank_slice(len(draws), env.rank, env.world_size)
        prompts = []
        for j, (s, i) in enumerate(draws[share]):
            ids = self._prompt(self.sources[s].rows[i], seeded_rng(cfg.train.seed, step, share.start + j))
            prompts.extend([ids] * G)
        rollout = self.policy.generate(prompts, self._spec(cfg.rollout.temperature), seed=self.step_seed(step))
        batch = rollout_batch(rollout, self.policy.tokenizer.pad_token_id)
        old = self.policy.get_logprobs(batch)
        teacher = self.teacher.get_logprobs(batch)
        mask = batch["loss_mask"]
        sampled = sample_logprob_tensor(rollout, old.shape)
        adv = (-(old - teacher)).clamp(a.advantage_min, a.advantage_max) * mask
        batch.update(old_logprobs=old, advantages=adv)
        unk = self.unknown[batch["input_ids"]] & mask.bool()
        plain = mask.bool() & ~unk
        has_itemic, _ = self._itemic_stats(rollout)
        local = [
            float(((old - teacher) * plain).sum()),
            float(plain.sum()),
            float(sum(has_itemic)),
            float(len(rollout)),
            float(sum(len(r) for r in rollout.responses)),
            float(sum(not f for f in rollout.finished)),
            float(batch["attention_mask"].sum()),
            float((adv * mask).sum()),
            float(mask.sum()),
            float(((old - sampled).abs() * mask).sum()),
        ]
        g = global_sum(local, env)
        update = ppo_update(self.policy, batch, a.ppo.epochs, a.ppo.mini_batches)
        return {
            "loss": update.pop("loss"),
            **update,
            "sample_reverse_kl": g[0] / max(g[1], 1.0),
            "itemic_rate": g[2] / g[3],
            "response_len": g[4] / g[3],
            "truncated_frac": g[5] / g[3],
            "advantage_mean": g[7] / max(g[8], 1.0),
            "tokens": g[6],
            "logprob_mismatch": g[9] / max(g[8], 1.0),
        }

    # ---------------------------------------------------------------------------------- validation
    def validate(self, step: int) -> dict:
        cfg, env = self.cfg, self.env
        items = [(k, m) for k, m in enumerate(ex for src in self.valid for ex in src.rows)]
        mine, real = even_share(items, env)
        prompts = [self._prompt(m, seeded_rng(cfg.train.seed, "valid", k)) for k, m in mine]
        rollout = self.policy.generate(
            prompts, self._spec(cfg.rollout.valid_temperature), seed=cfg.train.seed * 7 + 11 + env.rank
        )
        batch = rollout_batch(rollout, self.policy.tokenizer.pad_token_id, sample_mask=real)
        self.policy.model.eval()
        kl_sum, n = self.exact_reverse_kl(batch)
        has_itemic, _ = self._itemic_stats(rollout)
        g = global_sum([kl_sum, n, float(sum(h for h, r in zip(has_itemic, real) if r)), float(sum(real))], env)
        return {"val_reverse_kl": g[0] / max(g[1], 1.0), "val_itemic_rate": g[2] / max(g[3], 1.0)}

    def exact_reverse_kl(self, batch: dict) -> tuple[float, float]:
        """Σ over loss tokens of KL(student(·|prefix) ‖ teacher(·|prefix)) over the student's vocabulary
        (ids the teacher lacks get log q = itemic_teacher_logprob), and the token count."""
        total, count = 0.0, 0.0
        v_s = len(self.policy.tokenizer)
        floor = self.cfg.algorithm.itemic_teacher_logprob
        for mb in micro_batches(batch, self.cfg.train.micro_batch_size):
            s_logits = self.policy.get_logits(mb)[..., :v_s]
            t_in, _ = self.teacher.teacher_inputs(mb)
            t_logits = self.teacher.get_logits(t_in)
            mask = mb["loss_mask"][:, 1:].to(s_logits.device)
            for b in range(s_logits.shape[0]):
                lps = torch.log_softmax(s_logits[b, :-1].float(), -1)
                lpt = torch.log_softmax(t_logits[b, :-1].float(), -1)
                if lpt.shape[-1] < v_s:
                    lpt = torch.cat([lpt, lpt.new_full((lpt.shape[0], v_s - lpt.shape[-1]), floor)], dim=-1)
                kl = (lps.exp() * (lps - lpt)).sum(-1)
                total += float((kl * mask[b]).sum())
                count += float(mask[b].sum())
        return total, count
