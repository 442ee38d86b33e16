"""Judging at scale: one model's 965 judgments (AlpacaEval 805 + MT-Bench 2 x 80) through the real code path
(alpaca_eval's PairwiseAnnotator, divbench's MT-Bench grading, the openai client) against a local
OpenAI-compatible server that takes ``--latency`` seconds per request. Prints wall time, the most requests in
flight, and the tokens recorded; then projects a paper-scale judging run from the measured rate.

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_judging.py [--concurrency 16] [--latency 0.5]
Target: <= 90 s at concurrency 16 with 0.5 s latency (sequential: ~480 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval import alpaca_eval as ae  # noqa: E402
from eval import mt_bench as mt  # noqa: E402
from eval.judges import make_judge  # noqa: E402
from eval.reference_nll import read_reference  # noqa: E402
from tests.judge_server import JudgeServer  # noqa: E402

SHARED = Path(os.environ.get("DIVBENCH_SHARED", ROOT.parent / "shared"))
PAPER_MODELS = 20  # judged models per base model in experiment=paper_llama3 (its dry run's plan.csv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.5)
    args = parser.parse_args()
    os.environ["DIVBENCH_BENCH_KEY"] = "sk-bench"
    for name in ("httpx", "httpx2", "openai"):  # one log line per request would drown the figures
        logging.getLogger(name).setLevel(logging.WARNING)
    rows = read_reference(SHARED / "data/alpaca_eval/gpt4_1106_preview.json")
    reference = [r | {"index": i} for i, r in enumerate(rows)]
    outputs = [{"instruction": r["instruction"], "output": f"A model answer, number {i}.", "generator": "bench"}
               for i, r in enumerate(reference)]
    questions, prompts, refs = mt.load_mt_bench(SHARED / "data/mt_bench")
    answers = [{"question_id": q["question_id"], "choices": [{"turns": [f"answer one {q['question_id']}", "two"]}]}
               for q in questions]
    with tempfile.TemporaryDirectory() as cache, JudgeServer(
            lambda body: f"Reasonable answer. Rating: [[{1 + len(body['messages'][-1]['content']) % 10}]]",
            logprobs=lambda body: [("m", -0.4), ("M", -1.2)], latency=args.latency) as server:
        judge = make_judge({"kind": "openai", "model": "bench-judge", "base_url": server.base_url,
                            "api_key_env": "DIVBENCH_BENCH_KEY", "timeout_s": 30, "concurrency": args.concurrency,
                            "price": {"input_usd_per_mtok": 2.0, "output_usd_per_mtok": 8.0}}, cache)
        start = time.perf_counter()
        annotations = ae.annotate(outputs, reference, judge, "weighted_alpaca_eval_gpt4_turbo", cache)
        t_ae = time.perf_counter() - start
        judgments = mt.judge_answers(judge, questions, answers, prompts, refs,
                                     ae.judge_dir(cache, judge) / "mt_bench" / "judgments.jsonl")
        wall = time.perf_counter() - start
        usage = [ae.annotation_usage(a) for a in annotations] + judgments
        n = len(annotations) + len(judgments)
        tokens_in = sum(u["prompt_tokens"] for u in usage)
        tokens_out = sum(u["completion_tokens"] for u in usage)
        usd = sum(u["judge_usd"] for u in usage)
        assert len(server.requests) == n == 965, (len(server.requests), n)
        peak = server.max_in_flight
    rate = n / wall
    paper = PAPER_MODELS * 965
    print(json.dumps({"judgments": n, "concurrency": args.concurrency, "latency_s": args.latency,
                      "wall_s": round(wall, 1), "alpaca_eval_s": round(t_ae, 1), "mt_bench_s": round(wall - t_ae, 1),
                      "max_in_flight": peak, "judgments_per_s": round(rate, 2),
                      "sequential_estimate_s": round(n * args.latency, 1),
                      "tokens_recorded": {"input": tokens_in, "output": tokens_out},
                      "usd_at_2_8_per_mtok": round(usd, 4)}, indent=2))
    print(f"wall {wall:.1f} s for {n} judgments at concurrency {args.concurrency} (target <= 90 s); "
          f"max {peak} in flight; {tokens_in} input / {tokens_out} output tokens recorded")
    print(f"projected paper-scale judging ({PAPER_MODELS} models x 965 = {paper} judgments per base model) at this "
          f"rate and latency: {paper / rate / 60:.1f} min (sequential at {args.latency} s: "
          f"{paper * args.latency / 3600:.1f} h); two base models: {2 * paper / rate / 60:.1f} min")


if __name__ == "__main__":
    main()
