"""Judging at scale over the real wire (an OpenAI-compatible server on 127.0.0.1): requests in flight, results
independent of concurrency, Retry-After, refusals, costs, and processes sharing one judge cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from divcore.errors import InputError
from eval import alpaca_eval as ae
from eval import mt_bench as mt
from eval.benchmarks import judge_benchmarks
from eval.judges import JudgeConfig, JudgeError, judge_many, make_judge
from eval.reference_nll import load_reference
from experiments.engine.config import PROJECT_ROOT
from tests.conftest import SHARED
from tests.helpers import KEY_ENV
from tests.judge_server import JudgeServer

AE_REF = SHARED / "data" / "alpaca_eval" / "gpt4_1106_preview.json"
MT_DIR = SHARED / "data" / "mt_bench"


def _rating(body: dict) -> str:
    """A verdict that depends only on what the judge is shown (so order and concurrency cannot change it)."""
    content = body["messages"][-1]["content"]
    return f"Fine. Rating: [[{1 + sum(map(ord, content)) % 10}]]" if len(content) % 5 else "no verdict"


def _logprobs(body: dict) -> list[tuple[str, float]]:
    return [("m", -(sum(map(ord, body["messages"][-1]["content"])) % 7) / 3), ("M", -1.0)]


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    with JudgeServer(_rating, logprobs=_logprobs) as srv:
        yield srv


def _judge_cfg(server: JudgeServer, **extra) -> dict:
    return {"kind": "openai", "model": "judge-x", "base_url": server.base_url, "api_key_env": KEY_ENV,
            "timeout_s": 5.0, "max_retries": 3, "backoff_s": 0.0} | extra


def _mt_inputs(n: int):
    questions, prompts, refs = mt.load_mt_bench(MT_DIR, n_questions=n, seed=0)
    answers = [{"question_id": q["question_id"], "choices": [{"turns": [f"a1 {q['question_id']}" * 3, "a2"]}]}
               for q in questions]
    return questions, prompts, refs, answers


def test_concurrency_keeps_requests_in_flight_and_results_identical(server, tmp_path):
    questions, prompts, refs, answers = _mt_inputs(8)
    server.latency = 0.3
    seq = mt.judge_answers(make_judge(_judge_cfg(server, concurrency=1), ""), questions, answers, prompts, refs,
                           tmp_path / "a" / "judgments.jsonl")
    assert server.max_in_flight == 1
    start = time.monotonic()
    par = mt.judge_answers(make_judge(_judge_cfg(server, concurrency=8), ""), questions, answers, prompts, refs,
                           tmp_path / "b" / "judgments.jsonl")
    assert server.max_in_flight >= 8 and time.monotonic() - start < 16 * 0.3 / 2
    assert len(server.requests) == 32
    strip = [{k: v for k, v in j.items()} for j in seq]
    assert [{k: v for k, v in j.items()} for j in par] == strip  # same judgments, same order
    assert any(j["score"] == -1 for j in par) and any(j["score"] != -1 for j in par)


def test_judge_many_keeps_input_order_and_reports_each_result():
    seen = []
    out = judge_many(lambda x: (time.sleep(0.01 * (5 - x)), x * x)[1], list(range(6)), 4,
                     on_result=lambda i, r: seen.append(i))
    assert out == [0, 1, 4, 9, 16, 25] and sorted(seen) == list(range(6))
    with pytest.raises(ZeroDivisionError):
        judge_many(lambda x: 1 / x, [1, 0, 2], 2)


def test_rate_limit_with_retry_after_is_recovered(server):
    server.faults, server.retry_after = ["429", "429"], 1
    judge = make_judge(_judge_cfg(server), "")
    start = time.monotonic()
    reply = judge.chat([{"role": "user", "content": "rate this answer"}], max_tokens=16)
    assert reply["text"].startswith("Fine") and len(server.requests) == 3
    waits = np.diff(server.times)
    assert (waits >= 0.95).all() and time.monotonic() - start >= 2.0  # the server's Retry-After, not a backoff
    assert reply["usage"] == {"prompt_tokens": 4, "completion_tokens": len(reply["text"]) // 4}


@pytest.mark.parametrize("code, fix", [("404", "does not serve this model"), ("400", "logprobs"),
                                       ("401", KEY_ENV)])
def test_refusals_are_judge_errors_naming_model_and_fix(server, code, fix):
    server.faults = [code] * 5
    with pytest.raises(JudgeError, match=f"judge-x.*HTTP {code}.*Fix:.*{fix}"):
        make_judge(_judge_cfg(server), "").chat([{"role": "user", "content": "x"}], max_tokens=4)
    assert len(server.requests) == 1  # refused for good: never retried


@pytest.mark.parametrize("extra, message", [
    ({"concurrency": 0}, "concurrency must be an integer >= 1"),
    ({"concurrency": -3}, "concurrency must be an integer >= 1"),
    ({"price": {"input_usd_per_mtok": -1.0, "output_usd_per_mtok": 2.0}}, "input_usd_per_mtok must be a non-neg"),
    ({"price": {"input_usd_per_mtok": 1.0}}, "price must give exactly"),
])
def test_bad_judge_settings(server, extra, message):
    with pytest.raises(InputError, match=message):
        JudgeConfig.from_dict(_judge_cfg(server, **extra))


def test_costs_are_recorded_per_judgment_and_summed(server, tmp_path):
    price = {"input_usd_per_mtok": 2.0, "output_usd_per_mtok": 8.0}
    judge = make_judge(_judge_cfg(server, price=price, concurrency=4), "")
    reference = load_reference(AE_REF, 3, 0)
    outputs = [{"instruction": r["instruction"], "output": f"answer {i}", "generator": "m"}
               for i, r in enumerate(reference)]
    annotations = ae.annotate(outputs, reference, judge, "weighted_alpaca_eval_gpt4_turbo", tmp_path)
    def instruction(body: dict) -> str:
        return next(r["instruction"] for r in reference if r["instruction"] in body["messages"][-1]["content"])

    for a, request in zip(sorted(annotations, key=lambda a: a["instruction"]), sorted(server.requests, key=instruction),
                          strict=True):
        n_in = sum(len(m["content"]) for m in request["messages"]) // 4
        usage = ae.annotation_usage(a)
        assert usage["prompt_tokens"] == n_in and usage["completion_tokens"] >= 1
        assert a["preference_price_per_example"] == pytest.approx((n_in * 2 + usage["completion_tokens"] * 8) / 1e6)

    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "alpaca_eval_outputs.json").write_text(json.dumps(outputs))
    questions, _, _, answers = _mt_inputs(2)
    (gen / "mt_bench_answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    cfg = {"judge": _judge_cfg(server, price=price),
           "alpaca_eval": {"enabled": True, "reference_path": str(AE_REF), "n_examples": 3, "seed": 0,
                           "annotator": "weighted_alpaca_eval_gpt4_turbo"},
           "mt_bench": {"enabled": True, "data_dir": str(MT_DIR), "n_questions": 2, "seed": 0,
                        "judge_max_tokens": 64}}
    row = judge_benchmarks(gen, cfg, str(tmp_path), tmp_path)
    judgments = [json.loads(line) for line in (tmp_path / "mt_bench_judgments.jsonl").read_text().splitlines()]
    ann = json.loads((tmp_path / "alpaca_eval_annotations.json").read_text())
    tokens_in = sum(j["prompt_tokens"] for j in judgments) + sum(ae.annotation_usage(a)["prompt_tokens"] for a in ann)
    tokens_out = (sum(j["completion_tokens"] for j in judgments)
                  + sum(ae.annotation_usage(a)["completion_tokens"] for a in ann))
    assert row["judge_input_tokens"] == tokens_in and row["judge_output_tokens"] == tokens_out
    assert row["judge_usd"] == pytest.approx((tokens_in * 2 + tokens_out * 8) / 1e6)
    assert "not by the published leaderboards' judges" in row["judge_leaderboard_note"]


WORKER = """
import json, sys
from eval import alpaca_eval as ae, mt_bench as mt
from eval.judges import make_judge
from eval.reference_nll import load_reference
url, cache, ae_ref, mt_dir = sys.argv[1:5]
judge = make_judge({"kind": "openai", "model": "judge-x", "base_url": url, "api_key_env": "DIVBENCH_TEST_KEY",
                    "timeout_s": 10, "concurrency": 4}, cache)
questions, prompts, refs = mt.load_mt_bench(mt_dir, n_questions=6, seed=0)
answers = [{"question_id": q["question_id"], "choices": [{"turns": [f"a1 {q['question_id']}" * 3, "a2"]}]}
           for q in questions]
judgments = mt.judge_answers(judge, questions, answers, prompts, refs, ae.judge_dir(cache, judge) / "mt" / "j.jsonl")
reference = load_reference(ae_ref, 6, 0)
outputs = [{"instruction": r["instruction"], "output": f"answer {i}", "generator": "m"}
           for i, r in enumerate(reference)]
annotations = ae.annotate(outputs, reference, judge, "weighted_alpaca_eval_gpt4_turbo", cache)
print(json.dumps({"mt": [j["score"] for j in judgments], "ae": [a["preference"] for a in annotations]}))
"""


@pytest.mark.slow
def test_processes_judging_into_one_cache(server, tmp_path):
    server.latency = 0.2
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), OMP_NUM_THREADS="1")
    args = [sys.executable, "-c", WORKER, server.base_url, str(tmp_path / "cache"), str(AE_REF), str(MT_DIR)]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    # the second read the first's annotations back from alpaca_eval's JSON cache (15 significant digits)
    assert results[0]["mt"] == results[1]["mt"] and results[0]["ae"] == pytest.approx(results[1]["ae"], rel=1e-12)
    asked = len(server.requests)
    assert asked == 12 + 6  # the twin waited for the first and reused every judgment
    third = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    again = json.loads(third.stdout.strip().splitlines()[-1])
    assert len(server.requests) == asked and again["mt"] == results[0]["mt"]
    assert again["ae"] == pytest.approx(results[0]["ae"], rel=1e-12)
    cache_files = list((tmp_path / "cache").rglob("*.json*"))
    for f in cache_files:  # every cache file is whole and readable
        text = f.read_text()
        json.loads(text) if f.suffix == ".json" else [json.loads(line) for line in text.splitlines()]
    assert not list((tmp_path / "cache").rglob(".*.tmp-*"))
