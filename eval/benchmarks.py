"""The judged evaluation of one fine-tuned model: AlpacaEval and MT-Bench, in two cached steps.

``generate_benchmarks`` writes the model's answers (alpaca_eval's ``model_outputs.json`` format and FastChat's
``model_answer`` JSONL), and optionally the judge-free reference-answer NLL; it does not depend on the
judge. ``judge_benchmarks`` annotates them with the configured judge and returns flat columns for runs.csv
(``alpaca_eval_*``, ``mt_bench_*``, ``judge``). Re-pointing the judge re-runs only the second step.
Combining benchmarks into one performance number happens across the study's models, in :mod:`eval.combined`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from divcore.io import atomic_write, read_jsonl, write_jsonl
from eval import alpaca_eval as ae
from eval import mt_bench as mt
from eval.combined import METHODS
from eval.generation import MT_BENCH_TEMPERATURES, check_generation_config, make_generator
from eval.judges import JudgeConfig, make_judge
from eval.reference_nll import load_reference, read_reference, reference_nll, sample_positions
from metrics.validation import InputError

log = logging.getLogger(__name__)

AE_OUTPUTS, MT_ANSWERS, NLL = "alpaca_eval_outputs.json", "mt_bench_answers.jsonl", "reference_nll.json"


def alpaca_eval_reference(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The (sampled) reference rows, each carrying its index among the 805 for the length-controlled GLM."""
    rows = read_reference(cfg["reference_path"])
    return [rows[i] | {"index": i} for i in sample_positions(len(rows), cfg.get("n_examples"), int(cfg.get("seed", 0)))]


def check_eval_config(cfg: dict[str, Any], check_key: bool = True) -> None:
    """Fail before any training when the judged evaluation is misconfigured (judge, benchmarks, prefill);
    ``check_key=False`` (dry runs) does not require the judge's API key to be exported."""
    if not (cfg.get("alpaca_eval") or {}).get("enabled") and not (cfg.get("mt_bench") or {}).get("enabled"):
        raise InputError("eval: neither alpaca_eval.enabled nor mt_bench.enabled is true; enable one")
    check_performance_config(cfg)
    check_generation_config(cfg.get("generation") or {})
    judge = JudgeConfig.from_dict(dict(cfg["judge"]), check_key=check_key)
    if (mt_cfg := cfg.get("mt_bench") or {}).get("enabled") and mt_cfg.get("reference", "gpt-4") not in mt.REFERENCES:
        raise InputError(f"eval.mt_bench.reference must be one of {mt.REFERENCES}, got {mt_cfg.get('reference')!r}")
    if not judge.in_process and (cfg.get("mt_bench") or {}).get("judge_prefill"):
        raise InputError("eval.mt_bench.judge_prefill is set but the judge is an endpoint; a prefill is only "
                         "possible with a local judge (kind=local); set it to ''")


SCORE_COLUMNS = {"alpaca_eval": ("alpaca_eval_win_rate", "alpaca_eval_discrete_win_rate", "alpaca_eval_lc_win_rate"),
                 "mt_bench": ("mt_bench_score", "mt_bench_turn_1", "mt_bench_turn_2"),
                 "reference_nll": ("neg_reference_nll",)}


def check_performance_config(cfg: dict[str, Any]) -> None:
    """``eval.performance`` must combine score columns that the enabled benchmarks produce."""
    perf = cfg.get("performance") or {}
    if perf.get("method", "zscore_mean") not in METHODS:
        raise InputError(f"eval.performance.method must be one of {METHODS}, got {perf.get('method')!r}")
    produced = {c for b, cols in SCORE_COLUMNS.items() if (cfg.get(b) or {}).get("enabled") for c in cols}
    if (cfg.get("mt_bench") or {}).get("enabled"):
        produced |= {f"mt_bench_{cat}" for cat in MT_BENCH_TEMPERATURES}
    if not perf.get("columns"):
        raise InputError(f"eval.performance.columns is empty; choose from {sorted(produced)}")
    unknown = [c for c in perf["columns"] if c not in produced]
    if unknown:
        raise InputError(f"eval.performance.columns: {unknown} not produced by the enabled benchmarks; choose "
                         f"from {sorted(produced)}")


def generate_benchmarks(model_path: str, adapter: str | None, cfg: dict[str, Any], out_dir: Path,
                        generator_name: str) -> None:
    """Answers to the enabled benchmarks' prompts, written into ``out_dir``."""
    ae_cfg, mt_cfg = cfg.get("alpaca_eval") or {}, cfg.get("mt_bench") or {}
    if ae_cfg.get("enabled") or mt_cfg.get("enabled"):
        generator = make_generator(dict(cfg["generation"]), model_path, adapter)
        try:
            if ae_cfg.get("enabled"):
                outputs = ae.generate_outputs(generator, alpaca_eval_reference(ae_cfg), generator_name,
                                              int(ae_cfg["max_new_tokens"]))
                atomic_write(out_dir / AE_OUTPUTS, json.dumps(outputs, indent=1))
            if mt_cfg.get("enabled"):
                questions, _, _ = mt.load_mt_bench(mt_cfg["data_dir"], mt_cfg.get("n_questions"),
                                                   int(mt_cfg.get("seed", 0)))
                answers = mt.generate_answers(generator, questions, int(mt_cfg["max_new_tokens"]),
                                              dict(mt_cfg.get("temperatures") or {}), model_id=generator_name)
                write_jsonl(out_dir / MT_ANSWERS, answers)
        finally:  # the generator's GPU memory goes back before the reference-NLL model or the next subset loads
            close = getattr(generator, "close", None)
            if close is not None:
                close()
    if (nll_cfg := cfg.get("reference_nll") or {}).get("enabled"):
        examples = load_reference(cfg["alpaca_eval"]["reference_path"], nll_cfg.get("n_examples"),
                                  int(cfg["alpaca_eval"].get("seed", 0)))
        result = reference_nll(model_path, examples, adapter=adapter, max_length=int(nll_cfg["max_length"]),
                               device=cfg["generation"].get("device", "cpu"))
        atomic_write(out_dir / NLL, json.dumps(result, indent=2))


# The judges behind the published leaderboards; numbers from another judge are not comparable with them.
LEADERBOARD_JUDGES = {"alpaca_eval": {"weighted_alpaca_eval_gpt4_turbo": "gpt-4-1106-preview",
                                      "alpaca_eval_gpt4": "gpt-4"},
                      "mt_bench": "gpt-4"}


def leaderboard_note(cfg: dict[str, Any], judge_model: str) -> str:
    """Empty when the judge is the published leaderboards' for every enabled benchmark; else what differs."""
    differs = []
    if (ae_cfg := cfg.get("alpaca_eval") or {}).get("enabled"):
        board = LEADERBOARD_JUDGES["alpaca_eval"].get(ae_cfg.get("annotator"))
        if board != judge_model:
            differs.append(f"AlpacaEval leaderboard judge {board or 'unknown for ' + str(ae_cfg.get('annotator'))}")
    if (cfg.get("mt_bench") or {}).get("enabled") and LEADERBOARD_JUDGES["mt_bench"] != judge_model:
        differs.append(f"MT-Bench leaderboard judge {LEADERBOARD_JUDGES['mt_bench']}")
    if not differs:
        return ""
    return (f"judged by {judge_model}, not by the published leaderboards' judges ({'; '.join(differs)}): compare "
            "these scores only with scores from the same judge")


def usage_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Tokens and USD over judgments; USD is None when any judgment's cost is unknown (no price table)."""
    usd = [r.get("judge_usd") for r in rows]
    return {"input_tokens": sum(int(r.get("prompt_tokens") or 0) for r in rows),
            "output_tokens": sum(int(r.get("completion_tokens") or 0) for r in rows),
            "usd": None if any(u is None for u in usd) else float(sum(usd))}


def judge_benchmarks(gen_dir: Path, cfg: dict[str, Any], cache_dir: str, out_dir: Path) -> dict[str, Any]:
    """Judge the answers in ``gen_dir``; write annotations, judgments and a summary into ``out_dir``."""
    judge = make_judge(dict(cfg["judge"]), cache_dir)
    row: dict[str, Any] = {"judge": judge.config.label, "judge_smoke_test": judge.config.smoke_test,
                           "judge_leaderboard_note": leaderboard_note(cfg, judge.config.model)}
    judged_rows: list[dict[str, Any]] = []
    if (ae_cfg := cfg.get("alpaca_eval") or {}).get("enabled"):
        reference = alpaca_eval_reference(ae_cfg)
        outputs = ae.read_model_outputs(gen_dir / AE_OUTPUTS, reference)
        annotations = ae.annotate(outputs, reference, judge, ae_cfg["annotator"], cache_dir,
                                  seed=int(ae_cfg.get("annotator_seed", 0)))
        atomic_write(out_dir / "alpaca_eval_annotations.json", json.dumps(annotations, indent=1, default=str))
        judged_rows += [ae.annotation_usage(a) for a in annotations]
        summary = ae.alpaca_eval_summary(annotations)
        row |= {"alpaca_eval_win_rate": summary["win_rate"], "alpaca_eval_standard_error": summary["standard_error"],
                "alpaca_eval_discrete_win_rate": summary["discrete_win_rate"],
                "alpaca_eval_lc_win_rate": summary["length_controlled_winrate"],
                "alpaca_eval_n": summary["n_total"], "alpaca_eval_n_failed": summary["n_failed_annotations"],
                "alpaca_eval_lc_note": summary["length_controlled_note"]}
    if (mt_cfg := cfg.get("mt_bench") or {}).get("enabled"):
        questions, prompts, refs = mt.load_mt_bench(mt_cfg["data_dir"], mt_cfg.get("n_questions"),
                                                    int(mt_cfg.get("seed", 0)), mt_cfg.get("reference", "gpt-4"))
        answers = read_jsonl(gen_dir / MT_ANSWERS)
        judgments = mt.judge_answers(judge, questions, answers, prompts, refs,
                                     ae.judge_dir(cache_dir, judge) / "mt_bench" / "judgments.jsonl",
                                     max_tokens=int(mt_cfg.get("judge_max_tokens", 2048)),
                                     prefill=mt_cfg.get("judge_prefill") or "")
        write_jsonl(out_dir / "mt_bench_judgments.jsonl", judgments)
        judged_rows += judgments
        summary = mt.mt_bench_summary(judgments)
        row |= {"mt_bench_score": summary["score"], "mt_bench_turn_1": summary["turn_1"],
                "mt_bench_turn_2": summary["turn_2"], "mt_bench_n": summary["n_judgments"],
                "mt_bench_n_failed": summary["n_failed"]}
        row |= {f"mt_bench_{cat}": v for cat, v in summary["by_category"].items()}
    totals = usage_totals(judged_rows)
    row |= {"judge_input_tokens": totals["input_tokens"], "judge_output_tokens": totals["output_tokens"],
            "judge_usd": totals["usd"]}
    if row["judge_leaderboard_note"]:
        log.warning("%s", row["judge_leaderboard_note"])
    if (gen_dir / NLL).exists():
        row["neg_reference_nll"] = json.loads((gen_dir / NLL).read_text())["performance"]
    if judge.config.smoke_test:
        log.warning("judge %s is a smoke-test judge: its scores exercise the code path and are not valid "
                    "benchmark numbers", judge.config.model)
    return row
