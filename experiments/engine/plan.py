"""The budget planner behind ``dry_run=true``: what a study will do, and what it will cost, before it runs.

``plan_table`` has one row per (subset, seed, stage) (and training replicate, ``train_seed``) with ``status``
(done / to run / corrupt), ``judge_calls`` (each judged evaluator's declared calls per model: AlpacaEval one per
instruction, MT-Bench two turns per question),
``est_gpu_hours``,
``est_judge_input_tokens``, ``est_judge_output_tokens`` and ``est_usd``. The shared stages (pool, embed, signals) appear
under every subset, as the dry run always listed them, but carry their estimate only on the first subset's row
(``shared_with_first`` is true on the others), so column sums are study totals.

Estimates come, in order of preference, from measurements and then from the configs:
- GPU hours: a previous run's ``<results_dir>/timings.json`` (mean wall time of each stage where it executed, never
  counting a cache hit), else the stage's own estimate (``Stage.gpu_hours``: from the throughputs of ``plan:`` in the
  study config, tokens per GPU-second, stated there), only when ``device=cuda``; the CPU path costs no GPU hours.
- Judge tokens: per-call means measured in this study's finished eval artifacts (``judge_input_tokens``), else
  each judged evaluator's estimate (``judge_tokens``, eval.benchmarks) from lengths read from the benchmark files
  at ~4 characters per token (OpenAI's rule of thumb) plus the configured answer and judgment lengths.
- USD: tokens times the judge's price table (``eval.judge.price``); missing without one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from eval.evaluators import Evaluation, evaluation
from eval.judges import JudgeConfig
from experiments.engine.stages import Stage

log = logging.getLogger(__name__)

PLAN_COLUMNS = ["subset", "seed", "stage", "status", "train_seed", "shared_with_first", "judge_calls", "est_gpu_hours",
                "est_judge_input_tokens", "est_judge_output_tokens", "est_usd", "estimate_source",
                "est_cpu_hours"]


def _measured_tokens(eval_files: list[Path], judged: list[str]) -> tuple[float, float] | None:
    """Per-call (input, output) token means over this study's finished, judged eval rows (``eval_files``); a
    judged evaluator's row counts its judge calls in ``<name>_n``."""
    calls = inp = out = 0.0
    for path in eval_files:
        if path.exists():
            row = json.loads(path.read_text())
            n = sum(float(row.get(f"{name}_n") or 0) for name in judged)
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


def measured_cpu_hours(results_dir: str | Path) -> dict[str, float]:
    """Wall hours per execution of each stage measured on this study's own runs: the resumable chunks' records
    (``<results_dir>/timings/*.json``, experiments.engine.pipeline.write_chunk_timings) and a previous full run's
    timings.json, pooled (total executed wall time over executions)."""
    folder = Path(results_dir)
    records = [json.loads(p.read_text())["timings"] for p in sorted((folder / "timings").glob("*.json"))]
    if (folder / "timings.json").exists():
        records.append(json.loads((folder / "timings.json").read_text()))
    total: dict[str, list[float]] = {}
    for timings in records:
        for stage, t in timings.items():
            if isinstance(t, dict) and t.get("executed"):
                acc = total.setdefault(stage, [0.0, 0.0])
                acc[0] += t["executed_wall_s"]
                acc[1] += t["executed"]
    return {stage: wall / n / 3600 for stage, (wall, n) in total.items()}


def _configured_tokens(ev: Evaluation, calls: dict[str, int], assumed: dict[str, Any]) -> tuple[float, float]:
    """Mean (input, output) tokens of one judge call, weighted by each judged evaluator's calls, from what the
    evaluators estimate from their files and ``plan:``."""
    parts = {m.evaluator.name: m.evaluator.judge_tokens(m.node, assumed) for m in ev.judged
             if m.evaluator.judge_tokens is not None}
    n = sum(calls.values())
    return (sum(calls[b] * parts[b][0] for b in parts) / n, sum(calls[b] * parts[b][1] for b in parts) / n)


def plan_table(cfg: dict[str, Any], entries: list[dict], stages: tuple[Stage, ...], stage_status: dict[tuple, str],
               eval_files: list[Path]) -> pd.DataFrame:
    """The plan: one row per (subset, seed, stage). ``stage_status`` maps (label, seed, train seed, stage) to its
    status; ``eval_files`` are the entries' judged rows (finished ones carry measured token counts). What each
    stage costs comes from its declaration: ``gpu_hours`` (a GPU stage), ``judged``, and ``per_subset`` (a shared
    stage is costed on the first subset's rows)."""
    measured_h = _measured_hours(cfg["results_dir"])
    on_gpu = str(cfg.get("device", "cpu")).startswith("cuda")
    cpu_h = {} if on_gpu else measured_cpu_hours(cfg["results_dir"])  # CPU runs: this study's own measurements
    ev = evaluation(cfg["eval"])
    calls = ev.judge_calls()
    per_call, source = (0.0, 0.0), "none"
    price: dict[str, float] | None = {"input_usd_per_mtok": 0.0, "output_usd_per_mtok": 0.0}  # no judge: costs 0
    if calls:
        judge = JudgeConfig.from_dict(dict(cfg["eval"]["judge"]), check_key=False)
        price = {"input_usd_per_mtok": 0.0, "output_usd_per_mtok": 0.0} if judge.in_process else judge.price
        measured = _measured_tokens(eval_files, list(calls))
        if measured:
            per_call, source = measured, "measured"
        else:
            per_call, source = _configured_tokens(ev, calls, cfg["plan"]), "config"
    rows = []
    for k, entry in enumerate(entries):
        for s in stages:
            stage = s.name
            shared = not s.per_subset and k > 0
            hours = 0.0
            if on_gpu and s.gpu_hours is not None and not shared:
                hours = measured_h.get(stage, s.gpu_hours(cfg))
            n_calls = sum(calls.values()) if s.judged else 0
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
                         (source if n_calls else ""),
                         "est_cpu_hours": 0.0 if shared else round(cpu_h.get(stage, 0.0), 4)})
    return pd.DataFrame(rows, columns=PLAN_COLUMNS)


def plan_totals(plan: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Sums of the estimates over the whole plan and over the rows still to run."""
    cols = ["judge_calls", "est_gpu_hours", "est_judge_input_tokens", "est_judge_output_tokens", "est_usd",
            "est_cpu_hours"]

    def total(df: pd.DataFrame) -> dict[str, float]:
        out = {c: float(df[c].sum()) for c in cols}
        if df["est_usd"].isna().any():
            out["est_usd"] = float("nan")  # no price table: unknown, never 0
        return out

    return {"all": total(plan), "to_run": total(plan[plan["status"] == "to run"])}
