"""`GRPOTrainer`: Rec-RL with group-relative advantages.

Per step: draw prompts of the recommendation tasks, sample G completions each from the policy with
`generate(do_sample=True)` through the item-trie logits processor (true policy samples, never beam
search; every item is a real item), optionally after a sampled reasoning part. Reward 1 if a generated
item is in the prompt's target set, else 0 (or the shaped `prefix` variant); advantages are the rewards
normalised within each group of G; the update is the PPO-clipped policy gradient plus `kl_coef` × the k3
estimate of KL(policy ‖ reference) per token. Log-probs of the policy, the old policy and the reference
are all computed under the constraint masks and temperature that produced each sample (`logprob_mismatch`
logs the mean |old log-prob − log-prob recorded while sampling|, ~1e-7 in fp32). Groups whose
rewards are all zero (no signal) are counted and logged.
"""

from __future__ import annotations

import torch

from megarec.common.errors import ConfigError, DataError
from megarec.posttrain import chat
from megarec.posttrain.algorithms.base import even_share, global_sum
from megarec.posttrain.algorithms.rl_common import (
    OnPolicyTrainer,
    check_mini_batches,
    check_on_policy_config,
    ppo_update,
    rollout_batch,
)
from megarec.posttrain.batching import rank_slice
from megarec.posttrain.config import GRPOConfig
from megarec.posttrain.constraints import answer_processors, answer_tokens
from megarec.posttrain.datasets import OverlongError
from megarec.posttrain.models.frozen import ReferenceModel
from megarec.posttrain.rewards import group_advantages, item_reward
from megarec.posttrain.rollout import SamplingSpec

TARGET_ID_KEYS = ("target_item_ids", "targets", "target_items")


def validate_config(cfg: GRPOConfig, world_size: int) -> None:
    check_on_policy_config(cfg, world_size)
    if not cfg.data.codes:
        raise ConfigError("data.codes is required (the codes table of the real items: item_id, c1..cL)")
    if cfg.algorithm.kl_coef < 0:
        raise ConfigError("algorithm.kl_coef must be >= 0")
    if cfg.rollout.samples_per_prompt < 2:
        raise ConfigError("rollout.samples_per_prompt (the group size G) must be >= 2 for group-relative advantages")
    check_mini_batches(cfg, world_size)


def targets_of(rec: dict, id_to_codes: dict, where: str) -> set:
    """Target code tuples of a prompt row: `target_codes` (lists of codes) or target item ids under
    `metadata` / `meta` / the row itself (`target_item_ids`, `targets`, `target_items`)."""
    found = None
    for holder in (rec.get("metadata"), rec.get("meta"), rec):
        if not isinstance(holder, dict):
            continue
        if "target_codes" in holder:
            return {tuple(int(c) for c in codes) for codes in holder["target_codes"] or []} or _empty(where)
        for k in TARGET_ID_KEYS:
            if k in holder:
                found = holder[k]
                break
        if found is not None:
            break
    if found is None:
        raise DataError(f"{where}: no target items (expected metadata.target_item_ids or target_codes)")
    if isinstance(found, (str, int)):
        found = [found]
    out = set()
    for item in found:
        codes = id_to_codes.get(str(item))
        if codes is None:
            raise DataError(f"{where}: target item {item!r} is not in the codes table")
        out.add(codes)
    return out or _empty(where)


def sample_logprob_tensor(rollout, shape) -> torch.Tensor:
    """[B, T] log-probs recorded while sampling, aligned like training log-probs (prompt entries 0)."""
    out = torch.zeros(shape)
    for i, (p, lps) in enumerate(zip(rollout.prompts, rollout.sample_logprobs)):
        out[i, len(p) : len(p) + len(lps)] = torch.tensor(lps)
    return out


def _empty(where: str):
    raise DataError(f"{where}: empty target set (a Rec-RL prompt needs at least one target item)")


class GRPOTrainer(OnPolicyTrainer):
    verb = "grpo"

    def setup(self) -> None:
        from megarec.common.itemic import read_codes_table
        from megarec.decoding.trie import ItemTrie

        cfg, env = self.cfg, self.env
        validate_config(cfg, env.world_size)
        r, a = cfg.rollout, cfg.algorithm
        self.policy = self.build_policy(kl_coef=a.kl_coef, logprob_temperature=r.temperature)
        tok = self.policy.tokenizer
        layout = self.policy.item_layout
        if layout is None:
            raise ConfigError(f"{cfg.model.path} has no itemic.json: GRPO needs a model with itemic tokens")
        L = layout.num_layers
        need = L + 3 + (4 if r.reasoning else 0)
        if r.max_new_tokens < need:
            raise ConfigError(
                f"rollout.max_new_tokens={r.max_new_tokens} cannot hold an answer (needs at least {need} tokens)"
            )
        table = read_codes_table(cfg.data.codes, L, layout.codebook_size)
        ids, codes = table.ids, table.codes
        item_codes = {(i.item() if hasattr(i, "item") else i): tuple(int(c) for c in row) for i, row in zip(ids, codes)}
        self.trie = ItemTrie(item_codes, layout)
        self.layout = layout
        self.id_to_codes = {str(k): v for k, v in item_codes.items()}
        self.eos_ids = [tok.convert_tokens_to_ids("<|im_end|>")]
        self.make_processors = answer_processors(
            self.trie, tok, reasoning=r.reasoning, max_think_tokens=r.max_think_tokens, eos_ids=self.eos_ids
        )
        self.reference = None
        if a.kl_coef > 0 or cfg.reference.path:  # an explicit reference is tracked (logged) even at kl_coef 0
            self.reference = ReferenceModel(
                cfg.reference.path or cfg.model.path,
                env,
                key="reference.path",
                dtype=cfg.model.dtype,
                attn_implementation=cfg.model.attn_implementation,
                shard=cfg.parallel.shard_frozen,
                micro_batch_size=cfg.train.micro_batch_size,
                logprob_temperature=r.temperature,
                vocab_limit=len(tok),
            )
            if len(self.reference.tokenizer) != len(tok):
                raise ConfigError(
                    f"reference.path tokenizer has {len(self.reference.tokenizer)} tokens, the "
                    f"policy's {len(tok)}: the reference must share the policy's vocabulary"
                )
        self.load_prompts(self._prompt_builder())

    def _prompt_builder(self):
        tok, cfg = self.policy.tokenizer, self.cfg
        thinking = None if cfg.rollout.reasoning else False

        def prepare(rec: dict, where: str):
            messages = chat.prompt_messages(chat.validate_messages(rec.get("messages"), where), where)
            targets = targets_of(rec, self.id_to_codes, where)
            ids = chat.prompt_ids(tok, messages, enable_thinking=thinking)
            if len(ids) > cfg.data.max_prompt_length:
                raise OverlongError(
                    f"{where}: prompt has {len(ids)} tokens, more than "
                    f"data.max_prompt_length={cfg.data.max_prompt_length}"
                )
            return ids, targets

        return prepare

    def spec(self, temperature: float) -> SamplingSpec:
        r = self.cfg.rollout
        return SamplingSpec(
            max_new_tokens=r.max_new_tokens,
            temperature=temperature,
            eos_token_ids=self.eos_ids,
            processors=self.make_processors,
            record_masks=True,
            record_logprobs=True,
            batch_size=r.batch_size,
            vocab_limit=len(self.policy.tokenizer),
        )

    def score(self, rollout, targets: list) -> tuple[list[float], dict]:
        """Rewards of every sample, plus counts: hits, answers without an item, items not in the trie."""
        rw = self.cfg.reward
        rewards, hits, empty, invalid, n_items = [], 0, 0, 0, 0
        for resp, tgt in zip(rollout.responses, targets):
            items = self.layout.parse_items(answer_tokens(resp, self.policy.tokenizer, self.cfg.rollout.reasoning))
            invalid += sum(not self.trie.is_item(self.layout.code_ids(c)) for c in items)
            n_items += len(items)
            empty += not items
            hit = any(tuple(c) in tgt for c in items)
            hits += hit
            rewards.append(item_reward(items, tgt, rw.kind, rw.prefix_weight, self.layout.num_layers))
        return rewards, {"hits": hits, "empty": empty, "invalid": invalid, "items": n_items}

    def train_step(self, step: int) -> dict:
        cfg, env = self.cfg, self.env
        G, a = cfg.rollout.samples_per_prompt, cfg.algorithm
        draws = self.sampler.take(cfg.train.global_batch_size)
        mine = [self.sources[s].rows[i] for s, i in draws[rank_slice(len(draws), env.rank, env.world_size)]]
        prompts = [ids for ids, _ in mine for _ in range(G)]
        targets = [t for _, t in mine for _ in range(G)]
        rollout = self.policy.generate(prompts, self.spec(cfg.rollout.temperature), seed=self.step_seed(step))
        rewards, counts = self.score(rollout, targets)
        adv, gstats = group_advantages(torch.tensor(rewards), G, a.scale_by_std)
        batch = rollout_batch(rollout, self.policy.tokenizer.pad_token_id)
        batch["advantages"] = adv[:, None] * batch["loss_mask"]
        batch["old_logprobs"] = self.policy.get_logprobs(batch)
        sampled = sample_logprob_tensor(rollout, batch["old_logprobs"].shape)
        mismatch = float(((batch["old_logprobs"] - sampled).abs() * batch["loss_mask"]).sum())
        if self.reference is not None:
            batch["ref_logprobs"] = self.reference.get_logprobs(batch)
        update = ppo_update(self.policy, batch, a.ppo.epochs, a.ppo.mini_batches)
        n = float(len(rollout))
        g = global_sum(
            [
                sum(rewards),
                counts["hits"],
                counts["empty"],
                counts["invalid"],
                counts["items"],
                n,
                gstats["groups"],
                gstats["zero_reward_groups"],
                gstats["uniform_groups"],
                float(sum(len(r) for r in rollout.responses)),
                float(batch["attention_mask"].sum()),
                mismatch,
                float(batch["loss_mask"].sum()),
            ],
            env,
        )
        return {
            "loss": update.pop("loss"),
            **update,
            "reward_mean": g[0] / g[5],
            "hit_rate": g[1] / g[5],
            "no_item_frac": g[2] / g[5],
            "invalid_items": g[3],
            "items_per_answer": g[4] / g[5],
            "zero_reward_groups": g[7],
            "zero_reward_group_frac": g[7] / g[6],
            "uniform_group_frac": g[8] / g[6],
            "response_len": g[9] / g[5],
            "tokens": g[10],
            "logprob_mismatch": g[11] / max(g[12], 1.0),
        }

    # ---------------------------------------------------------------------------------- validation
    def validate(self, step: int) -> dict:
        cfg, env = self.cfg, self.env
        items = [ex for src in self.valid for ex in src.rows]
        mine, real = even_share(items, env)
        rollout = self.policy.generate(
            [ids for ids, _ in mine], self.spec(cfg.rollout.valid_temperature), seed=cfg.train.seed * 7 + 13 + env.rank
        )
        rewards, counts = self.score(rollout, [t for _, t in mine])
        hits = [
            float(
                any(
                    tuple(c) in t
                    for c in self.layout.parse_items(answer_tokens(r, self.policy.tokenizer, cfg.rollout.reasoning))
                )
            )
            for r, (_, t) in zip(rollout.responses, mine)
        ]
        g = global_sum(
            [
                sum(h for h, ok in zip(hits, real) if ok),
                sum(x for x, ok in zip(rewards, real) if ok),
                float(sum(real)),
                float(counts["invalid"]),
            ],
            env,
        )
        return {"val_hit_rate": g[0] / g[2], "val_reward": g[1] / g[2], "val_invalid_items": g[3]}
