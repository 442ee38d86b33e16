"""The built-in evaluators (:mod:`eval.evaluators`): AlpacaEval, MT-Bench and the reference-answer NLL.

* ``alpaca_eval``: generate writes the model's outputs (alpaca_eval's ``model_outputs.json`` format); score
  annotates them with alpaca_eval's annotator answered by the judge (``alpaca_eval_*`` columns).
* ``mt_bench``: generate writes two-turn answers (FastChat's ``model_answer`` JSONL); score grades both turns
  with FastChat's prompts (``mt_bench_*`` columns, per category too).
* ``reference_nll``: generate computes the judge-free -NLL of AlpacaEval's GPT-4 Turbo reference answers under the
  model (it needs the model, so it runs in the generate stage); score reads its file. Standalone
  (``eval.name=reference_nll``) it is the row, ``performance`` included; in the suite it adds
  ``neg_reference_nll``.

``generate_benchmarks`` / ``judge_benchmarks`` run the suite's halves on a bare ``eval`` config (the judged path
outside the pipeline). Combining benchmarks into one performance number happens across the study's models, in
:mod:`eval.combined`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from divcore.errors import InputError
from divcore.io import atomic_write, read_jsonl, write_jsonl
from eval import alpaca_eval as ae
from eval import mt_bench as mt
from eval.evaluators import EvalModel, Scoring, evaluation, register
from eval.generation import MT_BENCH_TEMPERATURES
from eval.precision import eval_precision
from eval.reference_nll import load_reference, read_reference, reference_nll, sample_positions

log = logging.getLogger(__name__)

# the files each evaluator writes: answers in the generate artifact, the judge's verdicts in the eval artifact
AE_OUTPUTS, MT_ANSWERS, NLL = "alpaca_eval_outputs.json", "mt_bench_answers.jsonl", "reference_nll.json"
AE_ANNOTATIONS, MT_JUDGMENTS = "alpaca_eval_annotations.json", "mt_bench_judgments.jsonl"
CHARS_PER_TOKEN = 4.0  # OpenAI's rule of thumb, for judge-token estimates before any judgment is measured

# The judges behind the published leaderboards; numbers from another judge are not comparable with them.
LEADERBOARD_JUDGES = {"alpaca_eval": {"weighted_alpaca_eval_gpt4_turbo": "gpt-4-1106-preview",
                                      "alpaca_eval_gpt4": "gpt-4"},
                      "mt_bench": "gpt-4"}


def _tokens(text: str) -> float:
    return len(text) / CHARS_PER_TOKEN


# ------------------------------------------------------------------------------------------------ AlpacaEval


def alpaca_eval_reference(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The (sampled) reference rows, each carrying its index among the 805 for the length-controlled GLM."""
    rows = read_reference(cfg["reference_path"], cfg.get("reference_key", "eval.alpaca_eval.reference_path"))
    return [rows[i] | {"index": i} for i in sample_positions(len(rows), cfg.get("n_examples"), int(cfg.get("seed", 0)))]


def _alpaca_eval_generate(model: EvalModel, cfg: dict[str, Any], out_dir: Path) -> None:
    outputs = ae.generate_outputs(model.generator(), alpaca_eval_reference(cfg), model.name,
                                  int(cfg["max_new_tokens"]))
    atomic_write(out_dir / AE_OUTPUTS, json.dumps(outputs, indent=1))


def _alpaca_eval_tokens(cfg: dict[str, Any], assumed: dict[str, Any]) -> tuple[float, float]:
    """Mean (input, output) tokens of one AlpacaEval judge call, from the template and the reference file."""
    import yaml
    from alpaca_eval import constants

    cfg_file = Path(constants.EVALUATORS_CONFIG_DIR) / cfg["annotator"] / "configs.yaml"
    if not cfg_file.exists():
        return float(assumed["alpaca_eval_prompt_tokens"]), 1.0
    ann = yaml.safe_load(cfg_file.read_text())[cfg["annotator"]]
    template = _tokens((Path(constants.EVALUATORS_CONFIG_DIR) / ann["prompt_template"]).read_text())
    try:
        ref = read_reference(cfg["reference_path"], cfg.get("reference_key", "eval.alpaca_eval.reference_path"))
        per = sum(_tokens(r["instruction"]) + _tokens(r["output"]) for r in ref) / len(ref)
    except (InputError, OSError) as e:  # planning must not need the data: the configured assumption stands in
        log.warning("plan: %s; assuming plan.alpaca_eval_prompt_tokens per AlpacaEval judge call", e)
        per = float(assumed["alpaca_eval_prompt_tokens"]) - template
    answer = min(float(cfg.get("max_new_tokens") or 0), float(assumed["answer_tokens"]))
    return template + per + answer, float(ann.get("completions_kwargs", {}).get("max_tokens", 1))


def _alpaca_eval_leaderboard(cfg: dict[str, Any], judge_model: str) -> str | None:
    board = LEADERBOARD_JUDGES["alpaca_eval"].get(cfg.get("annotator"))
    if board == judge_model:
        return None
    return f"AlpacaEval leaderboard judge {board or 'unknown for ' + str(cfg.get('annotator'))}"


def _alpaca_eval_table(gen_dir: Path, eval_dir: Path) -> list[dict] | None:
    annotations = eval_dir / AE_ANNOTATIONS
    return ae.judgment_table(json.loads(annotations.read_text())) if annotations.exists() else None


@register("alpaca_eval", generate=_alpaca_eval_generate, needs_judge=True, uses_generator=True,
          score_only=frozenset({"annotator", "annotator_seed"}),
          columns=lambda cfg: ("alpaca_eval_win_rate", "alpaca_eval_discrete_win_rate", "alpaca_eval_lc_win_rate"),
          judge_calls=lambda cfg: int(cfg["n_examples"]) if cfg.get("n_examples") is not None else 805,
          judge_tokens=_alpaca_eval_tokens, leaderboard=_alpaca_eval_leaderboard, tables=_alpaca_eval_table)
def _alpaca_eval_score(gen_dir: Path, cfg: dict[str, Any], scoring: Scoring) -> dict[str, Any]:
    reference = alpaca_eval_reference(cfg)
    outputs = ae.read_model_outputs(gen_dir / AE_OUTPUTS, reference)
    annotations = ae.annotate(outputs, reference, scoring.judge, cfg["annotator"], scoring.cache_dir,
                              seed=int(cfg.get("annotator_seed", 0)))
    atomic_write(scoring.out_dir / AE_ANNOTATIONS, json.dumps(annotations, indent=1, default=str))
    scoring.usage += [ae.annotation_usage(a) for a in annotations]
    summary = ae.alpaca_eval_summary(annotations)
    return {"alpaca_eval_win_rate": summary["win_rate"], "alpaca_eval_standard_error": summary["standard_error"],
            "alpaca_eval_discrete_win_rate": summary["discrete_win_rate"],
            "alpaca_eval_lc_win_rate": summary["length_controlled_winrate"],
            "alpaca_eval_n": summary["n_total"], "alpaca_eval_n_failed": summary["n_failed_annotations"],
            "alpaca_eval_lc_note": summary["length_controlled_note"]}


# ------------------------------------------------------------------------------------------------ MT-Bench


def _mt_bench_generate(model: EvalModel, cfg: dict[str, Any], out_dir: Path) -> None:
    questions, _, _ = mt.load_mt_bench(cfg["data_dir"], cfg.get("n_questions"), int(cfg.get("seed", 0)))
    answers = mt.generate_answers(model.generator(), questions, int(cfg["max_new_tokens"]),
                                  dict(cfg.get("temperatures") or {}), model_id=model.name)
    write_jsonl(out_dir / MT_ANSWERS, answers)


def _mt_bench_check(cfg: dict[str, Any], judge: Any) -> None:
    if cfg.get("reference", "gpt-4") not in mt.REFERENCES:
        raise InputError(f"eval.mt_bench.reference must be one of {mt.REFERENCES}, got {cfg.get('reference')!r}")
    if judge is not None and not judge.in_process and cfg.get("judge_prefill"):
        raise InputError("eval.mt_bench.judge_prefill is set but the judge is an endpoint; a prefill is only "
                         "possible with a local judge (kind=local); set it to ''")


def _mt_bench_tokens(cfg: dict[str, Any], assumed: dict[str, Any]) -> tuple[float, float]:
    """Mean (input, output) tokens of one MT-Bench judge call (the two turns averaged)."""
    answer = min(float(cfg.get("max_new_tokens") or 0), float(assumed["answer_tokens"]))
    try:
        questions, prompts, refs = mt.load_mt_bench(cfg["data_dir"], reference=cfg.get("reference", "gpt-4"))
    except (InputError, OSError) as e:
        log.warning("plan: %s; assuming plan.mt_bench_prompt_tokens per MT-Bench judge call", e)
        return float(assumed["mt_bench_prompt_tokens"]), float(assumed["mt_bench_judgment_tokens"])
    total = 0.0
    for q in questions:
        ref = sum(_tokens(t) for t in refs.get(q["question_id"], [])) if q["category"] in mt.NEED_REFERENCE else 0
        name = "single-math-v1" if q["category"] in mt.NEED_REFERENCE else "single-v1"
        turn1 = _tokens(prompts[name]["prompt_template"]) + _tokens(q["turns"][0]) + answer + ref / 2
        turn2 = (_tokens(prompts[name + "-multi-turn"]["prompt_template"]) + sum(map(_tokens, q["turns"]))
                 + 2 * answer + ref)
        total += turn1 + turn2
    output = min(float(assumed["mt_bench_judgment_tokens"]), float(cfg.get("judge_max_tokens") or 2048))
    return total / (2 * len(questions)), output


def _mt_bench_leaderboard(cfg: dict[str, Any], judge_model: str) -> str | None:
    board = LEADERBOARD_JUDGES["mt_bench"]
    return None if board == judge_model else f"MT-Bench leaderboard judge {board}"


def _mt_bench_table(gen_dir: Path, eval_dir: Path) -> list[dict] | None:
    if not (judgments := eval_dir / MT_JUDGMENTS).exists():
        return None
    answers = {a["question_id"]: a for a in read_jsonl(gen_dir / MT_ANSWERS)}
    return mt.judgment_table(read_jsonl(judgments), answers)


@register("mt_bench", generate=_mt_bench_generate, needs_judge=True, uses_generator=True,
          score_only=frozenset({"judge_max_tokens", "judge_prefill", "reference"}),
          columns=lambda cfg: ("mt_bench_score", "mt_bench_turn_1", "mt_bench_turn_2",
                               *(f"mt_bench_{cat}" for cat in MT_BENCH_TEMPERATURES)),
          check=_mt_bench_check,
          judge_calls=lambda cfg: 2 * (int(cfg["n_questions"]) if cfg.get("n_questions") is not None else 80),
          judge_tokens=_mt_bench_tokens, leaderboard=_mt_bench_leaderboard, tables=_mt_bench_table)
def _mt_bench_score(gen_dir: Path, cfg: dict[str, Any], scoring: Scoring) -> dict[str, Any]:
    questions, prompts, refs = mt.load_mt_bench(cfg["data_dir"], cfg.get("n_questions"), int(cfg.get("seed", 0)),
                                                cfg.get("reference", "gpt-4"))
    answers = read_jsonl(gen_dir / MT_ANSWERS)
    judgments = mt.judge_answers(scoring.judge, questions, answers, prompts, refs,
                                 ae.judge_dir(scoring.cache_dir, scoring.judge) / "mt_bench" / "judgments.jsonl",
                                 max_tokens=int(cfg.get("judge_max_tokens", 2048)),
                                 prefill=cfg.get("judge_prefill") or "")
    write_jsonl(scoring.out_dir / MT_JUDGMENTS, judgments)
    scoring.usage += judgments
    summary = mt.mt_bench_summary(judgments)
    return {"mt_bench_score": summary["score"], "mt_bench_turn_1": summary["turn_1"],
            "mt_bench_turn_2": summary["turn_2"], "mt_bench_n": summary["n_judgments"],
            "mt_bench_n_failed": summary["n_failed"]} | {f"mt_bench_{cat}": v
                                                        for cat, v in summary["by_category"].items()}


# ------------------------------------------------------------------------------------------------ reference NLL


def reference_examples(cfg: dict[str, Any]) -> list[dict[str, str]]:
    """The fixed seeded sample of reference answers that the reference-NLL evaluator config ``cfg`` scores."""
    return load_reference(cfg["reference_path"], cfg.get("n_examples"), int(cfg.get("seed", 0)),
                          cfg.get("reference_key", "eval.reference_path"))


def reference_nll_config(ev: dict[str, Any]) -> dict[str, Any]:
    """The reference-NLL evaluator's own config from a study's ``eval`` group, alone or in the suite."""
    return ev if ev["name"] == "reference_nll" else _reference_nll_in_suite(ev)


def _reference_nll_generate(model: EvalModel, cfg: dict[str, Any], out_dir: Path) -> None:
    result = reference_nll(model.path, reference_examples(cfg), adapter=model.adapter,
                           max_length=int(cfg.get("max_length", 512)), device=cfg.get("device", "cpu"),
                           precision=eval_precision(cfg), batch_size=int(cfg.get("batch_size") or 8))
    atomic_write(out_dir / NLL, json.dumps(result, indent=2))


def _reference_nll_in_suite(ev: dict[str, Any]) -> dict[str, Any]:
    """In the suite it reads AlpacaEval's reference file and sample seed, the generator's device and the
    evaluation's precision."""
    nll, ae_cfg = ev["reference_nll"], ev["alpaca_eval"]
    return {"reference_path": ae_cfg["reference_path"], "reference_key": "eval.alpaca_eval.reference_path",
            "seed": ae_cfg.get("seed", 0),
            "n_examples": nll.get("n_examples"), "max_length": nll["max_length"],
            "device": ev["generation"].get("device", "cpu"), "precision": ev.get("precision"),
            "batch_size": nll.get("batch_size") or ev["generation"].get("batch_size", 8)}


@register("reference_nll", generate=_reference_nll_generate, performance_column="neg_reference_nll",
          columns=lambda cfg: ("neg_reference_nll",), suite_node=_reference_nll_in_suite)
def _reference_nll_score(gen_dir: Path, cfg: dict[str, Any], scoring: Scoring) -> dict[str, Any]:
    return json.loads((gen_dir / NLL).read_text())


# ------------------------------------------------------------------------------------------------ the suite, bare


def check_eval_config(cfg: dict[str, Any], check_key: bool = True) -> None:
    """Fail before any training when the judged evaluation is misconfigured (judge, benchmarks, prefill);
    ``check_key=False`` (dry runs) does not require the judge's API key to be exported."""
    evaluation(cfg).check(check_key)


def generate_benchmarks(model_path: str, adapter: str | None, cfg: dict[str, Any], out_dir: Path,
                        generator_name: str) -> None:
    """Answers to the enabled benchmarks' prompts (and the reference NLL when enabled), written into ``out_dir``."""
    evaluation(cfg).generate(model_path, adapter, out_dir, generator_name)


def judge_benchmarks(gen_dir: Path, cfg: dict[str, Any], cache_dir: str, out_dir: Path) -> dict[str, Any]:
    """Judge the answers in ``gen_dir``; write annotations and judgments into ``out_dir``; return the row."""
    return evaluation(cfg).score(gen_dir, cache_dir, out_dir)
