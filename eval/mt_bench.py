"""MT-Bench (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena"), single-answer grading.

Data conventions are FastChat's ``fastchat/llm_judge`` (question.jsonl, judge_prompts.jsonl,
reference_answer/gpt-4.jsonl). FastChat's own judge client pins ``openai<1`` and cannot share an environment with
alpaca_eval, so this module is a thin re-implementation of its single-grading step over :mod:`eval.judges`:

- turn 1 is graded with ``single-v1``; turn 2 with ``single-v1-multi-turn`` (both turns shown);
- math, reasoning and coding use the reference-guided ``single-math-v1`` forms with GPT-4's reference answers;
- the judge replies at temperature 0; the rating is the number in ``[[x]]`` (else in ``[x]``), kept whatever its
  value (``[[0]]`` scores 0), and -1 when there is none, exactly as FastChat's ``run_judge_single``. A -1 is a
  failure: recorded, excluded from the means (FastChat's ``show_result`` drops ``score == -1``), and counted.

score = mean rating over (question, turn) pairs; also per turn and per category.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from divcore.errors import InputError
from divcore.hashing import stable_hash
from divcore.io import atomic_write, read_jsonl
from eval.generation import MT_BENCH_TEMPERATURES, Generator
from eval.judges import Judge, cache_lock, judge_many

log = logging.getLogger(__name__)

NEED_REFERENCE = {"math", "reasoning", "coding", "arena-hard-200"}
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def _read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    return read_jsonl(path, f"MT-Bench {what}", "run `divbench-data fetch` (needs internet) or set DIVBENCH_DATA "
                      "to a directory holding mt_bench/")


REFERENCES = ("gpt-4", "gpt-4-0125-preview")  # the paper's / FastChat's corrected set (FastChat PR 3158)


def load_mt_bench(data_dir: str | Path, n_questions: int | None = None, seed: int = 0,
                  reference: str = "gpt-4") -> tuple[list[dict], dict[str, dict], dict[int, list[str]]]:
    """Questions (optionally a seeded sample, balanced over categories), judge prompts by name, and the
    reference answers by question id, from ``reference_answer/<reference>.jsonl``: ``gpt-4`` (the paper's and
    the original leaderboard's) or ``gpt-4-0125-preview`` (FastChat's corrected answers: PR 3158 found 13 of the
    30 GPT-4 references wrong)."""
    data_dir = Path(data_dir)
    questions = _read_jsonl(data_dir / "question.jsonl", "question")
    for q in questions:
        if not {"question_id", "category", "turns"} <= set(q) or len(q["turns"]) != 2:
            raise InputError(f"{data_dir / 'question.jsonl'}: question {q.get('question_id')} needs question_id, "
                             "category and two turns")
    prompts = {p["name"]: p for p in _read_jsonl(data_dir / "judge_prompts.jsonl", "judge prompt")}
    missing = {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"} - set(prompts)
    if missing:
        raise InputError(f"{data_dir / 'judge_prompts.jsonl'} lacks judge prompt(s) {sorted(missing)}")
    if reference not in REFERENCES:
        raise InputError(f"eval.mt_bench.reference must be one of {REFERENCES}, got {reference!r}")
    ref_file = data_dir / "reference_answer" / f"{reference}.jsonl"
    if not ref_file.exists() and reference != "gpt-4":
        raise InputError(f"MT-Bench reference answers {ref_file} not found: copy FastChat's "
                         f"fastchat/llm_judge/data/mt_bench/reference_answer/{reference}.jsonl there, or use "
                         "eval.mt_bench.reference=gpt-4 (the paper's)")
    refs = {r["question_id"]: r["choices"][0]["turns"] for r in _read_jsonl(ref_file, "reference answer")}
    if n_questions is not None and n_questions < len(questions):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(questions))
        # round-robin over categories so a small sample still covers them
        by_cat: dict[str, list[int]] = {}
        for i in order:
            by_cat.setdefault(questions[i]["category"], []).append(int(i))
        picked: list[int] = []
        while len(picked) < n_questions:
            for cat in sorted(by_cat):
                if by_cat[cat] and len(picked) < n_questions:
                    picked.append(by_cat[cat].pop(0))
        questions = [questions[i] for i in sorted(picked)]
    lacking = [q["question_id"] for q in questions if q["category"] in NEED_REFERENCE and q["question_id"] not in refs]
    if lacking:
        raise InputError(f"{ref_file}: no reference answer for reference-graded question(s) {lacking}")
    return questions, prompts, refs


def generate_answers(generator: Generator, questions: list[dict], max_new_tokens: int,
                     temperatures: dict[str, float] | None = None, model_id: str = "model") -> list[dict]:
    """Two-turn answers in FastChat's model_answer format; turn 2 sees the model's own turn-1 answer."""
    temps = MT_BENCH_TEMPERATURES | (temperatures or {})
    t = [float(temps.get(q["category"], 0.0)) for q in questions]
    first = generator.generate([[{"role": "user", "content": q["turns"][0]}] for q in questions], t, max_new_tokens)
    follow_ups = [[{"role": "user", "content": q["turns"][0]}, {"role": "assistant", "content": a},
                   {"role": "user", "content": q["turns"][1]}] for q, a in zip(questions, first, strict=True)]
    second = generator.generate(follow_ups, t, max_new_tokens)
    return [{"question_id": q["question_id"], "model_id": model_id, "category": q["category"],
             "choices": [{"index": 0, "turns": [a1, a2]}]} for q, a1, a2 in zip(questions, first, second, strict=True)]


def judge_prompt(question: dict, answer: dict, prompts: dict[str, dict], refs: dict[int, list[str]],
                 turn: int) -> tuple[str, list[dict[str, str]]]:
    """The judge prompt's name and chat messages for one (question, turn), following FastChat's templates."""
    with_ref = question["category"] in NEED_REFERENCE
    name = ("single-math-v1" if with_ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
    a = answer["choices"][0]["turns"]
    fields = {"question": question["turns"][0], "answer": a[0], "question_1": question["turns"][0],
              "question_2": question["turns"][1], "answer_1": a[0], "answer_2": a[1]}
    if with_ref:
        ref = refs[question["question_id"]]
        fields |= {"ref_answer_1": ref[0], "ref_answer_2": ref[1] if len(ref) > 1 else ""}
    spec = prompts[name]
    return name, [{"role": "system", "content": spec["system_prompt"]},
                  {"role": "user", "content": spec["prompt_template"].format(**fields)}]


NO_RATING = -1.0  # FastChat's marker for a judgment without a parseable rating


def parse_rating(text: str) -> float:
    """The rating in ``[[x]]`` (else ``[x]``), any value, as FastChat parses it; -1 when there is none."""
    match = RATING.search(text) or RATING_BACKUP.search(text)
    return float(match.group(1)) if match else NO_RATING


def judge_answers(judge: Judge, questions: list[dict], answers: list[dict], prompts: dict[str, dict],
                  refs: dict[int, list[str]], cache_path: Path, max_tokens: int = 2048,
                  prefill: str = "") -> list[dict]:
    """One judgment per (question, turn), asked ``judge.config.concurrency`` at a time, returned in question order.

    Judgments are cached in ``cache_path`` (JSONL, one file per judge) by the prompt sent, so a re-run only asks
    what it has not asked this judge before. Each finished judgment is appended at once under the file's lock, and
    the whole run holds a lock per set of answers, so a twin process judging the same answers waits and then asks
    nothing. ``prefill`` starts each reply (local judges only; a smoke-test crutch for tiny models)."""
    by_id = {a["question_id"]: a for a in answers}
    items = []
    for q in questions:
        for turn in (1, 2):
            name, messages = judge_prompt(q, by_id[q["question_id"]], prompts, refs, turn)
            items.append((q, turn, name, messages,
                          stable_hash({"messages": messages, "max_tokens": max_tokens, "prefill": prefill})))
    file_lock = cache_path.with_name(cache_path.name + ".lock")
    work_lock = cache_path.with_name(f".{cache_path.stem}-{stable_hash(sorted(i[4] for i in items))}.lock")
    with cache_lock(work_lock, f"MT-Bench judging with {judge.config.model}"):
        with cache_lock(file_lock, f"MT-Bench judgment cache {cache_path}"):
            cache = _load_cache(cache_path)
        todo = list(dict.fromkeys(key for *_, key in items if key not in cache))
        messages_of = {key: messages for *_, messages, key in items}

        def ask(key: str) -> dict:
            reply = judge.chat(messages_of[key], max_tokens=max_tokens, temperature=0.0, prefill=prefill)
            return {"key": key, "judgment": reply["text"], "score": parse_rating(reply["text"]),
                    **(reply.get("usage") or {"prompt_tokens": None, "completion_tokens": None})}

        def store(i: int, row: dict) -> None:
            cache[row["key"]] = row
            with cache_lock(file_lock, f"MT-Bench judgment cache {cache_path}"):
                _append(cache_path, row)

        judge_many(ask, todo, judge.config.concurrency, desc="MT-Bench judging", on_result=store)
    out = []
    for q, turn, name, messages, key in items:
        r = cache[key]
        out.append({"question_id": q["question_id"], "category": q["category"], "turn": turn, "judge_prompt": name,
                    "user_prompt": messages[-1]["content"], "judgment": r["judgment"],
                    "score": parse_rating(r["judgment"]),  # re-parsed: caches from older parsers agree
                    "prompt_tokens": r.get("prompt_tokens"), "completion_tokens": r.get("completion_tokens"),
                    "judge_usd": judge.config.cost_usd(r.get("prompt_tokens"), r.get("completion_tokens"))})
    return out


def _load_cache(path: Path) -> dict[str, dict]:
    """The judge's cached judgments (call under the file's lock). The file is append-only; a line cut off by a
    kill can only be the last one, and is dropped (its item is simply asked again); damage anywhere else is an
    error."""
    if not path.exists():
        return {}
    lines = path.read_text().split("\n")
    cache = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                log.warning("%s: dropping a judgment cut off mid-write; it will be asked again", path)
                atomic_write(path, "\n".join(lines[:-1]) + "\n")
                continue
            raise InputError(f"{path}:{n}: corrupted judgment cache line; delete the file to re-judge") from None
        cache[row["key"]] = row
    return cache


def _append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())  # a judgment is paid for: on disk before the next is counted done


def mt_bench_summary(judgments: list[dict]) -> dict[str, Any]:
    """Mean rating overall, per turn and per category over parsed judgments (FastChat drops score -1; a None
    from an older cache is a failure too); failures counted."""
    valid = [j for j in judgments if j["score"] is not None and j["score"] != NO_RATING]
    if not valid:
        raise InputError(f"all {len(judgments)} MT-Bench judgments were unparseable (no [[rating]]); the judge "
                         "does not follow the format, so there is no score")

    def mean(rows: list[dict]) -> float | None:
        return float(np.mean([r["score"] for r in rows])) if rows else None

    return {"score": mean(valid), "turn_1": mean([j for j in valid if j["turn"] == 1]),
            "turn_2": mean([j for j in valid if j["turn"] == 2]),
            "by_category": {c: mean([j for j in valid if j["category"] == c])
                            for c in sorted({j["category"] for j in judgments})},
            "n_judgments": len(judgments), "n_failed": len(judgments) - len(valid)}


def judgment_table(judgments: list[dict], answers: dict[int, dict]) -> list[dict]:
    """Per (question, turn): the model's answer, the judge's prompt and reply, and the rating."""
    return [{"question_id": j["question_id"], "category": j["category"], "turn": j["turn"],
             "answer": answers[j["question_id"]]["choices"][0]["turns"][j["turn"] - 1],
             "judge_prompt": j.get("user_prompt"), "judgment": j["judgment"], "score": j["score"]}
            for j in judgments]
