"""AlpacaEval (Dubois et al. 2024, "Length-Controlled AlpacaEval") through the ``alpaca_eval`` library itself.

- Outputs are generated for the AlpacaEval instructions in alpaca_eval's format (``instruction``, ``output``,
  ``generator``, ``dataset``) and checked against the reference file: same instructions, same order, none empty.
- Annotation is alpaca_eval's ``PairwiseAnnotator`` with one of its packaged annotator configs (prompt template,
  parser, decoding settings: ``weighted_alpaca_eval_gpt4_turbo`` for 2.0, ``alpaca_eval_gpt4`` for 1.0); only the
  completion function is ours, so any :mod:`eval.judges` judge (endpoint or local model) answers the prompts.
  The annotation cache lives in a directory per judge identity, so a re-pointed judge never reuses another
  judge's annotations.
- Aggregation is ``alpaca_eval.metrics.get_winrate``. The length-controlled win rate needs ``df_gamed.csv``
  from the hub: it is computed when that file is in the local hub cache, and otherwise reported as unavailable
  with the command that fetches it (never guessed, never a crash).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from divcore.errors import InputError
from divcore.hashing import stable_hash
from divcore.io import atomic_write
from eval.generation import Generator
from eval.judges import Judge, cache_lock, judge_many

log = logging.getLogger(__name__)

LC_HINT = ("huggingface-cli download tatsu-lab/alpaca_eval df_gamed.csv --repo-type dataset "
           "(once, with network access)")


def _load(annotations: str | Path | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(annotations, (str, Path)):
        path = Path(annotations)
        if not path.exists():
            raise InputError(f"annotation file {path} does not exist")
        try:
            annotations = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: malformed JSON ({e.msg})") from None
    rows = list(annotations)
    if not rows or not all(isinstance(r, dict) and "preference" in r for r in rows):
        raise InputError("annotations must be a non-empty list of records with a 'preference' field")
    return rows


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _df_gamed_path() -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache("tatsu-lab/alpaca_eval", "df_gamed.csv", repo_type="dataset")
    return found if isinstance(found, str) else None


def _length_controlled(valid: list[dict[str, Any]]) -> tuple[float | None, float | None, str]:
    if _df_gamed_path() is None:
        return None, None, f"not computed: df_gamed.csv is not in the hub cache; fetch it with `{LC_HINT}`"
    needed = {"output_1", "output_2", "generator_1", "generator_2", "index", "annotator"}
    if not needed <= set(valid[0]):
        return None, None, f"not computed: annotations lack {sorted(needed - set(valid[0]))}"
    import pandas as pd
    from alpaca_eval.metrics import get_length_controlled_winrate

    lc = get_length_controlled_winrate(pd.DataFrame(valid), save_weights_dir=None)
    return float(lc["length_controlled_winrate"]), float(lc["lc_standard_error"]), "alpaca_eval length_controlled_v1"


def alpaca_eval_summary(annotations: str | Path | Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Win rate (%), its standard error, discrete win rate, counts, and the length-controlled win rate when
    alpaca_eval can compute it. Annotations with no preference (judge failures) are excluded and counted."""
    from alpaca_eval.metrics import get_winrate

    rows = _load(annotations)
    valid = [r for r in rows if not _is_missing(r["preference"])]
    if not valid:
        raise InputError(f"none of the {len(rows)} annotations has a preference (every judgment failed to parse)")
    summary = {k: (float(v) if k not in ("n_wins", "n_wins_base", "n_draws", "n_total") else int(v))
               for k, v in get_winrate(valid).items()}
    summary["n_failed_annotations"] = len(rows) - len(valid)
    lc, lc_se, note = _length_controlled(valid)
    summary |= {"length_controlled_winrate": lc, "lc_standard_error": lc_se, "length_controlled_note": note}
    return summary


def check_model_outputs(outputs: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]],
                        source: str = "model outputs") -> None:
    """Raise unless ``outputs`` answer exactly the reference's instructions, in its order, none empty."""
    bad = [i for i, o in enumerate(outputs) if not isinstance(o, dict) or not {"instruction", "output"} <= set(o)]
    if bad:
        raise InputError(f"{source}: record(s) {bad[:5]} lack 'instruction' or 'output'")
    got = [o["instruction"] for o in outputs]
    want = [r["instruction"] for r in reference]
    if got != want:
        missing, extra = set(want) - set(got), set(got) - set(want)
        if missing or extra:
            detail = (f"{len(missing)} reference instruction(s) missing, {len(extra)} not in the reference "
                      f"(first extra: {next(iter(extra))[:60]!r})" if extra else
                      f"{len(missing)} reference instruction(s) missing (first: {next(iter(missing))[:60]!r})")
        elif len(got) != len(want):
            detail = f"{len(got)} records for {len(want)} instructions (duplicates)"
        else:
            first = next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)
            detail = f"instructions are reordered (first difference at record {first})"
        raise InputError(f"{source} do not match the {len(want)} AlpacaEval instructions: {detail}. Generate "
                         "one output per instruction, in the reference file's order")
    empty = [i for i, o in enumerate(outputs) if not isinstance(o["output"], str) or not o["output"].strip()]
    if empty:  # a null or a number is no answer either: str(None) would be judged as the answer "None"
        first = outputs[empty[0]]["output"]
        raise InputError(f"{source}: {len(empty)} empty output(s) (empty, null or not text), first at record "
                         f"{empty[0]} ({want[empty[0]][:60]!r}: output {first!r:.40}); an answer must be non-empty "
                         "text to be judged; regenerate it")


def read_model_outputs(path: str | Path, reference: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A model-output file in alpaca_eval's format, validated against the reference instructions."""
    from divcore.io import read_text

    path = Path(path)
    try:
        outputs = json.loads(read_text(path))  # read_text names the file and byte of a non-UTF-8 file
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read AlpacaEval model outputs {path}: {e}") from None
    if not isinstance(outputs, list):
        raise InputError(f"{path}: expected a JSON list of {{instruction, output, generator}} records")
    check_model_outputs(outputs, reference, source=str(path))
    return outputs


def generate_outputs(generator: Generator, reference: Sequence[dict[str, Any]], generator_name: str,
                     max_new_tokens: int) -> list[dict[str, Any]]:
    """Greedy answers to the reference instructions, in alpaca_eval's model-output format."""
    texts = generator.generate([[{"role": "user", "content": r["instruction"]}] for r in reference],
                               [0.0] * len(reference), max_new_tokens)
    outputs = [{"dataset": r.get("dataset", "alpaca_eval"), "instruction": r["instruction"], "output": t,
                "generator": generator_name} for r, t in zip(reference, texts, strict=True)]
    check_model_outputs(outputs, reference, source=f"outputs generated by {generator_name}")
    return outputs


def _completions(judge: Judge):
    """alpaca_eval's ``fn_completions`` contract, answered by a divbench judge ``concurrency`` prompts at a time.

    Each completion carries its token usage; ``price_per_example`` is its cost from the judge's price table (NaN
    without one, as alpaca_eval writes for an unknown price)."""
    from alpaca_eval.utils import prompt_to_chatml

    def complete(prompts: Sequence[str], model_name: str | None = None, max_tokens: int = 100,
                 temperature: float = 0.0, logprobs: bool = False, top_logprobs: int | None = None,
                 **ignored: Any) -> dict[str, list]:
        if model_name and model_name != judge.config.model:
            log.info("alpaca_eval annotator asks for %s; the configured judge %s answers instead", model_name,
                     judge.config.model)

        def ask(prompt: str) -> dict[str, Any]:
            return judge.chat(prompt_to_chatml(prompt), max_tokens=int(max_tokens), temperature=float(temperature),
                              top_logprobs=int(top_logprobs or 5) if logprobs else None)

        choices = judge_many(ask, list(prompts), judge.config.concurrency, desc="AlpacaEval judging")
        prices = [judge.config.cost_usd(*_tokens(c)) for c in choices]
        return {"completions": [c["text"] for c in choices], "completions_all": choices,
                "price_per_example": [math.nan if p is None else p for p in prices],
                "time_per_example": [math.nan] * len(choices)}

    return complete


def _tokens(choice: dict[str, Any] | None) -> tuple[int | None, int | None]:
    usage = (choice or {}).get("usage") or {} if isinstance(choice, dict) else {}
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


def annotation_usage(annotation: dict[str, Any]) -> dict[str, Any]:
    """Prompt / completion tokens and USD of one annotation (from its raw completion and price column)."""
    prompt, completion = _tokens(annotation.get("preference_raw_completion"))
    price = annotation.get("preference_price_per_example")
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "judge_usd": None if _is_missing(price) else float(price)}


def judge_dir(cache_dir: str | Path, judge: Judge) -> Path:
    """Where everything a judge produced is cached: one directory per judge identity."""
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in judge.config.model)[-48:]
    return Path(cache_dir) / "judges" / f"{slug}-{stable_hash(judge.config.identity)[:12]}"


def annotator_config(annotator: str, dest: Path) -> Path:
    """Copy of alpaca_eval's packaged annotator config with an absolute prompt path and no completion function
    (ours is passed in), written under the judge's directory."""
    from alpaca_eval import constants

    src = Path(constants.EVALUATORS_CONFIG_DIR) / annotator / "configs.yaml"
    if not src.exists():
        raise InputError(f"unknown alpaca_eval annotator {annotator!r}; e.g. weighted_alpaca_eval_gpt4_turbo "
                         "(AlpacaEval 2.0) or alpaca_eval_gpt4 (1.0)")
    cfg = yaml.safe_load(src.read_text())[annotator]
    cfg.pop("fn_completions", None)
    cfg["prompt_template"] = str(Path(constants.EVALUATORS_CONFIG_DIR) / cfg["prompt_template"])
    path = dest / annotator / "configs.yaml"
    atomic_write(path, yaml.safe_dump({annotator: cfg}))
    return path


def _pairwise_annotator(**kwargs: Any):
    """alpaca_eval's ``PairwiseAnnotator`` whose cache file is replaced atomically: alpaca_eval writes it in
    place (``to_json``), so a kill mid-write would leave a file that no later run can read."""
    from alpaca_eval.annotators import PairwiseAnnotator

    class AtomicPairwiseAnnotator(PairwiseAnnotator):
        def save(self, path: Any = None) -> None:
            path = path or self.caching_path
            if path is None:
                return
            self._refresh_annotations_()  # as alpaca_eval's save: merge what is on disk, then write everything
            if not self.is_store_missing_annotations:
                self.df_annotations = self.df_annotations[~self.df_annotations[self.annotation_key].isna()]
            tmp = Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}")
            try:
                self.df_annotations.to_json(tmp, orient="records", indent=2, double_precision=15)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

    return AtomicPairwiseAnnotator(**kwargs)


def annotate(model_outputs: list[dict[str, Any]], reference: list[dict[str, Any]], judge: Judge, annotator: str,
             cache_dir: str | Path, seed: int = 0) -> list[dict[str, Any]]:
    """alpaca_eval head-to-head annotations of the model against the reference (preference 2: model wins).

    The annotation cache is one file per (judge, annotator, seed, model outputs), so jobs judging different models
    never share a file; a lock on it makes a twin judging the same outputs wait, then reuse every annotation."""
    check_model_outputs(model_outputs, reference)
    root = judge_dir(cache_dir, judge) / "alpaca_eval"
    config = annotator_config(annotator, root)
    outputs_key = stable_hash([[r["instruction"], r["output"]] for r in reference] +
                              [[o["instruction"], o["output"], o.get("generator")] for o in model_outputs])
    caching_path = config.parent / f"annotations_seed{seed}_{outputs_key}.json"
    with cache_lock(caching_path.with_name(caching_path.name + ".lock"),
                    f"AlpacaEval annotation with {judge.config.model}"):
        pairwise = _pairwise_annotator(annotators_config=str(config), seed=seed, fn_completions=_completions(judge),
                                       caching_path=str(caching_path))
        rows = pairwise.annotate_head2head(outputs_1=reference, outputs_2=model_outputs, is_ordered=True)
    index = {r["instruction"]: i for i, r in enumerate(reference)}
    return [r | {"index": r.get("index", index[r["instruction"]]), "judge": judge.config.label} for r in rows]


def judgment_table(annotations: list[dict]) -> list[dict]:
    """Per instruction: the reference and model outputs the judge compared, and its preference (2: model wins)."""
    return [{"instruction": a["instruction"], "reference_output": a.get("output_1"), "model_output": a.get("output_2"),
             "preference": a.get("preference"), "judge_reply": str(a.get("preference_raw_completion", ""))[:2000]}
            for a in annotations]
