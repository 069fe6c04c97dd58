"""SFT: the chat loss mask (real Qwen3 tokenizer), assistant-only gradients, learning, resume, preprocessed
datasets as sources, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from megarec.common.errors import ConfigError, DataError
from megarec.posttrain import chat
from megarec.posttrain.sft_data import ChatEncoder, encode_conversation

import posttrain_tiny as tiny

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def qwen3_enc(qwen3_tokenizer_dir):
    return ChatEncoder(qwen3_tokenizer_dir)


CONVERSATION = [
    {"role": "system", "content": "You are a recommender."},
    {"role": "user", "content": "I liked Alien. Suggest a film."},
    {"role": "assistant", "content": "<think>\nThe user likes sci-fi.\n</think>\n\nTry Aliens (1986)."},
    {"role": "user", "content": "Another one? /no_think"},
    {"role": "assistant", "content": "Try Heat."},
]


def _expected_mask(tok, messages):
    """Independent reference: characters of each assistant turn (after the header, through <|im_end|>)
    located in the rendered text, mapped to tokens through the fast tokenizer's offsets."""
    text = tok.apply_chat_template(messages, tokenize=False)
    header, end = "<|im_start|>assistant\n", "<|im_end|>"
    spans, pos = [], 0
    while (start := text.find(header, pos)) >= 0:
        s = start + len(header)
        e = text.index(end, s) + len(end)
        spans.append((s, e))
        pos = e
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s <= a and b <= e for s, e in spans)) for a, b in enc["offset_mapping"]]
    return enc["input_ids"], mask, text, spans


def test_loss_mask_matches_assistant_spans_token_by_token(qwen3_tok, qwen3_enc):
    ids, mask = encode_conversation(qwen3_enc, chat.validate_messages(CONVERSATION, "t"))
    ref_ids, ref_mask, text, spans = _expected_mask(qwen3_tok, CONVERSATION)
    eod = qwen3_tok.convert_tokens_to_ids("<|endoftext|>")
    assert ids == ref_ids + [eod]  # documents end with EOD, as in the preprocessed datasets
    assert mask == ref_mask + [0]
    # the trained text is exactly the assistant turns, each with its closing <|im_end|>
    trained = qwen3_tok.decode([t for t, m in zip(ids, mask) if m])
    assert trained == "".join(text[s:e] for s, e in spans)
    assert trained == "Try Aliens (1986).<|im_end|><think>\n\n</think>\n\nTry Heat.<|im_end|>"
    im_end = qwen3_tok.convert_tokens_to_ids("<|im_end|>")
    header = qwen3_tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for k in range(len(ids) - len(header)):
        if ids[k : k + len(header)] == header:
            assert mask[k : k + len(header)] == [0] * len(header)  # header never trained
            assert mask[k + len(header)] == 1  # first assistant token trained
    ends = [k for k, t in enumerate(ids) if t == im_end]
    assert [mask[k] for k in ends] == [0, 0, 1, 0, 1]  # system, user, assistant, user, assistant


def test_itemic_marker_without_itemic_tokenizer_is_rejected_with_its_position(qwen3_enc):
    msgs = chat.validate_messages([{"role": "user", "content": "I liked <|sid_begin|> Alien."}], "t")
    with pytest.raises(DataError, match=r"messages\[0\]\.content.*<\|sid_begin\|> at character 8.*expand-vocab"):
        encode_conversation(qwen3_enc, msgs)


def test_no_think_answer_gets_empty_think_block_and_flags(qwen3_tok, qwen3_enc):
    msgs = chat.validate_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], "t")
    ids, mask = encode_conversation(qwen3_enc, msgs)
    assert qwen3_tok.decode([t for t, m in zip(ids, mask) if m]) == "<think>\n\n</think>\n\nHello.<|im_end|>"
    rng = random.Random(0)
    flagged = chat.apply_think_flags(msgs, "auto", 1.0, rng)
    assert flagged[0]["content"] == "Hi /no_think" and msgs[0]["content"] == "Hi"
    reasoning = chat.validate_messages(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nx\n</think>\n\nHello."}], "t"
    )
    assert chat.apply_think_flags(reasoning, "auto", 1.0, rng)[0]["content"] == "Hi /think"
    assert chat.apply_think_flags(reasoning, "keep", 1.0, rng)[0]["content"] == "Hi"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft")
    tiny.build_tokenizer(str(d / "tok"))
    tiny.build_model(str(d / "base"), str(d / "tok"), seed=0)
    rng = random.Random(0)
    rows = []
    for i in range(72):
        u = rng.randrange(16)
        extra = " ".join(f"because user{u} likes topic{u}" for _ in range(rng.randrange(3)))
        rows.append(
            tiny.chat_row(
                f"recommend a film for user{u}",
                f"here is topic{u} {extra}".strip(),
                system="You are helpful assistant." if i % 2 else None,
            )
        )
    tiny.write_jsonl(str(d / "train.jsonl"), rows[:56])
    tiny.write_jsonl(str(d / "valid.jsonl"), rows[56:])
    return d


def _overrides(d, run, *extra):
    return [
        f"model.path={d}/base",
        f"data.sources=[{{path: {d}/train.jsonl}}]",
        f"data.valid=[{{path: {d}/valid.jsonl}}]",
        f"logging.run_dir={d}/{run}",
        *extra,
    ]


def test_export_keeps_itemic_json_after_resumed_checkpoint_is_pruned(assets, tmp_path):
    """A resumed run loads its weights from a checkpoint that keep_last may prune before the final export;
    the export still carries itemic.json and the generation config (from model.path)."""
    import shutil

    from megarec.posttrain.models.policy import PolicyModel

    tiny.expand(str(assets / "base"), str(tmp_path / "expanded"), num_layers=2, codebook_size=4)
    model_path = str(tmp_path / "expanded")
    resumed_from = tmp_path / "step_0000002" / "hf"
    shutil.copytree(model_path, resumed_from)
    policy = PolicyModel(str(resumed_from), tiny_env(), asset_dirs=[model_path])
    shutil.rmtree(tmp_path / "step_0000002")
    policy.save(str(tmp_path / "hf"))
    assert (tmp_path / "hf" / "itemic.json").read_text() == (tmp_path / "expanded" / "itemic.json").read_text()
    assert (tmp_path / "hf" / "generation_config.json").is_file()


def test_user_and_system_tokens_never_contribute(assets):
    from megarec.posttrain.models.policy import PolicyModel

    policy = PolicyModel(str(assets / "base"), tiny_env(), micro_batch_size=4)
    tok = policy.tokenizer
    conv = [
        {"role": "system", "content": "You are helpful assistant."},
        {"role": "user", "content": "recommend a film for user3"},
        {"role": "assistant", "content": "here is topic3"},
        {"role": "user", "content": "and a song for user4"},
    ]
    enc = ChatEncoder(policy.tokenizer_path)
    ids, mask = encode_conversation(enc, chat.validate_messages(conv, "t"))
    batch = tiny_batch(tok, [(ids, mask)])
    # 1) the gradient reaching the logits is exactly zero at every position that predicts a non-assistant token
    logits = policy.model(input_ids=batch["input_ids"]).logits.detach().requires_grad_(True)
    from megarec.posttrain.models.logprobs import token_logprobs

    loss = -(token_logprobs(logits, batch["input_ids"]) * batch["loss_mask"]).sum()
    loss.backward()
    row_has_grad = logits.grad[0].abs().sum(-1) > 0  # position t predicts token t+1
    assert row_has_grad[:-1].tolist() == [bool(m) for m in mask[1:]]
    # 2) changing the (trailing) user turn leaves every parameter gradient bit-identical
    grads = []
    for text in ("and a song for user4", "or a video for user9"):
        conv[-1]["content"] = text
        ids2, mask2 = encode_conversation(enc, chat.validate_messages(conv, "t"))
        assert len(ids2) == len(ids) and mask2 == mask
        policy.setup_optimizer(tiny_optim(), 1)
        policy.prepare_for_training_step()
        policy.get_loss_and_metrics(tiny_batch(tok, [(ids2, mask2)]))
        grads.append([p.grad.clone() for p in policy.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def tiny_env():
    from megarec.runtime.distributed import single_process_env

    return single_process_env()


def tiny_optim():
    from megarec.posttrain.config import OptimizerSection

    return OptimizerSection(lr=1e-3, min_lr=1e-3)


def tiny_batch(tok, examples):
    from megarec.posttrain.batching import pad_batch

    return pad_batch([e[0] for e in examples], tok.pad_token_id, {"loss_mask": [e[1] for e in examples]})


def test_training_lowers_heldout_assistant_loss(assets):
    _, summary = tiny.run_trainer(
        "sft",
        _overrides(assets, "learn", "train.steps=24", "train.eval_interval=12", "train.eval_at_start=true"),
        recipe="configs/posttrain/sft_tiny_cpu.yaml",
    )
    vals = [v["val_loss"] for v in summary.validations]
    assert len(vals) == 3 and vals[2] < vals[1] < vals[0] - 0.5, vals
    # the loss counts assistant tokens only, normalised over the whole global batch
    assert all(h["loss_tokens"] < h["tokens"] / 2 for h in summary.history)
    assert summary.output and (assets / "learn" / "hf" / "model.safetensors").is_file()
    lines = [json.loads(x) for x in open(assets / "learn" / "metrics.jsonl")]
    assert [x["step"] for x in lines if "loss" in x] == list(range(1, 25))


def test_resume_continues_the_same_run(assets):
    full = _overrides(assets, "full", "train.steps=6", "checkpoint.save_interval=0", "train.eval_interval=3")
    _, a = tiny.run_trainer("sft", full, recipe="configs/posttrain/sft_tiny_cpu.yaml")
    part = _overrides(
        assets, "part", "train.steps=6", "checkpoint.save_interval=0", "train.eval_interval=3", "train.exit_interval=4"
    )
    _, b1 = tiny.run_trainer("sft", part, recipe="configs/posttrain/sft_tiny_cpu.yaml")
    assert b1.exit_reason == "exit_interval" and b1.final_step == 4 and b1.output is None
    _, b2 = tiny.run_trainer("sft", part[:-1], recipe="configs/posttrain/sft_tiny_cpu.yaml")
    assert b2.start_step == 4 and b2.exit_reason == "finished"
    losses = [h["loss"] for h in b1.history + b2.history]
    assert losses == pytest.approx([h["loss"] for h in a.history], abs=1e-6, rel=0)
    assert b2.validations[-1]["val_loss"] == pytest.approx(a.validations[-1]["val_loss"], abs=1e-6)


def test_overlong_conversation_is_a_clear_error(assets):
    with pytest.raises(
        DataError,
        match=r"train.jsonl: row \d+: conversation has \d+ tokens, more than "
        r"data.max_seq_length=10",
    ):
        tiny.run_trainer(
            "sft", _overrides(assets, "long", "data.max_seq_length=10"), recipe="configs/posttrain/sft_tiny_cpu.yaml"
        )
    _, s = tiny.run_trainer(
        "sft",
        _overrides(assets, "skip", "data.max_seq_length=40", "data.overlong=skip", "train.steps=1"),
        recipe="configs/posttrain/sft_tiny_cpu.yaml",
    )
    assert s.exit_reason == "finished"


def test_preprocessed_dataset_is_a_source(assets):
    """`megarec preprocess` output trains like the JSONL it came from (same ids, same masks)."""
    from megarec.data.preprocess import PreprocessOptions, run_preprocess

    prefix = str(assets / "pre")
    run_preprocess(
        PreprocessOptions(
            inputs=[str(assets / "train.jsonl")], tokenizer=str(assets / "base"), output_prefix=prefix, progress=False
        )
    )
    jsonl, _ = tiny.run_trainer(
        "sft", _overrides(assets, "from_jsonl", "train.steps=2"), recipe="configs/posttrain/sft_tiny_cpu.yaml"
    )
    indexed, s = tiny.run_trainer(
        "sft",
        _overrides(assets, "from_indexed", "train.steps=2", f"data.sources=[{{path: {prefix}_text_document}}]"),
        recipe="configs/posttrain/sft_tiny_cpu.yaml",
    )
    a, b = jsonl.sources[0].rows, indexed.sources[0].rows
    assert len(a) == len(b) == 56 and all(a[i] == b[i] for i in range(len(a)))
    assert s.exit_reason == "finished"


def test_parquet_chat_source(assets):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(x) for x in open(assets / "train.jsonl")]
    pq.write_table(pa.Table.from_pylist(rows), str(assets / "train.parquet"))
    trainer, s = tiny.run_trainer(
        "sft",
        _overrides(
            assets, "parquet", "train.steps=1", "data.valid=[]", f"data.sources=[{{path: {assets}/train.parquet}}]"
        ),
        recipe="configs/posttrain/sft_tiny_cpu.yaml",
    )
    assert len(trainer.sources[0].rows) == 56 and s.exit_reason == "finished"


def _plain_rows():
    return [
        {
            "segments": [{"type": "text", "text": f"user{u} likes topic{u} and topic{(u + 1) % 16}"}],
            "metadata": {"task": "user_sequence" if u % 2 else "item_caption"},
        }
        for u in range(16)
    ]


def test_plain_documents_are_a_rehearsal_source_with_their_loss_weight(assets):
    """Pre-training samples mixed into SFT: only the listed tasks, the preprocessing encoder's ids, every
    token after the first trained (EOD included, as in pre-training), each scaled by the source's loss_weight."""
    from megarec.data.encoder import DocumentEncoder

    rows = _plain_rows()
    tiny.write_jsonl(str(assets / "pretrain.jsonl"), rows)
    sources = (
        f"data.sources=[{{path: {assets}/train.jsonl, weight: 0.75}}, {{name: rehearsal, path: "
        f"{assets}/pretrain.jsonl, weight: 0.25, loss_weight: 0.1, tasks: [user_sequence]}}]"
    )
    trainer, s = tiny.run_trainer(
        "sft", _overrides(assets, "rehearsal", "train.steps=2", sources), recipe="configs/posttrain/sft_tiny_cpu.yaml"
    )
    rehearsal = trainer.sources[1]
    assert rehearsal.name == "rehearsal" and len(rehearsal.rows) == 8
    expected = DocumentEncoder(str(assets / "base"), "segments").encode([(1, rows[1])])
    ids, mask = rehearsal.rows[0]
    assert ids == expected.ids.tolist() and ids[-1] == trainer.policy.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert mask == [0] + [0.1] * (len(ids) - 1)
    assert trainer.sources[0].rows[0][1] == [int(m) for m in trainer.sources[0].rows[0][1]]  # chat rows: 0/1
    assert s.exit_reason == "finished"


def test_loss_is_the_mask_weighted_mean_over_the_batch(assets):
    """With a loss_weight w on one example the loss is (Σ nll_a + w Σ nll_b) / (n_a + w n_b), exactly the
    weighted mean (fp32 sums of a few dozen terms: relative 1e-6)."""
    from megarec.posttrain.models.policy import PolicyModel

    policy = PolicyModel(str(assets / "base"), tiny_env(), micro_batch_size=1)
    enc = ChatEncoder(policy.tokenizer_path)
    a = encode_conversation(
        enc, chat.validate_messages(tiny.chat_row("recommend a film for user1", "here is topic1")["messages"], "a")
    )
    ((_, b_ids, b_mask),) = enc.encode([(1, _plain_rows()[3])], "segments")[0]
    sums, counts = [], []
    for ids, mask in (a, (b_ids, b_mask)):
        m = policy.get_loss_and_metrics(tiny_batch(policy.tokenizer, [(ids, mask)]), forward_only=True)
        sums.append(m["loss"] * m["loss_tokens"])
        counts.append(m["loss_tokens"])
    w = 0.1
    both = policy.get_loss_and_metrics(
        tiny_batch(policy.tokenizer, [a, (b_ids, [w * x for x in b_mask])]), forward_only=True
    )
    assert both["loss_tokens"] == pytest.approx(counts[0] + w * counts[1], rel=1e-6)
    assert both["loss"] == pytest.approx((sums[0] + w * sums[1]) / (counts[0] + w * counts[1]), rel=1e-6)


def test_bad_rehearsal_sources_are_clear_errors(assets):
    rows = _plain_rows()
    tiny.write_jsonl(str(assets / "mixed.jsonl"), [rows[0], tiny.chat_row("recommend a film for user1", "topic1")])
    with pytest.raises(DataError, match=r"mixed.jsonl: row 2: a messages row in a file of segments rows"):
        tiny.run_trainer(
            "sft",
            _overrides(assets, "mixed", "train.steps=1", f"data.sources=[{{path: {assets}/mixed.jsonl}}]"),
            recipe="configs/posttrain/sft_tiny_cpu.yaml",
        )
    tiny.write_jsonl(str(assets / "captions.jsonl"), rows[::2])
    with pytest.raises(DataError, match=r"captions.jsonl: no rows with metadata.task in \['user_sequence'\]"):
        tiny.run_trainer(
            "sft",
            _overrides(
                assets,
                "no_task",
                "train.steps=1",
                f"data.sources=[{{path: {assets}/captions.jsonl, tasks: [user_sequence]}}]",
            ),
            recipe="configs/posttrain/sft_tiny_cpu.yaml",
        )


def test_export_best_is_the_policy_of_the_best_validation(assets):
    """checkpoint.export=best exports the policy of the best validation, here step 0 (ranking by the highest
    val_loss, which training lowers): the exported weights are model.path's, bit for bit, while the last step
    differs; one best directory is kept, named by best.json."""
    from megarec.common.hfdir import HFWeights

    run = _overrides(
        assets,
        "best",
        "train.steps=4",
        "train.eval_interval=2",
        "train.eval_at_start=true",
        "checkpoint.export=best",
        "checkpoint.best_metric=val_loss",
        "checkpoint.best_mode=max",
    )
    trainer, s = tiny.run_trainer("sft", run, recipe="configs/posttrain/sft_tiny_cpu.yaml")
    vals = [v["val_loss"] for v in s.validations]
    assert len(vals) == 3 and vals[0] == max(vals)
    assert json.loads((assets / "best" / "best" / "best.json").read_text()) == {
        "step": 0,
        "metric": "val_loss",
        "value": vals[0],
    }
    assert sorted(p.name for p in (assets / "best" / "best").iterdir()) == ["best.json", "step_0000000"]
    exported, base = HFWeights(s.output), HFWeights(str(assets / "base"))
    last = HFWeights(str(assets / "best" / "checkpoints" / "iter_0000004" / "hf"))
    assert sorted(exported.names()) == sorted(base.names())
    assert all(torch.equal(exported.get(n), base.get(n)) for n in base.names())
    assert not all(torch.equal(last.get(n), base.get(n)) for n in base.names())
    assert (Path(s.output) / "tokenizer_config.json").is_file()


def test_export_best_needs_a_metric_the_run_reports(assets):
    with pytest.raises(ConfigError, match=r"checkpoint.best_metric='val_reward' is not a validation metric"):
        tiny.run_trainer(
            "sft",
            _overrides(
                assets,
                "best_bad",
                "train.steps=2",
                "train.eval_interval=1",
                "checkpoint.export=best",
                "checkpoint.best_metric=val_reward",
            ),
            recipe="configs/posttrain/sft_tiny_cpu.yaml",
        )


def test_checkpoint_write_refused_by_the_file_system_keeps_the_previous_checkpoint(assets):
    """A full disk (here: a file-size limit below the model file, so the OS refuses the write with EFBIG) while
    saving step 4 is one CheckpointWriteError naming the step and the checkpoint still in force; the partial
    directory is removed and the pointer and step 2 are untouched, so a resume after freeing space works."""
    import resource

    from megarec.common.errors import CheckpointWriteError

    run = _overrides(assets, "full_disk", "train.steps=2", "checkpoint.save_interval=2", "train.eval_interval=0")
    tiny.run_trainer("sft", run, recipe="configs/posttrain/sft_tiny_cpu.yaml")
    ckpts = assets / "full_disk" / "checkpoints"
    step2 = ckpts / "iter_0000002"
    before = {p: p.read_bytes() for p in step2.rglob("*") if p.is_file()}
    model_bytes = (step2 / "hf" / "model.safetensors").stat().st_size

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (model_bytes // 2, hard))  # Python ignores SIGXFSZ: writes fail
    try:
        with pytest.raises(CheckpointWriteError) as err:
            tiny.run_trainer(
                "sft",
                [*run[:-3], "train.steps=4", "checkpoint.save_interval=2", "train.eval_interval=0"],
                recipe="configs/posttrain/sft_tiny_cpu.yaml",
            )
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(err.value)
    assert "cannot write checkpoint step 4" in message and f"still {step2}" in message, message
    assert "File too large" in message or "refused a write" in message, message
    assert sorted(p.name for p in ckpts.iterdir()) == ["iter_0000002", "latest_checkpointed_iteration.txt"]
    assert (ckpts / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert {p: p.read_bytes() for p in step2.rglob("*") if p.is_file()} == before
