"""The dry run's plan.csv: no key, no GPU; one row per (subset, seed, stage); judge calls at paper settings;
estimates from the configs, then from what a previous run measured."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from omegaconf import OmegaConf

from experiments.cli.study import run
from experiments.engine.pipeline import STAGES, stage_specs, subset_plan
from experiments.engine.store import ArtifactStore
from tests.test_study_e2e import _compose

EXPERIMENTS = {"demo": ["experiment=demo"], "demo_judged": ["experiment=demo", "eval=demo"],  # demo's options
               "paper_llama3": ["experiment=paper_llama3"], "paper_qwen25": ["experiment=paper_qwen25"]}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_dry_run_needs_no_key_and_writes_the_plan(tmp_path, monkeypatch, experiment):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    overrides = [*EXPERIMENTS[experiment], "dry_run=true", f"cache_dir={tmp_path}/cache",
                 f"results_dir={tmp_path}/results"]
    plan = run(_compose(overrides))["dry_run"]
    on_disk = pd.read_csv(tmp_path / "results" / "plan.csv")
    assert list(on_disk.columns[:4]) == ["subset", "seed", "stage", "status"]
    entries = subset_plan(_compose(overrides).selection)
    assert len(on_disk) == len(plan) == len(entries) * (len(STAGES) - 1)  # every stage but the design (none here)
    assert set(on_disk["status"]) == {"to run"} and not (tmp_path / "cache").exists()
    evals = on_disk[on_disk["stage"] == "eval"]
    if experiment.startswith("paper"):
        assert (evals["judge_calls"] == 805 + 2 * 80).all() and on_disk["judge_calls"].sum() == 965 * len(entries)
        assert (evals["est_usd"] > 0).all() and (evals["est_judge_input_tokens"] > 965 * 300).all()
        assert (evals["est_judge_output_tokens"] >= 805).all()
        ft = on_disk[on_disk["stage"] == "finetune"]["est_gpu_hours"]
        assert (ft > 0).all() and ft.nunique() == 1
        embed = on_disk[on_disk["stage"] == "embed"]
        assert (embed["est_gpu_hours"] > 0).sum() == 1 and embed["shared_with_first"].sum() == len(entries) - 1
    else:  # the CPU demo: no GPU hours; its offline target asks no judge, the local smoke judge costs nothing
        calls = 4 + 2 * 2 if experiment == "demo_judged" else 0
        assert (on_disk["est_gpu_hours"] == 0).all() and (evals["judge_calls"] == calls).all()
        assert (evals["est_usd"] == 0).all()


def test_plan_uses_measured_tokens_and_timings(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    overrides = ["experiment=paper_llama3", "dry_run=true", f"cache_dir={tmp_path}/cache",
                 f"results_dir={tmp_path}/results"]
    resolved = OmegaConf.to_container(_compose(overrides), resolve=True)
    first = subset_plan(resolved["selection"])[0]
    store = ArtifactStore(tmp_path / "cache")
    with store.build("eval", stage_specs(resolved, first)["eval"]) as tmp:  # a finished, judged model
        (tmp / "eval.json").write_text(json.dumps({"alpaca_eval_n": 805, "mt_bench_n": 160,
                                                   "judge_input_tokens": 965 * 1000, "judge_output_tokens": 965 * 50}))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "timings.json").write_text(json.dumps(
        {"finetune": {"wall_s": 7200.0, "peak_rss_gib": 1.0, "executed": 2, "executed_wall_s": 7200.0}}))
    plan = run(_compose(overrides))["dry_run"].set_index(["subset", "seed", "stage"])
    evals = plan.xs("eval", level="stage")
    assert (evals["est_judge_input_tokens"] == 965 * 1000).all()
    assert (evals["est_judge_output_tokens"] == 965 * 50).all()
    assert (evals["estimate_source"] == "measured").all()
    assert evals.loc[(first["label"], first["seed"]), "status"] == "done"
    # gpt-4.1 list price: USD 2 / 8 per million tokens
    assert evals["est_usd"].iloc[0] == pytest.approx((965 * 1000 * 2 + 965 * 50 * 8) / 1e6)
    assert (plan.xs("finetune", level="stage")["est_gpu_hours"] == 1.0).all()  # 7200 s over 2 runs
