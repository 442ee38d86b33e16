"""``divbench-judge`` end to end (a subprocess, as a user runs it) against a judge on 127.0.0.1: FastChat-format
answers and alpaca_eval-format outputs in, FastChat / alpaca_eval formats out; bad input and refused requests."""

from __future__ import annotations

import json

import pytest

from eval import mt_bench as mt
from eval.reference_nll import read_reference
from tests.conftest import SHARED
from tests.helpers import KEY_ENV, CliResult, run_cli
from tests.judge_server import JudgeServer

AE_REF = SHARED / "data" / "alpaca_eval" / "gpt4_1106_preview.json"
MT_DIR = SHARED / "data" / "mt_bench"


def _verdict(body: dict) -> str:
    content = body["messages"][-1]["content"]
    return "I cannot rate this." if len(content) % 7 == 0 else f"Explanation. Rating: [[{1 + len(content) % 10}]]"


@pytest.fixture
def server():
    with JudgeServer(_verdict, logprobs=lambda body: [("m", -0.3), ("M", -1.5)]) as srv:
        yield srv


def _cli(server: JudgeServer, tmp_path, *args: str) -> CliResult:
    """divbench-judge as a user runs it, the benchmark files found through $DIVBENCH_DATA alone (an empty
    $DIVBENCH_SHARED: judge.yaml resolves its data like the study, not from <shared>/data)."""
    (tmp_path / "empty_shared").mkdir(exist_ok=True)
    env = {"OMP_NUM_THREADS": "1", "DIVBENCH_DATA": str(SHARED / "data"),
           "DIVBENCH_SHARED": str(tmp_path / "empty_shared"), KEY_ENV: "sk-test"}
    return run_cli("judge", *args, "eval/judge=vllm_server", f"eval.judge.base_url={server.base_url}",
                   f"eval.judge.api_key_env={KEY_ENV}", "eval.judge.model=judge-x", "eval.judge.max_retries=2",
                   f"cache_dir={tmp_path}/cache", f"logger.dir={tmp_path}/wandb", f"hydra.run.dir={tmp_path}/hydra",
                   env=env)


def _answers(questions: list[dict]) -> list[dict]:
    return [{"question_id": q["question_id"], "answer_id": f"a{q['question_id']}", "model_id": "ignored",
             "choices": [{"index": 0, "turns": [f"first answer to {q['question_id']}", "second answer"]}],
             "tstamp": 0.0} for q in questions]


def _fastchat_prompt(q: dict, answer: dict, prompts: dict, refs: dict, turn: int) -> list[dict]:
    """The messages FastChat's run_judge_single sends (system prompt, then the formatted user prompt)."""
    ref = q["category"] in mt.NEED_REFERENCE
    spec = prompts[("single-math-v1" if ref else "single-v1") + ("-multi-turn" if turn == 2 else "")]
    kwargs = {"ref_answer_1": refs[q["question_id"]][0], "ref_answer_2": refs[q["question_id"]][1]} if ref else {}
    a = answer["choices"][0]["turns"]
    if turn == 2:
        user = spec["prompt_template"].format(question_1=q["turns"][0], question_2=q["turns"][1], answer_1=a[0],
                                              answer_2=a[1], **kwargs)
    else:
        user = spec["prompt_template"].format(question=q["turns"][0], answer=a[0], **kwargs)
    return [{"role": "system", "content": spec["system_prompt"]}, {"role": "user", "content": user}]


@pytest.mark.slow
def test_mt_bench_fastchat_answers_to_fastchat_judgments(server, tmp_path):
    questions, prompts, refs = mt.load_mt_bench(MT_DIR)
    answers = _answers(questions)
    path = tmp_path / "my-model.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in answers))
    out = tmp_path / "out"
    server.latency = 0.05  # a judge that takes its time: without it a loaded machine can finish each request alone
    proc = _cli(server, tmp_path, "benchmark=mt_bench", f"answers={path}", f"out={out}")
    assert proc.code == 0, proc.output[-3000:]
    assert len(server.requests) == 160 and server.max_in_flight > 1
    # the console shows the run's news, not a line per request or third-party loader chatter; the log keeps them
    assert "HTTP Request" not in proc.output and "faiss" not in proc.output and "FutureWarning" not in proc.output
    assert "HTTP Request: POST" in next((tmp_path / "hydra").glob("*.log")).read_text()
    rows = [json.loads(line) for line in (out / "model_judgment.jsonl").read_text().splitlines()]
    assert len(rows) == 160
    assert set(rows[0]) == {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"}
    by_id = {a["question_id"]: a for a in answers}
    sent = {json.dumps(r["messages"]) for r in server.requests}
    for q in questions:
        for turn in (1, 2):
            expected = _fastchat_prompt(q, by_id[q["question_id"]], prompts, refs, turn)
            assert json.dumps(expected) in sent  # byte-identical to FastChat's prompt
    for r in rows:
        assert r["model"] == "my-model" and r["judge"][0] == "judge-x"
        assert r["judge"][1] in {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"}
        length = len(r["user_prompt"])
        assert r["score"] == (-1 if length % 7 == 0 else 1 + length % 10)
    summary = json.loads((out / "summary.json").read_text())
    valid = [r["score"] for r in rows if r["score"] != -1]
    assert 0 < len(valid) < 160 and summary["n_failed"] == 160 - len(valid)
    assert summary["score"] == pytest.approx(sum(valid) / len(valid))
    turn2 = [r["score"] for r in rows if r["score"] != -1 and r["turn"] == 2]
    assert summary["turn_2"] == pytest.approx(sum(turn2) / len(turn2)) and len(summary["by_category"]) == 8

    again = _cli(server, tmp_path, "benchmark=mt_bench", f"answers={path}", f"out={tmp_path}/out2")
    assert again.code == 0 and len(server.requests) == 160  # the judge cache answers a re-run
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["score"] == summary["score"]


@pytest.mark.slow
def test_alpaca_eval_outputs_to_annotations(server, tmp_path):
    reference = read_reference(AE_REF)
    outputs = [{"dataset": r["dataset"], "instruction": r["instruction"], "output": f"My answer {i}.",
                "generator": "my-model"} for i, r in enumerate(reference)]
    path = tmp_path / "model_outputs.json"
    path.write_text(json.dumps(outputs))
    proc = _cli(server, tmp_path, "benchmark=alpaca_eval", f"outputs={path}", f"out={tmp_path}/out",
                "eval.judge.concurrency=16")
    assert proc.code == 0, proc.output[-3000:]
    assert len(server.requests) == 805 and all(r["logprobs"] and r["top_logprobs"] == 5 for r in server.requests)
    annotations = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert len(annotations) == 805
    assert {"instruction", "output_1", "output_2", "generator_1", "generator_2", "annotator", "preference"} <= set(
        annotations[0])
    assert {a["generator_2"] for a in annotations} == {"my-model"}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_total"] == 805 and 0 < summary["win_rate"] < 100 and summary["model"] == "my-model"
    assert summary["judge_input_tokens"] > 805 * 100  # the template alone is hundreds of tokens


@pytest.mark.slow
@pytest.mark.parametrize("case, message", [
    ("unknown_id", "question_id 999 is not an MT-Bench question"),
    ("missing_turn", "needs choices\\[0\\].turns with two answers"),
    ("outputs_805", "do not match the 805 AlpacaEval instructions"),
    ("concurrency", "concurrency must be an integer >= 1"),
    ("price", "input_usd_per_mtok must be a non-negative"),
])
def test_bad_input_exits_2_and_writes_nothing(server, tmp_path, case, message):
    questions, _, _ = mt.load_mt_bench(MT_DIR)
    answers = _answers(questions)
    extra: list[str] = []
    if case == "unknown_id":
        answers[3]["question_id"] = 999
    if case == "missing_turn":
        answers[5]["choices"][0]["turns"] = ["only one"]
    if case == "concurrency":
        extra = ["eval.judge.concurrency=0"]
    if case == "price":
        extra = ["eval.judge.price.input_usd_per_mtok=-2"]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in answers))
    args = ["benchmark=mt_bench", f"answers={path}"]
    if case == "outputs_805":
        (tmp_path / "o.json").write_text(json.dumps([{"instruction": "hi", "output": "x", "generator": "g"}]))
        args = ["benchmark=alpaca_eval", f"outputs={tmp_path}/o.json"]
    proc = _cli(server, tmp_path, *args, f"out={tmp_path}/out", *extra)
    assert proc.code == 2, proc.output[-2000:]
    assert message.replace("\\", "") in proc.output
    assert "Traceback" not in proc.output and not (tmp_path / "out").exists() and not server.requests


@pytest.mark.slow
@pytest.mark.parametrize("code", ["404", "400", "401"])
def test_refused_judge_exits_3_naming_the_model(server, tmp_path, code):
    questions, _, _ = mt.load_mt_bench(MT_DIR)
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in _answers(questions)))
    server.faults = [code] * 200
    proc = _cli(server, tmp_path, "benchmark=mt_bench", f"answers={path}", f"out={tmp_path}/out")
    assert proc.code == 3, proc.output[-2000:]
    assert "judge model 'judge-x'" in proc.output and f"HTTP {code}" in proc.output and "Fix:" in proc.output
    assert "Traceback" not in proc.output and not (tmp_path / "out").exists()
