"""The budget planner behind ``dry_run=true``: what a study will do, and what it will cost, before it runs.

``plan_table`` has one row per (subset, seed, stage) (and training replicate, ``train_seed``) with ``status``
(done / to run / n/a), ``judge_calls`` (AlpacaEval: one per instruction; MT-Bench: two turns per question),
``est_gpu_hours``,
``est_judge_input_tokens``, ``est_judge_output_tokens`` and ``est_usd``. The shared stages (pool, embed, signals) appear
under every subset, as the dry run always listed them, but carry their estimate only on the first subset's row
(``shared_with_first`` is true on the others), so column sums are study totals.

Estimates come, in order of preference, from measurements and then from the configs:
- GPU hours: a previous run's ``<results_dir>/timings.json`` (mean wall time of each stage where it executed), else
  the throughputs of ``plan:`` in the study config (tokens per GPU-second, stated there), only when
  ``device=cuda``; the CPU path costs no GPU hours.
- Judge tokens: per-call means measured in this study's finished eval artifacts (``judge_input_tokens``), else
  lengths read from the benchmark files at ~4 characters per token (OpenAI's rule of thumb) plus the configured
  answer and judgment lengths.
- USD: tokens times the judge's price table (``eval.judge.price``); missing without one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from eval import mt_bench as mt
from eval.judges import JudgeConfig
from eval.reference_nll import read_reference
from metrics.validation import InputError

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4.0
GPU_STAGES = ("embed", "finetune", "generate")
PLAN_COLUMNS = ["subset", "seed", "stage", "status", "train_seed", "shared_with_first", "judge_calls", "est_gpu_hours",
                "est_judge_input_tokens", "est_judge_output_tokens", "est_usd", "estimate_source"]


def _tokens(text: str) -> float:
    return len(text) / CHARS_PER_TOKEN


def benchmark_calls(ev: dict[str, Any]) -> dict[str, int]:
    """Judge calls per judged model: AlpacaEval one per instruction, MT-Bench one per (question, turn)."""
    calls = {}
    if (ae := ev.get("alpaca_eval") or {}).get("enabled"):
        calls["alpaca_eval"] = int(ae["n_examples"]) if ae.get("n_examples") is not None else 805
    if (mb := ev.get("mt_bench") or {}).get("enabled"):
        calls["mt_bench"] = 2 * (int(mb["n_questions"]) if mb.get("n_questions") is not None else 80)
    return calls


def _alpaca_eval_tokens(ae: dict[str, Any], assumed: dict[str, Any]) -> tuple[float, float]:
    """Mean (input, output) tokens of one AlpacaEval judge call, from the template and the reference file."""
    import yaml
    from alpaca_eval import constants

    cfg_file = Path(constants.EVALUATORS_CONFIG_DIR) / ae["annotator"] / "configs.yaml"
    if not cfg_file.exists():
        return float(assumed["alpaca_eval_prompt_tokens"]), 1.0
    ann = yaml.safe_load(cfg_file.read_text())[ae["annotator"]]
    template = _tokens((Path(constants.EVALUATORS_CONFIG_DIR) / ann["prompt_template"]).read_text())
    try:
        ref = read_reference(ae["reference_path"])
        per = sum(_tokens(r["instruction"]) + _tokens(r["output"]) for r in ref) / len(ref)
    except (InputError, OSError) as e:  # planning must not need the data: the configured assumption stands in
        log.warning("plan: %s; assuming plan.alpaca_eval_prompt_tokens per AlpacaEval judge call", e)
        per = float(assumed["alpaca_eval_prompt_tokens"]) - template
    answer = min(float(ae.get("max_new_tokens") or 0), float(assumed["answer_tokens"]))
    return template + per + answer, float(ann.get("completions_kwargs", {}).get("max_tokens", 1))


def _mt_bench_tokens(mb: dict[str, Any], assumed: dict[str, Any]) -> tuple[float, float]:
    """Mean (input, output) tokens of one MT-Bench judge call (the two turns averaged)."""
    answer = min(float(mb.get("max_new_tokens") or 0), float(assumed["answer_tokens"]))
    try:
        questions, prompts, refs = mt.load_mt_bench(mb["data_dir"], reference=mb.get("reference", "gpt-4"))
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
    output = min(float(assumed["mt_bench_judgment_tokens"]), float(mb.get("judge_max_tokens") or 2048))
    return total / (2 * len(questions)), output


def _measured_tokens(eval_dirs: list[Path]) -> tuple[float, float] | None:
    """Per-call (input, output) token means over this study's finished, judged eval artifacts."""
    calls = inp = out = 0.0
    for path in (d / "eval.json" for d in eval_dirs):
        if path.exists():
            row = json.loads(path.read_text())
            n = float(row.get("alpaca_eval_n") or 0) + float(row.get("mt_bench_n") or 0)
            if n and row.get("judge_input_tokens"):
                calls, inp, out = calls + n, inp + row["judge_input_tokens"], out + row["judge_output_tokens"]
    return (inp / calls, out / calls) if calls else None


def _measured_hours(results_dir: str | Path) -> dict[str, float]:
    """Wall hours per executed stage from a previous run's timings.json."""
    path = Path(results_dir) / "timings.json"
    if not path.exists():
        return {}
    timings = json.loads(path.read_text())
    return {s: t["executed_wall_s"] / t["executed"] / 3600 for s, t in timings.items()
            if isinstance(t, dict) and t.get("executed")}


def _config_hours(cfg: dict[str, Any], stage: str) -> float:
    """GPU hours of one stage from the study config's stated throughputs (``plan:``)."""
    p, ev = cfg["plan"], cfg["eval"]
    if stage == "embed":
        rows = cfg["pool"].get("size") or p["pool_rows"]
        tokens = rows * min(p["example_tokens"], cfg["embed"].get("max_length") or 256)
        return tokens / p["embed_tokens_per_gpu_s"] / 3600
    if stage == "finetune":
        epochs = float((cfg["finetune"].get("args") or {}).get("num_train_epochs", 1))
        tokens = cfg["selection"]["size"] * min(p["example_tokens"], cfg["finetune"].get("max_length") or 2048)
        return tokens * epochs / p["finetune_tokens_per_gpu_s"] / 3600
    if stage == "generate":
        calls = benchmark_calls(ev)
        tokens = (calls.get("alpaca_eval", 0) + calls.get("mt_bench", 0)) * p["answer_tokens"]
        return tokens / p["generate_tokens_per_gpu_s"] / 3600
    return 0.0


def plan_table(cfg: dict[str, Any], entries: list[dict], stages: tuple[str, ...], stage_status: dict[tuple, str],
               eval_dirs: list[Path], judged: bool) -> pd.DataFrame:
    """The plan: one row per (subset, seed, stage). ``stage_status`` maps (label, seed, stage) to its status;
    ``eval_dirs`` are the entries' eval artifact directories (finished ones carry measured token counts)."""
    measured_h = _measured_hours(cfg["results_dir"])
    on_gpu = str(cfg.get("device", "cpu")).startswith("cuda")
    calls = benchmark_calls(cfg["eval"]) if judged else {}
    per_call, source = (0.0, 0.0), "none"
    price = None
    if calls:
        judge = JudgeConfig.from_dict(dict(cfg["eval"]["judge"]), check_key=False)
        price = {"input_usd_per_mtok": 0.0, "output_usd_per_mtok": 0.0} if judge.in_process else judge.price
        measured = _measured_tokens(eval_dirs)
        if measured:
            per_call, source = measured, "measured"
        else:
            parts = {}
            if "alpaca_eval" in calls:
                parts["alpaca_eval"] = _alpaca_eval_tokens(cfg["eval"]["alpaca_eval"], cfg["plan"])
            if "mt_bench" in calls:
                parts["mt_bench"] = _mt_bench_tokens(cfg["eval"]["mt_bench"], cfg["plan"])
            n = sum(calls.values())
            per_call = (sum(calls[b] * parts[b][0] for b in parts) / n, sum(calls[b] * parts[b][1] for b in parts) / n)
            source = "config"
    rows = []
    for k, entry in enumerate(entries):
        for stage in stages:
            shared = stage in ("pool", "embed", "signals") and k > 0
            hours = 0.0
            if on_gpu and stage in GPU_STAGES and not shared:
                hours = measured_h.get(stage, _config_hours(cfg, stage))
            n_calls = sum(calls.values()) if stage == "eval" else 0
            inp, out = n_calls * per_call[0], n_calls * per_call[1]
            usd = (None if price is None else
                   (inp * price["input_usd_per_mtok"] + out * price["output_usd_per_mtok"]) / 1e6)
            rows.append({"subset": entry["label"], "seed": entry["seed"], "train_seed": entry.get("train_seed"),
                         "stage": stage, "status": stage_status[entry["label"], entry["seed"],
                                                                 entry.get("train_seed"), stage],
                         "shared_with_first": shared,
                         "judge_calls": n_calls, "est_gpu_hours": round(hours, 4),
                         "est_judge_input_tokens": round(inp), "est_judge_output_tokens": round(out),
                         "est_usd": None if usd is None else round(usd, 4),
                         "estimate_source": ("measured" if stage in measured_h else "config") if hours else
                         (source if n_calls else "")})
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def plan_totals(plan: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Sums of the estimates over the whole plan and over the rows still to run."""
    cols = ["judge_calls", "est_gpu_hours", "est_judge_input_tokens", "est_judge_output_tokens", "est_usd"]

    def total(df: pd.DataFrame) -> dict[str, float]:
        out = {c: float(df[c].sum()) for c in cols}
        if df["est_usd"].isna().any():
            out["est_usd"] = float("nan")  # no price table: unknown, never 0
        return out

    return {"all": total(plan), "to_run": total(plan[plan["status"] == "to run"])}
