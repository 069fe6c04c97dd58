"""`megarec evaluate` on a synthetic build and a tiny random expanded checkpoint: every task runs, the
outputs are consistent and in range, finished tasks are resumed, judges behave."""

from __future__ import annotations

import json
import math

import pytest
import torch

from megarec.common.errors import ConfigError, MegarecError

from conftest import run_cli


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from megarec.common.itemic import read_codes_table

    import posttrain_tiny as tiny

    d = tmp_path_factory.mktemp("evaluate")
    r = run_cli(["data", "build", "--source", "synthetic", "--out", str(d / "data"), "--num-users", "60"])
    assert r.returncode == 0, r.stderr[-2000:]
    codes = read_codes_table(str(d / "data" / "codes.csv")).as_dict()
    k = max(max(c) for c in codes.values()) + 1
    tiny.build_tokenizer(str(d / "tok"))
    tiny.build_model(str(d / "base"), str(d / "tok"), seed=0)
    tiny.expand(str(d / "base"), str(d / "model"), num_layers=3, codebook_size=k)
    (d / "general.txt").write_text("the film is good . you will like this .\nhello world and the song is fun\n")
    return d


def _run(d, out, *extra):
    return run_cli(
        [
            "evaluate",
            "--hf-dir",
            str(d / "model"),
            "--data",
            str(d / "data"),
            "--out",
            str(out),
            "--max-samples",
            "5",
            "--num-beams",
            "8",
            "--ks",
            "1,5,8",
            "--max-new-tokens",
            "8",
            "--threads",
            "1",
            *extra,
        ]
    )


def test_evaluate_all_tasks_report_and_resume(assets):
    d, out = assets, assets / "out"
    r = _run(d, out, "--general", str(d / "general.txt"), "--lm-eval-tasks", "hellaswag")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    tasks = res["tasks"]
    assert {
        "short_video_rec",
        "ad_rec",
        "product_rec",
        "label_conditional_rec",
        "interactive_rec",
        "label_prediction",
        "item_understanding",
        "explanation",
    } <= set(tasks)
    items = {json.loads(line)["item_id"]: json.loads(line)["domain"] for line in open(d / "data" / "items.jsonl")}
    for name, t in tasks.items():
        assert t["n"] == 5
        if t["kind"] == "rec":
            m = t["metrics"]
            for k in (1, 5, 8):
                for key in ("pass", "position1_pass", "recall", "ndcg", "sid_pass"):
                    assert 0.0 <= m[f"{key}@{k}"] <= 1.0
                assert m[f"position1_pass@{k}"] <= m[f"pass@{k}"]
            assert m["pass@1"] <= m["pass@5"] <= m["pass@8"]
            full = json.loads((out / "tasks" / f"{name}.json").read_text())["result"]
            for s in full["samples"]:  # candidates are real items of the target's domain, ranked by log-prob
                assert s["top10"] and len(set(s["top10"])) == len(s["top10"])
                assert {items[i] for i in s["top10"]} == {items[s["targets"][0]]}
                assert s["top10_logprob"] == sorted(s["top10_logprob"], reverse=True)
            hits = [float(any(i in s["targets"] for i in s["top10"][:5])) for s in full["samples"]]
            assert m["pass@5"] == pytest.approx(sum(hits) / len(hits))
        elif t["kind"] == "label":
            assert t["metrics"]["auc"] is None or 0.0 <= t["metrics"]["auc"] <= 1.0
            assert 0.0 <= t["metrics"]["accuracy"] <= 1.0
        else:
            assert "not an LLM judge" in t["judge"] and not t["llm_judge"]
            assert 0.0 <= t["metrics"]["judge_score"] <= 1.0
    assert res["general"]["perplexity"]["perplexity"] > 1.0
    assert "skipped" in res["general"]["lm_eval"] or "results" in res["general"]["lm_eval"]
    report = (out / "report.md").read_text()
    assert "lexical-overlap fallback" in report and "## Recommendation tasks" in report and "AUC" in report
    for png in ("tasks.png", "recall_at_k.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # resume: finished tasks are skipped; a removed one is recomputed
    (out / "tasks" / "ad_rec.json").unlink()
    r = _run(d, out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("already done") == len(tasks) - 1 and "ad_rec: pass@8" in r.stdout
    # a setting that changes the result is not resumed
    r = _run(d, out, "--tasks", "ad_rec", "--num-beams", "10")
    assert r.returncode == 0 and "already done" not in r.stdout


def test_label_prediction_score_matches_manual(assets):
    """p(yes)/(p(yes)+p(no)) of the first answer token, recomputed by hand for one sample."""
    from megarec.eval.hf_model import chat_prompt, load_hf_model
    from megarec.eval.recif.label_task import evaluate_label_task, first_token_id
    from megarec.eval.recif.samples import load_samples

    loaded = load_hf_model(str(assets / "model"))
    samples = load_samples(str(assets / "data"))["label_prediction"][:3]
    res = evaluate_label_task(loaded, samples, batch_size=2)
    s = samples[1]
    ids = loaded.tokenizer(chat_prompt(loaded.tokenizer, s["messages"][:-1]), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1]
    ch = s["metadata"]["answer_choices"]
    y, n = (logits[first_token_id(loaded.tokenizer, ch[c])] for c in ("positive", "negative"))
    assert res["samples"][1]["p_yes"] == pytest.approx(float(torch.sigmoid(y - n)), abs=1e-5)


def test_judges():
    from megarec.eval.recif.judges import LexicalOverlapJudge, OpenAIJudge, make_judge, rouge_l_f1, unigram_f1

    assert rouge_l_f1("a b c d", "a c d e") == pytest.approx(0.75)
    assert unigram_f1("a a b", "a b b") == pytest.approx(2 / 3)
    assert LexicalOverlapJudge().score("q", "same words", "same words") == 1.0
    j = make_judge("openai", url="http://127.0.0.1:9/v1", model="judge-7b")
    assert isinstance(j, OpenAIJudge) and j.url.endswith("/v1/chat/completions") and j.is_llm
    assert OpenAIJudge.parse("Score: 10") == 1.0 and OpenAIJudge.parse("1") == 0.0
    assert math.isclose(OpenAIJudge.parse("5.5"), 0.5)
    with pytest.raises(MegarecError):
        OpenAIJudge.parse("great answer")
    with pytest.raises(ConfigError):
        make_judge("openai")


def test_evaluate_errors(assets, tmp_path):
    r = _run(assets, tmp_path / "o", "--tasks", "no_such_task")
    assert r.returncode == 2 and "no_such_task" in r.stderr and "Traceback" not in r.stderr
    r = _run(assets, tmp_path / "o", "--ks", "1,64")
    assert r.returncode == 2 and "beam" in r.stderr
