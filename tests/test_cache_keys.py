"""A config key that does not change results changes no cache key; one that does changes some."""

from __future__ import annotations

import pytest

from experiments.engine.pipeline import STAGES, stage_specs, subset_plan
from experiments.engine.store import ArtifactStore
from tests.helpers import compose

BASES = {"reference_nll": ["debug=tiny"],
         "judged": ["debug=tiny", "eval=smoke_judge"],
         "paper": ["experiment=paper_qwen25"]}


def _keys(overrides: list[str]) -> dict[str, str]:
    cfg = compose("study", overrides + ["cache_dir=/c"])
    store = ArtifactStore("/c")
    keys = {}
    for entry in subset_plan(cfg["selection"]):
        for stage, spec in stage_specs(cfg, entry).items():
            keys[f"{entry['label']}-s{entry['seed']}/{stage}"] = store.path(stage, spec).name
    assert {k.split("/")[1] for k in keys} == set(STAGES) - {"design"}  # generate too; no design here
    return keys


RUNTIME = ["finetune.args.logging_steps=7", "++finetune.args.save_steps=3", "++finetune.args.save_total_limit=2",
           "++finetune.args.logging_first_step=true", "finetune.args.disable_tqdm=true",
           "++finetune.args.report_to=[wandb]", "finetune.resume=true", "finetune.keep_checkpoints=true",
           "++embed.batch_size=3", "embed.device=cuda", "device=cuda", "++embed.runtime.workers=4"]
JUDGED_RUNTIME = ["eval.generation.batch_size=2", "eval.generation.device=cuda"]
ENDPOINT_RUNTIME = ["eval.judge.concurrency=3"]  # an HTTP judge's requests in flight (a local judge takes 1 only)
RESULT = ["finetune.args.learning_rate=0.001", "finetune.max_length=128", "embed.max_length=32", "pool.size=41",
          "selection.size=5", "seed=7"]


@pytest.mark.parametrize("base", BASES)
def test_runtime_knobs_change_no_cache_key(base):
    before = _keys(BASES[base])
    extra = {"judged": JUDGED_RUNTIME + ["eval.judge.device=cuda"],
             "paper": JUDGED_RUNTIME + ENDPOINT_RUNTIME}.get(base, [])
    for override in RUNTIME + extra:
        assert _keys(BASES[base] + [override]) == before, f"{override} changed a cache key"


@pytest.mark.parametrize("override", RESULT)
def test_result_keys_change_cache_keys(override):
    before = _keys(BASES["reference_nll"])
    after = _keys(BASES["reference_nll"] + [override])
    assert set(after.values()) != set(before.values()), f"{override} changed no cache key"


@pytest.mark.parametrize("base, override", [("judged", "eval.judge.model=other-judge"),
                                            ("judged", "eval.mt_bench.judge_prefill=x"),
                                            ("paper", "eval/judge=vllm_server"),
                                            ("paper", "eval.alpaca_eval.annotator_seed=1")])
def test_judge_settings_change_only_the_eval_keys(base, override):
    """Re-pointing the judge re-judges the answers it is shown; it never regenerates them (nor retrains)."""
    before, after = _keys(BASES[base]), _keys(BASES[base] + [override])
    changed = {k.split("/")[1] for k in before if before[k] != after[k]}
    assert changed == {"eval"}, f"{override} changed {sorted(changed)}"


def test_evaluating_the_base_model_is_its_own_generation():
    """eval.adapter=false generates with the base model: never the fine-tuned model's cached answers."""
    before, after = _keys(BASES["judged"]), _keys(BASES["judged"] + ["eval.adapter=false"])
    changed = {k.split("/")[1] for k in before if before[k] != after[k]}
    assert changed == {"generate", "eval"}


def test_unset_holdout_keys_as_before_the_setting_existed():
    """pool.holdout=null draws the pool as without the key, so it keeps every key (debug=tiny sets it null on top
    of the demo's 60); a number draws another pool."""
    cfg = compose("study", BASES["reference_nll"] + ["cache_dir=/c"])
    assert cfg["pool"]["holdout"] is None
    entry = subset_plan(cfg["selection"])[0]
    unset = cfg | {"pool": {k: v for k, v in cfg["pool"].items() if k != "holdout"}}
    assert stage_specs(cfg, entry) == stage_specs(unset, entry)
    held = _keys(BASES["reference_nll"] + ["pool.holdout=3"])
    assert all(held[k] != v for k, v in _keys(BASES["reference_nll"]).items())
