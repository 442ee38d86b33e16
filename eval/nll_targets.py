"""Several judge-free likelihood targets in one pass over the model: ``eval.name=nll_targets``.

For each target ``t`` (a fixed sample of (prompt, answer) pairs) and each example ``i`` with assistant tokens
``j = 1..n_i`` (rendered with the model's chat template, cut at ``max_length``;
:func:`eval.reference_nll.example_nlls`):

    nll_t              = sum_i sum_j nll_ij / sum_i n_i        token-weighted mean (long answers weigh more)
    nll_t_example_mean = (1 / N) sum_i (sum_j nll_ij / n_i)    per-example mean (every answer weighs the same)
    gain_t             = nll_t(untuned base model) - nll_t     what fine-tuning moved (> 0: better), and the same
                                                               for the per-example mean (``gain_t_example_mean``)

``performance`` is ``-nll`` of the ``primary`` target. Targets come from AlpacaEval-style reference files
(``kind: reference``: ``instruction`` / ``output`` records, a seeded sample of ``n_examples``) or from held-out
conversations of the study's pool (``kind: heldout``: every assistant turn scored, the pipeline hands the file in as
``EvalModel.data['heldout']``). The untuned model's numbers are computed once per (base model, targets) and kept
under ``runtime.cache_dir`` (a runtime knob: not part of any cache key).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from divcore.errors import InputError
from divcore.hashing import stable_hash
from divcore.io import atomic_write, read_jsonl
from eval.evaluators import EvalModel, Scoring, register
from eval.precision import eval_precision
from eval.reference_nll import example_nlls, load_reference

log = logging.getLogger(__name__)

FILE = "nll_targets.json"
KINDS = ("reference", "heldout")


def _targets(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The targets that are on: a target set to null is off (``eval.targets.reference=null``; eval=nll_heldout)."""
    targets = cfg.get("targets") or {}
    if not isinstance(targets, dict):
        raise InputError("eval.targets must map target names to {kind, path, n_examples, seed}")
    targets = {name: t for name, t in targets.items() if t is not None}
    if not targets:
        raise InputError("eval.targets must map target names to {kind, path, n_examples, seed}; none is on")
    return targets


def check(cfg: dict[str, Any], judge: Any = None) -> None:
    """Before any work: every target's kind and sample size, the primary target and max_length."""
    targets = _targets(cfg)
    for name, t in targets.items():
        if t.get("kind") not in KINDS:
            raise InputError(f"eval.targets.{name}.kind must be one of {list(KINDS)}, got {t.get('kind')!r}")
        n = t.get("n_examples")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n <= 0):
            raise InputError(f"eval.targets.{name}.n_examples must be a positive integer or null, got {n!r}")
        if t["kind"] == "reference" and not t.get("path"):
            raise InputError(f"eval.targets.{name}.path is empty: name an AlpacaEval-style reference file")
    if cfg.get("primary") not in targets:
        raise InputError(f"eval.primary={cfg.get('primary')!r} is not among eval.targets {sorted(targets)}")
    length = cfg.get("max_length")
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise InputError(f"eval.max_length must be a positive integer, got {length!r}")


def heldout_examples(path: str | Path, n: int | None) -> list[list[dict[str, str]]]:
    """The held-out conversations (the first ``n``; the pool stage already drew them at random)."""
    convs = read_jsonl(Path(path))
    return [c["messages"] for c in convs[:n]]


def target_examples(name: str, t: dict[str, Any], data: dict[str, Path]) -> list[list[dict[str, str]]]:
    """Target ``name``'s examples as message lists."""
    if t["kind"] == "reference":
        return [[{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]
                for r in load_reference(t["path"], t.get("n_examples"), int(t.get("seed", 0)))]
    if "heldout" not in data:
        raise InputError(f"eval.targets.{name} scores held-out conversations but the pool has none: set "
                         "pool.holdout to their number")
    return heldout_examples(data["heldout"], t.get("n_examples"))


def summarise(sums: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """Token-weighted and per-example means of per-example (NLL sum, token count); examples without a scored token
    are left out of the per-example mean.

    >>> summarise(np.array([2.0, 9.0]), np.array([1, 3]))
    {'nll': 2.75, 'example_mean': 2.5, 'n_tokens': 4, 'n_scored': 2}
    """
    scored = counts > 0
    if not scored.any():
        raise InputError("no answer token fits in eval.max_length: raise it")
    return {"nll": float(sums.sum() / counts.sum()), "example_mean": float((sums[scored] / counts[scored]).mean()),
            "n_tokens": int(counts.sum()), "n_scored": int(scored.sum())}


def score_model(model: Any, tok: Any, examples: dict[str, list], max_length: int, device: str,
                batch_size: int = 8) -> dict[str, dict]:
    out = {}
    for name, convs in examples.items():
        sums, counts = example_nlls(model, tok, convs, max_length=max_length, device=device, batch_size=batch_size)
        out[name] = summarise(sums, counts)
    return out


def untuned_scores(base: str, examples: dict[str, list], cfg: dict[str, Any], compute: Any) -> dict[str, dict]:
    """The untuned base model's scores, read from ``runtime.cache_dir`` or computed once (``compute()``). Keyed by
    the examples themselves too: a held-out target's conversations come from the study's pool, not from this config
    (another pool seed or ``pool.holdout`` holds out others)."""
    key = stable_hash({"model": base, "precision": eval_precision(cfg),
                       "targets": {k: v for k, v in cfg.items() if k not in ("runtime", "device", "batch_size")},
                       "examples": stable_hash(examples)})
    folder = Path(((cfg.get("runtime") or {}).get("cache_dir")) or Path(base).parent) / "untuned_nll"
    path = folder / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    scores = compute()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(scores, indent=1))
    return scores


def _generate(model: EvalModel, cfg: dict[str, Any], out_dir: Path) -> None:
    from finetune.models import load_causal_lm, load_tokenizer
    from finetune.precision import TORCH_DTYPES

    targets = _targets(cfg)
    length, device, batch = int(cfg["max_length"]), cfg.get("device", "cpu"), int(cfg.get("batch_size") or 8)
    dtype = TORCH_DTYPES[eval_precision(cfg)]  # the evaluation's precision (eval.precision), as reference_nll's
    examples = {name: target_examples(name, t, model.data) for name, t in targets.items()}
    tok = load_tokenizer(model.adapter or model.path)
    tuned = score_model(load_causal_lm(model.path, adapter=model.adapter, device=device, dtype=dtype,
                                       merge=dtype == TORCH_DTYPES["fp32"]), tok, examples, length, device, batch)
    row: dict[str, Any] = {"eval_precision": eval_precision(cfg)}
    if cfg.get("gain_over_untuned", True) and model.adapter is not None:
        base = untuned_scores(model.path, examples, cfg,
                              lambda: score_model(load_causal_lm(model.path, device=device, dtype=dtype), tok,
                                                  examples, length, device, batch))
        row |= {f"gain_{n}": base[n]["nll"] - s["nll"] for n, s in tuned.items()}
        row |= {f"gain_{n}_example_mean": base[n]["example_mean"] - s["example_mean"] for n, s in tuned.items()}
        row |= {f"untuned_nll_{n}": base[n]["nll"] for n in tuned}
    for n, s in tuned.items():
        row |= {f"nll_{n}": s["nll"], f"nll_{n}_example_mean": s["example_mean"], f"n_tokens_{n}": s["n_tokens"],
                f"n_examples_{n}": len(examples[n])}
    row["performance"] = -tuned[cfg["primary"]]["nll"]
    atomic_write(out_dir / FILE, json.dumps(row, indent=2))


@register("nll_targets", generate=_generate, performance_column="neg_nll_primary", check=check,
          columns=lambda cfg: tuple(f"nll_{n}" for n in _targets(cfg)))
def _score(gen_dir: Path, cfg: dict[str, Any], scoring: Scoring) -> dict[str, Any]:
    return json.loads((gen_dir / FILE).read_text())
