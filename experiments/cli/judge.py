"""divbench-judge: judge existing model outputs with any configured judge, writing what FastChat and alpaca_eval read.

Main keys: benchmark=<mt_bench | alpaca_eval>, answers / outputs (the file to judge), out, eval/judge=<openai_gpt41 |
vllm_server | local_smollm2 | ...> with eval.judge.model / base_url / api_key_env (the NAME of the variable holding
the key), cache_dir.

- ``benchmark=mt_bench answers=<FastChat model_answer .jsonl>``: single-answer grading of all 80 questions, both
  turns, with FastChat's prompts (byte-identical: :func:`eval.mt_bench.judge_prompt`); writes
  ``<out>/model_judgment.jsonl`` in FastChat's format (``question_id``, ``model``, ``judge`` = [judge model, judge
  prompt name], ``user_prompt``, ``judgment``, ``score`` (-1 when no rating parses), ``turn``, ``tstamp``) and
  ``<out>/summary.json`` (``score`` as FastChat's show_result: the mean over scores other than -1; ``turn_1``,
  ``turn_2``, per category, counts, tokens and cost).
- ``benchmark=alpaca_eval outputs=<model_outputs.json>``: alpaca_eval's annotator against the reference outputs;
  writes ``<out>/annotations.json`` (alpaca_eval's format) and ``<out>/summary.json`` (win rate, SE, LC when
  available, tokens and cost).

Both use the study's per-judge caches under ``cache_dir``, ``eval.judge.concurrency`` and the key rules; the
generations and judgments go to a W&B table (offline unless ``WANDB_MODE=online``). Inputs are checked before
anything is written or asked.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from experiments.cli.command import hydra_command

log = logging.getLogger("divbench")
BENCHMARKS = ("mt_bench", "alpaca_eval")
JUDGE_FILES = ("model_judgment.jsonl", "annotations.json", "summary.json")  # an out folder from before manifests


def read_fastchat_answers(path: str | Path, questions: list[dict]) -> tuple[str, dict[int, dict]]:
    """(model name, answers by question id) of a FastChat model_answer file, checked against MT-Bench: every
    question answered, both turns present, no unknown question id. The model is the file's stem, as FastChat."""
    from divcore.errors import InputError
    from experiments.data.pools import read_jsonl

    path = Path(path)
    if not path.exists():
        raise InputError(f"answers file {path} does not exist (FastChat's model_answer/<model>.jsonl)")
    known = {q["question_id"] for q in questions}
    answers: dict[int, dict] = {}
    lines: dict[int, int] = {}
    for n, row in enumerate(read_jsonl(path), 1):
        if not isinstance(row, dict):
            raise InputError(f"{path}:{n}: expected a JSON object (question_id, choices), got {type(row).__name__}")
        qid = row.get("question_id")
        if qid not in known:
            raise InputError(f"{path}:{n}: question_id {qid!r} is not an MT-Bench question (ids {min(known)}-"
                             f"{max(known)}); pass answers to FastChat's mt_bench question.jsonl")
        turns = ((row.get("choices") or [{}])[0] or {}).get("turns")
        if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, str) for t in turns[:2]):
            raise InputError(f"{path}:{n}: question {qid} needs choices[0].turns with two answers (turn 1 and "
                             f"turn 2), got {turns!r:.80}")
        if qid in answers:  # judging one and dropping the other would score an answer nobody chose
            raise InputError(f"{path}:{n}: question {qid} is answered twice (first on answer {lines[qid]}); keep "
                             "one answer per question")
        answers[qid], lines[qid] = row, n
    missing = sorted(known - set(answers))
    if missing:
        more = " ..." if len(missing) > 10 else ""
        raise InputError(f"{path}: no answer to MT-Bench question(s) {missing[:10]}{more} ({len(missing)} of "
                         f"{len(known)}); answer every question")
    return path.name[:-len(".jsonl")] if path.name.endswith(".jsonl") else path.stem, answers


def fastchat_judgments(judgments: list[dict], model: str, judge_model: str) -> list[dict]:
    """Rows of FastChat's model_judgment JSONL (single grading)."""
    return [{"question_id": j["question_id"], "model": model, "judge": [judge_model, j["judge_prompt"]],
             "user_prompt": j["user_prompt"], "judgment": j["judgment"],
             "score": -1 if j["score"] is None else j["score"], "turn": j["turn"], "tstamp": time.time()}
            for j in judgments]


def fastchat_summary(rows: list[dict], categories: dict[int, str]) -> dict[str, Any]:
    """FastChat show_result's single-grading numbers: means over scores other than -1."""
    import numpy as np

    valid = [r for r in rows if r["score"] != -1]

    def mean(sel: list[dict]) -> float | None:
        return float(np.mean([r["score"] for r in sel])) if sel else None

    return {"score": mean(valid), "turn_1": mean([r for r in valid if r["turn"] == 1]),
            "turn_2": mean([r for r in valid if r["turn"] == 2]),
            "by_category": {c: mean([r for r in valid if categories[r["question_id"]] == c])
                            for c in sorted(set(categories.values()))},
            "n_judgments": len(rows), "n_failed": len(rows) - len(valid)}


def judge_mt_bench(cfg: dict[str, Any], out: Path) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """Judge a FastChat answers file; write model_judgment.jsonl; return (summary, W&B table rows)."""
    from eval import mt_bench as mt
    from eval.alpaca_eval import judge_dir
    from eval.judges import make_judge

    mt_cfg = cfg["eval"]["mt_bench"]
    questions, prompts, refs = mt.load_mt_bench(mt_cfg["data_dir"], reference=mt_cfg.get("reference", "gpt-4"))
    model, answers = read_fastchat_answers(cfg["answers"], questions)
    judge = make_judge(dict(cfg["eval"]["judge"]), cfg["cache_dir"])
    judgments = mt.judge_answers(judge, questions, list(answers.values()), prompts, refs,
                                 judge_dir(cfg["cache_dir"], judge) / "mt_bench" / "judgments.jsonl",
                                 max_tokens=int(mt_cfg.get("judge_max_tokens", 2048)),
                                 prefill=mt_cfg.get("judge_prefill") or "")
    rows = fastchat_judgments(judgments, model, judge.config.model)
    summary = {"model": model, "judge": judge.config.label} | fastchat_summary(
        rows, {q["question_id"]: q["category"] for q in questions}) | _usage(judgments)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "model_judgment.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return summary, {"mt_bench": mt.judgment_table(judgments, answers)}


def judge_alpaca_eval(cfg: dict[str, Any], out: Path) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """Judge an alpaca_eval model_outputs.json; write annotations.json; return (summary, W&B table rows)."""
    from divcore.errors import InputError
    from eval import alpaca_eval as ae
    from eval.judges import make_judge
    from eval.reference_nll import read_reference

    ae_cfg = cfg["eval"]["alpaca_eval"]
    rows = read_reference(ae_cfg["reference_path"], "eval.alpaca_eval.reference_path")
    reference = [r | {"index": i} for i, r in enumerate(rows)]
    outputs = ae.read_model_outputs(cfg["outputs"], reference)
    generators = {o.get("generator") for o in outputs}
    if len(generators) != 1 or None in generators:
        raise InputError(f"{cfg['outputs']}: every record needs the same 'generator' (the model's name), got "
                         f"{sorted(map(str, generators))[:5]}")
    judge = make_judge(dict(cfg["eval"]["judge"]), cfg["cache_dir"])
    annotations = ae.annotate(outputs, reference, judge, ae_cfg["annotator"], cfg["cache_dir"],
                              seed=int(ae_cfg.get("annotator_seed", 0)))
    summary = {"model": generators.pop(), "judge": judge.config.label} | ae.alpaca_eval_summary(annotations)
    summary |= _usage([ae.annotation_usage(a) for a in annotations])
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "annotations.json", json.dumps(annotations, indent=2, default=str))
    return summary, {"alpaca_eval": ae.judgment_table(annotations)}


def _usage(rows: list[dict]) -> dict[str, Any]:
    from eval.evaluators import usage_totals

    return usage_totals(rows)


def _write(path: Path, text: str) -> None:
    from divcore.ownership import write_owned

    write_owned(path.parent, {path.name: text}, "judge", legacy=JUDGE_FILES)


def check_judge_out(out: Path, source: str) -> None:
    """``out`` before anything is asked: holds only divbench's files, is not the input nor the working directory,
    and can be written."""
    from divcore.io import check_writable
    from divcore.ownership import check_output_dir

    check_output_dir(out, legacy=JUDGE_FILES, inputs={"answers/outputs": source}, what="judge folder")
    check_writable(out, "out")


def judge_outputs(cfg: dict[str, Any]) -> dict[str, Any]:
    """Judge the configured answers / outputs; returns the summary (also written to ``<out>/summary.json``)."""
    from divcore.errors import InputError
    from experiments.engine.tracking import check_logger_config, log_tables

    check_logger_config(cfg["logger"])
    bench = cfg.get("benchmark")
    if bench not in BENCHMARKS:
        raise InputError(f"benchmark must be one of {BENCHMARKS}, got {bench!r}")
    source = "answers" if bench == "mt_bench" else "outputs"
    if not cfg.get(source):
        kind = "FastChat model_answer JSONL" if bench == "mt_bench" else "alpaca_eval model_outputs.json"
        raise InputError(f"benchmark={bench} needs {source}=<file> ({kind})")
    out = Path(cfg["out"])
    check_judge_out(out, cfg[source])
    summary, tables = (judge_mt_bench if bench == "mt_bench" else judge_alpaca_eval)(cfg, out)
    _write(out / "summary.json", json.dumps(summary, indent=2))
    log_tables(cfg["logger"], name=f"judge-{bench}-{summary['model']}", config={"benchmark": bench,
               "judge": cfg["eval"]["judge"], "model": summary["model"]}, tables=tables, summary=summary)
    log.info("%s of %s judged by %s: %s (written to %s)", bench, summary["model"], summary["judge"],
             {k: v for k, v in summary.items() if k in ("score", "win_rate", "length_controlled_winrate",
                                                       "judge_usd")}, out)
    return summary


main = hydra_command("judge")(judge_outputs)

if __name__ == "__main__":
    main()
