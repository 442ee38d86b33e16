"""CPU fine-tuning and reference-NLL evaluation throughput at the mini study's settings, against the FLOP floor.

Prints, for SmolLM2-135M with the mini study's LoRA config (r=16 on all projections, max_length 256, batch 4, one
epoch, lr 2e-4) and its reference-NLL evaluation (AlpacaEval reference answers at 256 tokens):

* **peak**: the best measured GFLOP/s of ``F.linear`` on the model's matrix shapes (projections, LM head) on the
  threads torch uses, float32 and bfloat16. bfloat16 is marked ``emulated: no avx512_bf16 here`` where the CPU has
  neither ``avx512_bf16`` nor AMX (torch then multiplies bfloat16 without native dot products, several times slower
  than float32).
* **floor**: the tokens/s the peak allows: training 4 x parameters FLOPs per trained token (forward + the input
  gradients the LoRA layers need), evaluation 2 x parameters per evaluated token. Each measured figure is printed as
  a fraction of its floor (LoRA's own FLOPs, attention and element-wise work are extra; evaluation runs the LM head,
  28M of the 134M parameters, only where a token is scored, so it can pass 100%).
* **train**: ``finetune.sft.train_sft`` on a seeded subset of the mini pool (``--train-convs 8``; the mini study
  fine-tunes 16, the tokens/s barely depends on it):
  *today* = the configuration before issue 26 (float32, padded, TRL's default activation checkpointing, a fresh
  model load), then float32 padded (no checkpointing, the cached base borrowed), float32 padding-free and bf16
  padding-free. Trained tokens/s = non-padding tokens / the trainer's runtime; setup = ``train_sft``'s wall time
  minus that runtime (model load or borrow, dataset, trainer). The fp32 rows' training losses are compared with
  today's bit for bit.
* **eval**: the reference NLL of the mini study's first answers (``--eval-answers 20`` of its 40): *today* = one
  answer at a time with full logits (the loop before issue 26), then batched by length with the LM head only at
  scored positions, float32 and bf16. Evaluated tokens/s = input tokens / time.
* **padding waste**: the fraction of computed positions that carry no token: padded training batches of 4 in a
  random order over the whole mini pool (the trainer shuffles; mean over 1,000 seeded orders) vs packed
  (padding-free) rows; for evaluation, the LM-head positions computed but not scored, one by one vs batched.
* **setup**: per process (the imports of a fine-tune / evaluation, timed in a fresh interpreter, paid once) and per
  model (a fresh load vs the process's cache, ``finetune.models.MODELS``).
* ``--numerics`` (not in the default run): a tiny-setting check that bf16 changes results far less than the training
  seed does (see :func:`numerics`).

On a CPU that emulates bf16 the bf16 rows run on fewer examples (``--emulated-convs``, ``--emulated-answers``) to keep
the default run within about five minutes; their tokens/s is still a rate. Run it on an otherwise idle machine:

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_cpu_training.py --cache-dir <cache with the converted model>
        [--parts peak,setup,train,eval] [--numerics] [--out figures.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from divcore.models import resolve_model
from eval.benchmarks import reference_examples, reference_nll_config
from eval.reference_nll import example_nlls, length_batches, reference_nll
from experiments.data import pools
from experiments.engine.config import CONFIG_DIR
from finetune.models import MODELS, load_causal_lm, load_tokenizer
from finetune.precision import this_cpu_has_bf16
from finetune.sft import tokenize_with_assistant_mask, train_sft

ROOT = Path(__file__).resolve().parents[1]

SHAPES = {"q/o proj": (2048, 576, 576), "up/gate": (2048, 576, 1536), "down": (2048, 1536, 576),
          "lm head": (512, 576, 49152)}  # (tokens, in, out) of SmolLM2-135M's matrix products
DTYPE = {"fp32": "float32", "bf16": "bfloat16"}
EMULATED = "emulated: no avx512_bf16 here"


def mini_config(cache_dir: Path) -> dict[str, Any]:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("study", overrides=["experiment=mini", f"cache_dir={cache_dir}"])
    return OmegaConf.to_container(cfg, resolve=True)


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def linear_gflops(dtype: torch.dtype, reps: int) -> float:
    """The best shape's best GFLOP/s of ``F.linear`` over ``reps`` runs (2 x m x k x n FLOPs a product): a peak,
    so that other jobs on the machine lower it as little as they can."""
    best = 0.0
    for m, k, n in SHAPES.values():
        x, w = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
        torch.nn.functional.linear(x, w)
        seconds = min(timed(lambda x=x, w=w: torch.nn.functional.linear(x, w))[0] for _ in range(reps))
        best = max(best, 2 * m * k * n / seconds / 1e9)
    return best


def import_seconds() -> float:
    """What a fresh process pays before its first model: the imports of fine-tuning and evaluation."""
    code = ("import time; t = time.perf_counter(); import finetune.sft, eval.reference_nll, trl, peft; "
            "print(time.perf_counter() - t)")
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                                cwd=ROOT).stdout.split()[-1])


def padded_fraction(lengths: list[int], batch_size: int, orders: int = 1000) -> float:
    """Expected share of padding in batches padded to their longest member, over seeded random orders:
    1 - sum(lengths) / sum_batches(batch_size_b x max length_b)."""
    rng, lengths = np.random.default_rng(0), np.asarray(lengths)
    shares = []
    for _ in range(orders):
        order = lengths[rng.permutation(len(lengths))]
        cells = sum(len(b) * b.max() for b in np.array_split(order, range(batch_size, len(order), batch_size)))
        shares.append(1 - order.sum() / cells)
    return float(np.mean(shares))


def lm_head_waste(encs: list[dict], batch_size: int) -> dict[str, float]:
    """Share of LM-head positions computed but not scored: one by one over every position (before) vs the batched
    loop's ``logits_to_keep`` (positions scored in some row of the batch)."""
    scored = sum(sum(e["assistant_masks"][1:]) for e in encs)
    before = sum(len(e["input_ids"]) - 1 for e in encs)
    after = 0
    for batch in length_batches([len(e["input_ids"]) for e in encs], batch_size):
        masks = np.array([encs[i]["assistant_masks"][1:] for i in batch])
        after += len(batch) * int(masks.any(0).sum())
    return {"before": 1 - scored / before, "after": 1 - scored / after}


@torch.inference_mode()
def nll_one_by_one(model: Any, encs: list[dict]) -> float:
    """The reference-NLL loop before issue 26 (one answer at a time, logits at every position)."""
    total = 0.0
    for enc in encs:
        ids = torch.tensor([enc["input_ids"]])
        labels = ids.masked_fill(torch.tensor([enc["assistant_masks"]]) == 0, -100)
        logits = model(input_ids=ids).logits[:, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                         labels[:, 1:].reshape(-1), ignore_index=-100,
                                                         reduction="sum"))
    return total


def finetune_cfg(ft: dict[str, Any], precision: str, padding_free: bool, **args: Any) -> dict[str, Any]:
    cfg = {k: v for k, v in ft.items() if k != "seeds"} | {"precision": precision, "padding_free": padding_free}
    return cfg | {"args": dict(ft["args"]) | {"disable_tqdm": True, "report_to": [], "logging_steps": 1} | args}


def train_rows(subset: list[dict], base: str, ft: dict[str, Any], tok: Any, work: Path, bf16_n: int,
               floor: dict[str, float], native: bool) -> dict[str, dict[str, Any]]:
    """One fine-tune per variant (see the module docstring); today first, in a fresh model load."""
    max_length = int(ft["max_length"])
    variants = {"today: fp32 padded, checkpointing, fresh load": ("fp32", False, True, len(subset)),
                "fp32 padded": ("fp32", False, False, len(subset)),
                "fp32 padding-free": ("fp32", True, False, len(subset)),
                "bf16 padding-free": ("bf16", True, False, bf16_n)}
    rows = {}
    for name, (precision, packed, today, n) in variants.items():
        convs = subset[:n]
        tokens = sum(len(tokenize_with_assistant_mask(tok, c["messages"], max_length)["input_ids"]) for c in convs)
        cfg = finetune_cfg(ft, precision, packed)
        if today:
            cfg["args"].pop("activation_checkpointing")  # TRL's default: on
            MODELS.clear()
            with MODELS.disabled():
                wall, stats = timed(lambda c=cfg, v=convs: train_sft(v, base, work / "today", c))
        else:
            wall, stats = timed(lambda c=cfg, v=convs, p=name: train_sft(v, base, work / p.replace(" ", "_"), c))
        rate = tokens / stats["train_runtime_s"]
        rows[name] = {"examples": n, "tokens": tokens, "runtime_s": stats["train_runtime_s"], "tokens_per_s": rate,
                      "floor_tokens_per_s": floor[precision] / 4, "floor_fraction": rate * 4 / floor[precision],
                      "setup_s": wall - stats["train_runtime_s"], "train_loss": stats["train_loss"],
                      "note": EMULATED if precision == "bf16" and not native else ""}
        print(f"  train {name}: {rows[name]}", flush=True)
    today = rows[next(iter(variants))]
    rows["fp32 padded"]["loss_bits_as_today"] = rows["fp32 padded"]["train_loss"] == today["train_loss"]
    rows["fp32 padding-free"]["loss_diff_vs_today"] = rows["fp32 padding-free"]["train_loss"] - today["train_loss"]
    return rows


def eval_rows(base: str, tok: Any, examples: list[dict], max_length: int, batch_size: int, bf16_n: int,
              floor: dict[str, float], native: bool) -> dict[str, dict[str, Any]]:
    encs = [tokenize_with_assistant_mask(tok, [{"role": "user", "content": e["instruction"]},
                                               {"role": "assistant", "content": e["output"]}], max_length)
            for e in examples]
    fp32, bf16 = load_causal_lm(base), load_causal_lm(base, dtype="bfloat16")
    runs = {"today: one by one, full logits": ("fp32", len(examples), lambda n: nll_one_by_one(fp32, encs[:n])),
            "fp32 batched by length": ("fp32", len(examples), lambda n: example_nlls(
                fp32, tok, examples[:n], max_length=max_length, batch_size=batch_size)),
            "bf16 batched by length": ("bf16", bf16_n, lambda n: example_nlls(
                bf16, tok, examples[:n], max_length=max_length, batch_size=batch_size))}
    rows = {}
    for name, (precision, n, run) in runs.items():
        tokens = sum(len(e["input_ids"]) for e in encs[:n])
        seconds = timed(lambda r=run, k=n: r(k))[0]
        rate = tokens / seconds
        rows[name] = {"answers": n, "tokens": tokens, "seconds": seconds, "tokens_per_s": rate,
                      "floor_tokens_per_s": floor[precision] / 2, "floor_fraction": rate * 2 / floor[precision],
                      "note": EMULATED if precision == "bf16" and not native else ""}
        print(f"  eval {name}: {rows[name]}", flush=True)
    rows["lm_head_waste"] = lm_head_waste(encs, batch_size)
    return rows


def eval_setup(base: str, adapter: Path) -> dict[str, float]:
    """Setup of one evaluated model (tokenizer, base, adapter merged): a fresh load, then from the process cache."""
    def load() -> Any:
        return load_tokenizer(str(adapter)), load_causal_lm(base, adapter=str(adapter))
    with MODELS.disabled():
        fresh = timed(load)[0]
    MODELS.clear()
    load()
    return {"fresh_s": fresh, "cached_s": timed(load)[0]}


def numerics(subset: list[dict], base: str, ft: dict[str, Any], examples: list[dict], work: Path,
             seeds: tuple[int, ...], max_length: int) -> dict[str, Any]:
    """Performance (-mean NLL of the reference answers) of one subset fine-tuned with several training seeds in
    float32 and with the first seed in bf16, evaluated in float32 and in bf16; beside the seeds' SD:

        seed_sd = SD over seeds of perf(fp32 train, fp32 eval)
        diff(x) = perf(x) - perf(fp32 train, fp32 eval) for the same seed
        seed1_minus_seed2[p] = perf(fp32 train seed 1, p eval) - perf(fp32 train seed 2, p eval)

    The absolute bf16 shift of the NLL is mostly common to every model (the same rounded base weights score the
    same answers), so the study's comparisons see the paired figures: the seed gap and the training gain over the
    untuned base, each in both evaluation precisions.

    Also the bf16 evaluation of the float32 adapter merged into the base and rounded to bfloat16 (the design
    ``finetune.precision`` no longer uses), and the untuned base in both precisions (what training gained)."""
    perf: dict[str, float] = {}

    def score(name: str, adapter: str | None, precision: str, merge: bool = True) -> None:
        if precision == "bf16" and adapter and merge:  # merged then rounded: built here, outside reference_nll
            with MODELS.disabled():  # a private copy: .to() casts in place
                model = load_causal_lm(base, adapter=adapter, dtype="float32").to(torch.bfloat16)
            sums, counts = example_nlls(model, load_tokenizer(adapter), examples, max_length=max_length)
            perf[name] = -float(sums.sum() / counts.sum())
        else:
            perf[name] = reference_nll(base, examples, adapter=adapter, max_length=max_length,
                                       precision=precision)["performance"]
        print(f"  numerics {name}: {perf[name]:.6f}", flush=True)

    for seed in seeds:
        out = work / f"num_fp32_{seed}"
        train_sft(subset, base, out, finetune_cfg(ft, "fp32", False, seed=seed, data_seed=seed))
        score(f"fp32 train s{seed} / fp32 eval", str(out), "fp32")
    first = str(work / f"num_fp32_{seeds[0]}")
    score(f"fp32 train s{seeds[0]} / bf16 eval", first, "bf16", merge=False)
    score(f"fp32 train s{seeds[1]} / bf16 eval", str(work / f"num_fp32_{seeds[1]}"), "bf16", merge=False)
    score(f"fp32 train s{seeds[0]} / bf16 eval, merged+rounded", first, "bf16")
    out = work / "num_bf16"
    train_sft(subset, base, out, finetune_cfg(ft, "bf16", True, seed=seeds[0], data_seed=seeds[0]))
    score(f"bf16 train s{seeds[0]} / bf16 eval", str(out), "bf16", merge=False)
    score(f"bf16 train s{seeds[0]} / fp32 eval", str(out), "fp32")
    score("untuned / fp32 eval", None, "fp32")
    score("untuned / bf16 eval", None, "bf16")
    s = seeds[0]
    ref = perf[f"fp32 train s{s} / fp32 eval"]
    sd = float(np.std([perf[f"fp32 train s{k} / fp32 eval"] for k in seeds], ddof=1))
    compared = [f"fp32 train s{s} / bf16 eval", f"fp32 train s{s} / bf16 eval, merged+rounded",
                f"bf16 train s{s} / bf16 eval", f"bf16 train s{s} / fp32 eval"]
    diffs = {k: perf[k] - ref for k in compared}
    seed_gap = {p: perf[f"fp32 train s{s} / {p} eval"] - perf[f"fp32 train s{seeds[1]} / {p} eval"]
                for p in ("fp32", "bf16")}  # a model-model difference, as the study's comparisons are
    gain = {"fp32": ref - perf["untuned / fp32 eval"],
            "bf16 eval": perf[f"fp32 train s{s} / bf16 eval"] - perf["untuned / bf16 eval"],
            "bf16 eval, merged+rounded": perf[f"fp32 train s{s} / bf16 eval, merged+rounded"]
            - perf["untuned / bf16 eval"]}
    return {"performance": perf, "seed_sd": sd, "diff_vs_fp32": diffs, "seed1_minus_seed2": seed_gap,
            "abs_diff_over_seed_sd": {k: abs(v) / sd for k, v in diffs.items()}, "training_gain": gain}


def summary(report: dict[str, Any]) -> list[str]:
    """The figures as lines: tokens/s, share of the FLOP floor, padding waste, setup."""
    m, peak = report["machine"], report["peak_gflops"]
    lines = [f"{m['date']}, torch threads {m['torch_threads']}, native bf16: {'yes' if m['native_bf16'] else 'no'}, "
             f"load average before {m['load_before'][0]:.2f}, after {m['load_after'][0]:.2f}",
             f"matmul peak: fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s {peak['bf16_note']}"]
    for part, unit in (("train", "trained"), ("eval", "evaluated")):
        for name, r in report.get(part, {}).items():
            n = f"{r['examples']} conversations" if "examples" in r else f"{r['answers']} answers"
            extra = ("" if "loss_bits_as_today" not in r else
                     f", loss bits as today: {'yes' if r['loss_bits_as_today'] else 'no'}")
            extra += "" if "loss_diff_vs_today" not in r else f", loss - today's: {r['loss_diff_vs_today']:.2g}"
            extra += "" if "setup_s" not in r else f", setup {r['setup_s']:.1f} s"
            lines.append(f"{part} {name}: {r['tokens_per_s']:.1f} {unit} tokens/s = {100 * r['floor_fraction']:.0f}% "
                         f"of the floor {r['floor_tokens_per_s']:.1f} ({n}{extra}) {r['note']}".rstrip())
    pad = report.get("padding", {})
    if "train_padded" in pad:
        lines.append(f"padding: training batches {100 * pad['train_padded']:.1f}% padded -> padding-free "
                     f"{100 * pad['train_padding_free']:.0f}%")
    if "eval_lm_head_unscored" in pad:
        lines.append("LM-head positions not scored: one by one {:.1f}% -> batched {:.1f}%".format(
            *(100 * pad["eval_lm_head_unscored"][k] for k in ("before", "after"))))
    if "setup" in report:
        lines.append("setup: " + ", ".join(f"{k} {v:.2f} s" for k, v in report["setup"].items()))
    if "numerics" in report:
        num = report["numerics"]
        lines.append(f"numerics: training-seed SD {num['seed_sd']:.5f}; " + "; ".join(
            f"{k}: {v:+.5f} ({num['abs_diff_over_seed_sd'][k]:.1f} SD)" for k, v in num["diff_vs_fp32"].items()))
        lines.append("numerics: seed 1 - seed 2: " + ", ".join(
            f"{k} eval {v:+.5f}" for k, v in num["seed1_minus_seed2"].items()))
        lines.append("numerics: training gain over the untuned base: " + ", ".join(
            f"{k} {v:+.5f}" for k, v in num["training_gain"].items()))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="peak,setup,train,eval")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "divbench",
                    help="where the converted SmolLM2 lives (converted there on first use)")
    ap.add_argument("--train-convs", type=int, default=8, help="the mini study fine-tunes 16 (tokens/s barely moves)")
    ap.add_argument("--eval-answers", type=int, default=20, help="the mini study scores 40")
    ap.add_argument("--emulated-convs", type=int, default=1, help="bf16 fine-tune size where bf16 is emulated")
    ap.add_argument("--emulated-answers", type=int, default=2, help="bf16 evaluation size where bf16 is emulated")
    ap.add_argument("--subset-seed", type=int, default=0)
    ap.add_argument("--numerics", action="store_true", help="bf16 vs seed noise (18 min, 2 busy cores)")
    ap.add_argument("--numerics-seeds", default="1,2,3")
    ap.add_argument("--numerics-convs", type=int, default=8)
    ap.add_argument("--numerics-answers", type=int, default=8)
    ap.add_argument("--numerics-max-length", type=int, default=128)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    parts, native = set(a.parts.split(",")), this_cpu_has_bf16()
    report: dict[str, Any] = {"machine": {"torch_threads": torch.get_num_threads(), "native_bf16": native,
                                          "load_before": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}}
    cfg = mini_config(a.cache_dir)
    base = resolve_model(cfg["finetune"]["base_model"], a.cache_dir)
    params = sum(p.numel() for p in load_causal_lm(base).parameters())
    report["machine"]["params"] = params
    print(f"{report['machine']}", flush=True)

    peak = {"fp32": linear_gflops(torch.float32, 7), "bf16": linear_gflops(torch.bfloat16, 3)}
    floor = {p: g * 1e9 / params for p, g in peak.items()}  # tokens/s at 1 FLOP per parameter
    report["peak_gflops"] = peak | {"bf16_note": "" if native else EMULATED}
    print(f"matmul peak: fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s "
          f"{'' if native else '(' + EMULATED + ')'}", flush=True)

    convs = pools.sample_pool(pools.filter_prompt_length(
        pools.load_conversations(None, cfg["pool"]["format"], cfg["pool"]["on_invalid"], None),
        cfg["pool"]["max_prompt_chars"]), cfg["pool"]["size"], int(cfg["pool"]["seed"]))
    n_train = a.train_convs
    subset = [convs[i] for i in np.random.default_rng(a.subset_seed).choice(len(convs), n_train, replace=False)]
    ft = cfg["finetune"] | {"args": cfg["finetune"]["args"] | {"seed": 1, "data_seed": 1}}
    tok = load_tokenizer(base)
    nll_cfg = reference_nll_config(cfg["eval"])
    examples = reference_examples(nll_cfg)[:a.eval_answers]  # the mini sample's first answers
    max_length, batch = int(nll_cfg["max_length"]), int(nll_cfg.get("batch_size") or 8)
    with tempfile.TemporaryDirectory(prefix="bench_cpu_training_") as tmp:  # adapters of the runs, then gone
        work = Path(tmp)
        if "setup" in parts:
            report["setup"] = {"imports_per_process_s": import_seconds()}
            with MODELS.disabled():
                report["setup"]["base_load_fresh_s"] = timed(lambda: load_causal_lm(base))[0]
            load_causal_lm(base)
            report["setup"]["base_load_cached_s"] = timed(lambda: load_causal_lm(base))[0]
            print(f"  setup {report['setup']}", flush=True)
        if "train" in parts:
            lengths = [len(tokenize_with_assistant_mask(tok, c["messages"], int(ft["max_length"]))["input_ids"])
                       for c in convs]  # the whole mini pool: what the study's subsets are drawn from
            batch_size = int(ft["args"]["per_device_train_batch_size"])
            report["padding"] = {"train_padded": padded_fraction(lengths, batch_size), "train_padding_free": 0.0}
            report["train"] = train_rows(subset, base, ft, tok, work, n_train if native else a.emulated_convs, floor,
                                         native)
            if "setup" in parts:
                report["setup"] |= {"train_setup_fresh_s": report["train"][next(iter(report["train"]))]["setup_s"],
                                    "train_setup_reused_s": report["train"]["fp32 padded"]["setup_s"],
                                    **{f"eval_{k}": v for k, v in eval_setup(base, work / "fp32_padded").items()}}
        if "eval" in parts:
            report["eval"] = eval_rows(base, tok, examples, max_length, batch, len(examples) if native else
                                       a.emulated_answers, floor, native)
            report.setdefault("padding", {})["eval_lm_head_unscored"] = report["eval"].pop("lm_head_waste")
        if a.numerics:
            seeds = tuple(int(s) for s in a.numerics_seeds.split(","))
            report["numerics"] = numerics(subset[:a.numerics_convs], base, ft | {"max_length": a.numerics_max_length},
                                          examples[:a.numerics_answers], work, seeds, a.numerics_max_length)
    report["machine"]["load_after"] = os.getloadavg()
    print("\n".join(summary(report)))
    if a.out:
        a.out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
