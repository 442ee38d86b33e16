"""Generation backends, MT-Bench decoding temperatures, and the offline judged path with a real local judge."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from divcore.errors import InputError
from eval import mt_bench as mt
from eval.benchmarks import AE_OUTPUTS, MT_ANSWERS, generate_benchmarks, judge_benchmarks
from eval.generation import MT_BENCH_TEMPERATURES, make_generator
from experiments.report.tables import performance_note
from finetune.models import resolve_model
from tests.conftest import SHARED

MT_DIR = SHARED / "data" / "mt_bench"


class RecordingGenerator:
    """Answers with the prompt's length and records the temperature each prompt was decoded at."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def generate(self, conversations, temperatures, max_new_tokens):
        self.calls += [(c[-1]["content"], t) for c, t in zip(conversations, temperatures, strict=True)]
        return [f"answer to a {len(c)}-message conversation" for c in conversations]


def test_mt_bench_uses_fastchat_temperatures_and_two_turns():
    questions, _, _ = mt.load_mt_bench(MT_DIR)
    gen = RecordingGenerator()
    answers = mt.generate_answers(gen, questions, 8, temperatures={"math": 0.3})
    assert len(gen.calls) == 160 and all(len(a["choices"][0]["turns"]) == 2 for a in answers)
    by_prompt = dict(gen.calls)
    for q in questions:
        expected = 0.3 if q["category"] == "math" else MT_BENCH_TEMPERATURES[q["category"]]
        assert by_prompt[q["turns"][0]] == by_prompt[q["turns"][1]] == expected
    assert answers[0]["choices"][0]["turns"][1] == "answer to a 3-message conversation"  # turn 2 sees turn 1


@pytest.mark.slow
def test_transformers_generation_is_seeded(tiny_model):
    cfg = {"backend": "transformers", "batch_size": 2, "seed": 7}
    convs = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Count to three."}]]
    gen = make_generator(cfg, tiny_model, None)
    sampled = gen.generate(convs, [1.0, 1.0], 6)
    assert sampled == make_generator(cfg, tiny_model, None).generate(convs, [1.0, 1.0], 6)
    assert sampled != make_generator(cfg | {"seed": 8}, tiny_model, None).generate(convs, [1.0, 1.0], 6)
    assert gen.generate(convs, [0.0, 0.0], 4) == gen.generate(convs, [0.0, 0.0], 4)  # greedy
    with pytest.raises(InputError, match="backend"):
        make_generator({"backend": "tgi"}, tiny_model, None)


@pytest.mark.slow
def test_offline_judged_path_with_a_local_model_judge(tmp_path):
    """SmolLM2-135M answers two AlpacaEval instructions and one MT-Bench question, and judges them."""
    cache = str(tmp_path / "cache")
    model = resolve_model("packaged:smollm2", cache)
    cfg = {"generation": {"backend": "transformers", "batch_size": 2, "seed": 0},
           "alpaca_eval": {"enabled": True, "reference_path": str(SHARED / "data/alpaca_eval/gpt4_1106_preview.json"),
                           "n_examples": 2, "seed": 0, "max_new_tokens": 24,
                           "annotator": "weighted_alpaca_eval_gpt4_turbo"},
           "mt_bench": {"enabled": True, "data_dir": str(MT_DIR), "n_questions": 1, "seed": 0, "max_new_tokens": 16,
                        "judge_max_tokens": 6, "judge_prefill": "Rating: [["},
           "reference_nll": {"enabled": True, "n_examples": 2, "max_length": 256},
           "judge": {"kind": "local", "model": "packaged:smollm2", "smoke_test": True}}
    gen_dir, eval_dir = tmp_path / "gen", tmp_path / "eval"
    gen_dir.mkdir(), eval_dir.mkdir()
    generate_benchmarks(model, None, cfg, gen_dir, generator_name="smollm2")
    outputs = json.loads((gen_dir / AE_OUTPUTS).read_text())
    assert [set(o) for o in outputs] == [{"dataset", "instruction", "output", "generator"}] * 2
    assert len((gen_dir / MT_ANSWERS).read_text().splitlines()) == 1
    row = judge_benchmarks(gen_dir, cfg, cache, eval_dir)
    assert row["judge_smoke_test"] and "smoke-test judge" in row["judge"]
    assert row["alpaca_eval_n"] + row["alpaca_eval_n_failed"] == 2 and 0 <= row["alpaca_eval_win_rate"] <= 100
    assert row["mt_bench_n"] == 2 and 1 <= row["mt_bench_score"] <= 10 and row["neg_reference_nll"] < 0
    assert (eval_dir / "alpaca_eval_annotations.json").exists() and (eval_dir / "mt_bench_judgments.jsonl").exists()
    assert "not a valid benchmark number" in performance_note(pd.DataFrame([row]))
