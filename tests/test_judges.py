"""Judges over the real wire (an OpenAI-compatible server on 127.0.0.1), AlpacaEval annotation through
alpaca_eval's annotator, MT-Bench grading, and the combined performance."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from divcore.errors import InputError
from eval import alpaca_eval as ae
from eval import mt_bench as mt
from eval.benchmarks import check_eval_config
from eval.combined import combine_performance
from eval.judges import JudgeConfig, JudgeError, make_judge
from eval.reference_nll import load_reference
from tests.conftest import SHARED
from tests.helpers import KEY_ENV
from tests.judge_server import JudgeServer

AE_REF = SHARED / "data" / "alpaca_eval" / "gpt4_1106_preview.json"
MT_DIR = SHARED / "data" / "mt_bench"


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    with JudgeServer(lambda body: "Short explanation. Rating: [[6]]", timeout_sleep=1.5) as srv:
        yield srv


def _judge(server: JudgeServer, model: str = "judge-a", retries: int = 3, concurrency: int = 1, **extra):
    return make_judge({"kind": "openai", "model": model, "base_url": server.base_url, "api_key_env": KEY_ENV,
                       "timeout_s": 0.5, "max_retries": retries, "backoff_s": 0.0, "concurrency": concurrency}
                      | extra, "unused")


def test_endpoint_judge_retries_faults_then_answers(server):
    server.faults = ["timeout", "500", "malformed"]
    judge = _judge(server, retries=4)
    reply = judge.chat([{"role": "user", "content": "rate this"}], max_tokens=16)
    assert reply["text"] == "Short explanation. Rating: [[6]]" and len(server.requests) == 4
    assert server.requests[-1]["messages"] == [{"role": "user", "content": "rate this"}]
    assert server.requests[-1]["temperature"] == 0.0 and server.requests[-1]["model"] == "judge-a"


@pytest.mark.parametrize("faults", [["timeout"] * 3, ["500"] * 3, ["malformed"] * 3, ["no_choices"] * 3])
def test_endpoint_judge_faults_surface_as_errors(server, faults):
    server.faults = list(faults)
    with pytest.raises(JudgeError, match="failed 3 times"):
        _judge(server).chat([{"role": "user", "content": "x"}], max_tokens=4)
    assert len(server.requests) == 3


@pytest.mark.parametrize("cfg, message", [
    ({"kind": "openai", "model": "m", "api_key_env": KEY_ENV}, "base_url is empty"),
    ({"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1"}, "api_key_env is empty"),
    ({"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "api_key_env": "DIVBENCH_UNSET_VAR"},
     "DIVBENCH_UNSET_VAR .* is not set"),
    ({"kind": "openai", "model": "m", "base_url": "http://x/v1", "api_key": "sk-123"}, "never put an API key"),
    ({"kind": "gpt", "model": "m"}, "unknown eval.judge.kind 'gpt'"),
    ({"kind": "local", "model": ""}, "model is empty"),
    ({"kind": "local", "model": "m", "temprature": 0}, "unknown field"),
])
def test_judge_config_bad_input(cfg, message, monkeypatch):
    monkeypatch.delenv("DIVBENCH_UNSET_VAR", raising=False)
    with pytest.raises(InputError, match=message):
        JudgeConfig.from_dict(cfg)


def test_prefill_needs_a_local_judge(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k")
    cfg = {"alpaca_eval": {"enabled": False}, "mt_bench": {"enabled": True, "judge_prefill": "Rating: [["},
           "performance": {"method": "raw", "columns": ["mt_bench_score"]},
           "judge": {"kind": "openai", "model": "m", "base_url": "http://x/v1", "api_key_env": KEY_ENV}}
    with pytest.raises(InputError, match="judge_prefill"):
        check_eval_config(cfg)


def _outputs(reference: list[dict], name: str = "tiny") -> list[dict]:
    return [{"instruction": r["instruction"], "output": f"answer {i}: " + r["instruction"][::-1], "generator": name}
            for i, r in enumerate(reference)]


def test_alpaca_eval_annotation_through_alpaca_eval_with_per_judge_cache(server, tmp_path):
    reference = load_reference(AE_REF, 3, 0)
    server.logprobs = lambda body: [("m", -0.2), ("M", -1.8)]  # the judge always prefers identifier m
    annotations = ae.annotate(_outputs(reference), reference, _judge(server), "weighted_alpaca_eval_gpt4_turbo",
                              tmp_path)
    assert len(server.requests) == 3 and all(r["logprobs"] and r["top_logprobs"] == 5 for r in server.requests)
    prompt = server.requests[0]["messages"][-1]["content"]
    assert '"model_identifier": "m"' in prompt  # alpaca_eval's own template
    assert sorted(r["instruction"] for r in reference) == sorted(
        next(r["instruction"] for r in reference if r["instruction"] in q["messages"][-1]["content"])
        for q in server.requests)
    p_m = np.exp(-0.2) / (np.exp(-0.2) + np.exp(-1.8))
    # alpaca_eval randomises which output is shown as m; the preference is P(m) or 1 - P(m), mapped to [1, 2]
    for a in annotations:
        assert min(abs(a["preference"] - (1 + p)) for p in (p_m, 1 - p_m)) < 1e-9
        assert a["generator_2"] == "tiny" and "judge-a" in a["judge"]
    summary = ae.alpaca_eval_summary(annotations)
    assert summary["n_total"] == 3 and summary["n_failed_annotations"] == 0
    assert summary["length_controlled_winrate"] is None and "df_gamed" in summary["length_controlled_note"]

    again = ae.annotate(_outputs(reference), reference, _judge(server), "weighted_alpaca_eval_gpt4_turbo", tmp_path)
    assert len(server.requests) == 3  # served from the judge's cache
    assert [a["preference"] for a in again] == pytest.approx([a["preference"] for a in annotations])
    ae.annotate(_outputs(reference), reference, _judge(server, model="judge-b"), "weighted_alpaca_eval_gpt4_turbo",
                tmp_path)
    assert len(server.requests) == 6  # a re-pointed judge never reuses judge-a's annotations


def test_alpaca_eval_judge_failure_is_an_error_not_a_loss(server, tmp_path):
    reference = load_reference(AE_REF, 2, 0)
    server.faults = ["500"] * 10
    with pytest.raises(JudgeError):
        ae.annotate(_outputs(reference), reference, _judge(server, retries=2), "alpaca_eval_gpt4", tmp_path)


def test_model_outputs_must_match_the_805_instructions(tmp_path):
    reference = load_reference(AE_REF, None, 0)
    assert len(reference) == 805
    good = _outputs(reference)
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(good))
    assert ae.read_model_outputs(path, reference) == good
    cases = {"missing": good[:-1], "extra": good + [{"instruction": "new?", "output": "x"}],
             "reordered": [good[1], good[0]] + good[2:],
             "empty": good[:5] + [good[5] | {"output": "  \n"}] + good[6:]}
    messages = {"missing": "1 reference instruction", "extra": "not in the reference", "reordered": "reordered",
                "empty": "empty output.*record 5"}
    for case, rows in cases.items():
        path.write_text(json.dumps(rows))
        with pytest.raises(InputError, match=messages[case]):
            ae.read_model_outputs(path, reference)


@pytest.mark.parametrize("text, rating", [("Rating: [[7]]", 7.0), ("[[8.5]] overall", 8.5), ("Rating: [3]", 3.0),
                                          ("I would give it a seven.", -1.0), ("[[11]]", 11.0), ("[[0]]", 0.0),
                                          ("", -1.0)])
def test_mt_bench_rating_parsing(text, rating):
    assert mt.parse_rating(text) == rating


def test_mt_bench_judge_prompts_follow_fastchat():
    questions, prompts, refs = mt.load_mt_bench(MT_DIR)
    assert len(questions) == 80 and len({q["category"] for q in questions}) == 8
    math_q = next(q for q in questions if q["category"] == "math")
    writing_q = next(q for q in questions if q["category"] == "writing")
    answer = {"choices": [{"turns": ["first answer", "second answer"]}]}
    name, messages = mt.judge_prompt(math_q, answer, prompts, refs, turn=1)
    assert name == "single-math-v1" and refs[math_q["question_id"]][0] in messages[1]["content"]
    name, messages = mt.judge_prompt(writing_q, answer, prompts, refs, turn=2)
    assert name == "single-v1-multi-turn" and "second answer" in messages[1]["content"]
    assert messages[0]["content"] == prompts["single-v1-multi-turn"]["system_prompt"]
    sample, _, _ = mt.load_mt_bench(MT_DIR, n_questions=8, seed=3)
    assert len({q["category"] for q in sample}) == 8  # a small sample covers every category


def test_mt_bench_judging_counts_failures_and_resumes(server, tmp_path):
    questions, prompts, refs = mt.load_mt_bench(MT_DIR, n_questions=3, seed=0)
    answers = [{"question_id": q["question_id"], "choices": [{"turns": ["a1", "a2"]}]} for q in questions]
    # asked in order q1 turn 1, q1 turn 2, q2 turn 1, ...
    replies = iter(["Rating: [[9]]", "no verdict here", "Rating: [[4]]", "Rating: [[0]]", "[[10]]", "[5]"])
    server.reply = lambda body: next(replies)
    cache = tmp_path / "judge" / "judgments.jsonl"
    judgments = mt.judge_answers(_judge(server), questions, answers, prompts, refs, cache)
    summary = mt.mt_bench_summary(judgments)
    assert summary["n_judgments"] == 6 and summary["n_failed"] == 1
    assert summary["score"] == pytest.approx((9 + 4 + 0 + 10 + 5) / 5)  # FastChat keeps [[0]], drops only -1
    assert summary["turn_1"] == pytest.approx((9 + 4 + 10) / 3) and summary["turn_2"] == pytest.approx((0 + 5) / 2)
    # a kill mid-write leaves a cut-off last line: it is dropped and only that item is asked again
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])
    server.reply = lambda body: "[5]"
    again = mt.judge_answers(_judge(server), questions, answers, prompts, refs, cache)
    assert len(server.requests) == 7 and [j["score"] for j in again] == [j["score"] for j in judgments]
    with pytest.raises(InputError, match="unparseable"):
        mt.mt_bench_summary([j | {"score": -1.0} for j in judgments])


def test_combined_performance_is_the_mean_z_score():
    runs = pd.DataFrame({"ae": [10.0, 20.0, 30.0], "mt": [5.0, 5.0, 8.0], "flat": [1.0, 1.0, 1.0]})
    z_ae = np.array([-1, 0, 1]) / np.sqrt(2 / 3)
    z_mt = (np.array([5, 5, 8]) - 6) / np.sqrt(2)
    np.testing.assert_allclose(combine_performance(runs, ["ae", "mt"]), (z_ae + z_mt) / 2)
    np.testing.assert_allclose(combine_performance(runs, ["ae", "flat"]), z_ae)  # constant benchmark left out
    assert combine_performance(runs, ["flat"]).isna().all()  # undefined, never 0
    np.testing.assert_allclose(combine_performance(runs, ["mt"], "raw"), runs["mt"])
    with pytest.raises(InputError, match="not among"):
        combine_performance(runs, ["mt_bench_score"])


@pytest.mark.parametrize("perf, message", [
    ({"method": "median", "columns": ["mt_bench_score"]}, "method must be one of"),
    ({"method": "zscore_mean", "columns": ["alpaca_eval_win_rate"]}, "not produced by the enabled benchmarks"),
    ({"method": "zscore_mean", "columns": []}, "columns is empty"),
])
def test_performance_config_is_checked_before_any_work(perf, message):
    cfg = {"alpaca_eval": {"enabled": False}, "mt_bench": {"enabled": True}, "performance": perf,
           "judge": {"kind": "local", "model": "packaged:smollm2"}}
    with pytest.raises(InputError, match=message):
        check_eval_config(cfg)
    check_eval_config(cfg | {"performance": {"method": "raw", "columns": ["mt_bench_writing"]}})
