"""How much of a study's reference-NLL differences is the sampling error of its fixed answer sample.

Every model of a study is scored on the same seeded sample of AlpacaEval reference answers, so what ranks the models
is the paired difference of their token-weighted mean NLLs. This recomputes per-answer NLLs for some fine-tuned
models of a study's cache (the evaluator's own loop, ``eval.reference_nll.example_nlls``), bootstraps the answers
(the same resamples for every model, so differences are paired) and prints, for every pair of models, the standard
error of their difference that a different draw of answers would give. Compare it with the training noise of a
difference, sqrt(2) x the replicate SD in the study's ``noise_floor.json``: the sample is large enough when the
sampling SE is below it.

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/reference_nll_sampling.py --results results/mini \
           --cache-dir .cache/divbench [--models 8] [--n-boot 2000] [--out results/mini/reference_nll_sampling.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from divcore.models import resolve_model
from eval.benchmarks import reference_examples, reference_nll_config
from eval.reference_nll import example_nlls
from finetune.models import finetuned, load_causal_lm, load_tokenizer


def model_dirs(cache_dir: Path, n: int) -> list[Path]:
    dirs = sorted(p for p in (cache_dir / "finetune").glob("*/model") if p.is_dir())
    if len(dirs) < 2:
        raise SystemExit(f"{cache_dir}/finetune holds {len(dirs)} fine-tuned models; need at least 2")
    return dirs[:n]


def paired_sampling_se(sums: np.ndarray, counts: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(models, models) bootstrap SE of the difference of token-weighted mean -NLL, answers resampled jointly."""
    idx = np.random.default_rng(seed).integers(0, sums.shape[1], (n_boot, sums.shape[1]))
    perf = -sums[:, idx].sum(axis=2) / counts[:, idx].sum(axis=2)  # (models, n_boot)
    return np.std(perf[:, None, :] - perf[None, :, :], axis=2, ddof=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, required=True, help="a study's results dir (study_config.json)")
    ap.add_argument("--cache-dir", type=Path, required=True)
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cfg = json.loads((args.results / "study_config.json").read_text())
    nll_cfg = reference_nll_config(cfg["eval"])  # the sample and truncation the study's evaluator used
    examples = reference_examples(nll_cfg)
    base = resolve_model(cfg["finetune"]["base_model"], args.cache_dir)
    sums, counts, perf = [], [], []
    start = time.perf_counter()
    for d in model_dirs(args.cache_dir, args.models):
        model_path, adapter = finetuned(d, base)
        model = load_causal_lm(model_path, adapter=adapter)
        s, c = example_nlls(model, load_tokenizer(adapter or model_path), examples,
                            max_length=int(nll_cfg["max_length"]))
        sums.append(s)
        counts.append(c)
        perf.append(-s.sum() / c.sum())
    sums_a, counts_a = np.array(sums), np.array(counts)
    se = paired_sampling_se(sums_a, counts_a, args.n_boot, seed=0)
    pairs = [se[i, j] for i, j in itertools.combinations(range(len(sums)), 2)]
    diffs = [abs(perf[i] - perf[j]) for i, j in itertools.combinations(range(len(sums)), 2)]
    floor_path = args.results / "noise_floor.json"
    floor = json.loads(floor_path.read_text()) if floor_path.exists() else {}
    result = {"n_models": len(sums), "n_examples": len(examples), "max_length": int(nll_cfg["max_length"]),
              "n_boot": args.n_boot, "performance": [float(p) for p in perf],
              "pair_sampling_se_median": float(np.median(pairs)), "pair_sampling_se_max": float(np.max(pairs)),
              "pair_abs_difference_median": float(np.median(diffs)),
              "within_sd": floor.get("within_sd"), "between_sd": floor.get("between_sd"),
              "wall_s": time.perf_counter() - start}
    print(f"{len(sums)} models x {len(examples)} reference answers ({args.n_boot} paired bootstrap resamples)")
    print(f"  sampling SE of a model-model difference: median {result['pair_sampling_se_median']:.5f}, "
          f"max {result['pair_sampling_se_max']:.5f}")
    print(f"  |model-model difference|: median {result['pair_abs_difference_median']:.5f}")
    if floor.get("within_sd") is not None:
        # two replicates of one subset differ by training noise with SD sqrt(2) x within_sd: the yardstick
        result["training_noise_of_a_difference"] = float(np.sqrt(2) * floor["within_sd"])
        print(f"  training noise of a difference (sqrt(2) x within_sd {floor['within_sd']:.5f}): "
              f"{result['training_noise_of_a_difference']:.5f}; between-subset SD {floor.get('between_sd')}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
