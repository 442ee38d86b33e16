"""The powered study's wiring: subset options (pool_fraction, train_seeds), the design stage's keys, held-out pool
rows, chunk timings and the plan's CPU cost, curated files surviving a report, the NLL targets evaluator, and the
mini_v2 preset itself."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from divcore.errors import InputError
from divcore.ownership import write_manifest
from eval.nll_targets import check as check_nll_targets
from eval.nll_targets import summarise
from experiments.data.pools import split_holdout
from experiments.engine.dag import replicate_entries, stage_specs, subset_plan
from experiments.engine.pipeline import scoped_plan, study_entries, write_chunk_timings
from experiments.engine.plan import measured_cpu_hours
from experiments.report.tables import write_report
from tests.test_study_e2e import _compose


def _sel(**extra) -> dict:
    return {"size": 8, "seeds": [0], "subsets": [{"label": "r", "selector": "random", "seeds": [0, 1],
                                                  "train_seeds": [1, 2]},
                                                 {"label": "f", "selector": "farthest", "pool_fraction": 0.5,
                                                  "seeds": [3]}]} | extra


def test_subset_options_reach_the_plan_and_the_replicates():
    plan = subset_plan(_sel())
    assert [e.get("pool_fraction") for e in plan] == [None, None, 0.5] and "train_seeds" not in plan[2]
    reps = replicate_entries(plan, {"finetune": {"seeds": [1], "args": {"seed": 9}}})
    assert [(e["label"], e["seed"], e["train_seed"]) for e in reps] == [("r", 0, 1), ("r", 0, 2), ("r", 1, 1),
                                                                        ("r", 1, 2), ("f", 3, 1)]
    for bad, where in (({"pool_fraction": 1.5}, "pool_fraction"), ({"train_seeds": [1, 1]}, "train_seeds")):
        sel = _sel()
        sel["subsets"][1] |= bad
        with pytest.raises(InputError, match=f"selection.subsets.1.{where}"):
            subset_plan(sel)


def test_design_keys_exist_only_with_a_design(tmp_path):
    base = OmegaConf.to_container(_compose(["experiment=demo", f"cache_dir={tmp_path}"]), resolve=True)
    entry = subset_plan(base["selection"])[0]
    plain = stage_specs(base, entry)
    assert "design" not in plain and set(plain["subset"]) == {"embed", "subset"}  # old keys unchanged
    designed = base | {"selection": base["selection"] | {"max_overlap": 0.3}}
    specs = stage_specs(designed, entry)
    assert specs["design"]["design"]["max_overlap"] == 0.3 and specs["subset"]["design"] == specs["design"]["design"]
    assert stage_specs(designed)["design"] == specs["design"]  # one design for every selection.only chunk


def test_holdout_is_disjoint_from_the_pool_and_seeded():
    convs = [{"id": i} for i in range(50)]
    pool, held = split_holdout(convs, 20, 5, seed=3)
    assert len(pool) == 20 and len(held) == 5 and not {c["id"] for c in pool} & {c["id"] for c in held}
    assert (pool, held) == split_holdout(convs, 20, 5, seed=3)
    assert split_holdout(convs, 20, None, 3)[1] == []
    with pytest.raises(InputError, match="holds only 50"):
        split_holdout(convs, 48, 5, 3)


def test_chunk_timings_give_the_plan_its_cpu_cost(tmp_path):
    (tmp_path / "timings").mkdir()
    for i, (wall, n) in enumerate([(300.0, 2), (500.0, 2)]):
        embed = {"executed": 1, "executed_wall_s": 3600.0} if i == 0 else {"reused": 1}  # built by the first chunk
        (tmp_path / "timings" / f"chunk-{i}.json").write_text(json.dumps({"timings": {
            "embed": {"wall_s": 3600.0 * (1 - i), "peak_rss_gib": 1} | embed,
            "finetune": {"wall_s": wall, "peak_rss_gib": 1, "executed": n, "executed_wall_s": wall}}}))
    hours = measured_cpu_hours(tmp_path)
    assert hours["finetune"] == pytest.approx(800 / 4 / 3600) and hours["embed"] == pytest.approx(1.0)


def test_report_keeps_the_preregistration_and_chunk_timings(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    write_manifest(out, [], "divbench-study")  # committed with the pre-registration: the folder is divbench's
    (out / "PREREGISTRATION.md").write_text("before any run")  # written before any run, by hand
    entries = [{"label": "s0", "seed": 0}]
    timings = {"finetune": {"wall_s": 9.0, "peak_rss_gib": 1.0, "executed": 1, "executed_wall_s": 9.0}}
    chunk = write_chunk_timings({"study": "x", "results_dir": str(out), "finetune": {"base_model": "m"},
                                 "eval": {}}, entries, timings)
    assert chunk.parent == out / "timings" and json.loads(chunk.read_text())["labels"] == ["s0"]
    rng = np.random.default_rng(0)
    runs = pd.DataFrame({"subset": [f"s{i}" for i in range(6)], "selector": "random", "seed": range(6),
                         "performance": rng.normal(size=6), "novelsum": rng.normal(size=6)})
    write_report(runs, ["novelsum"], out, n_boot=10, n_perm=0)
    assert (out / "PREREGISTRATION.md").read_text() == "before any run" and chunk.exists()
    assert (out / "runs.csv").exists()


def test_nll_targets_summaries_and_config_checks():
    s = summarise(np.array([4.0, 1.0, 0.0]), np.array([2, 1, 0]))
    assert s == {"nll": 5 / 3, "example_mean": 1.5, "n_tokens": 3, "n_scored": 2}
    good = {"primary": "ref", "max_length": 64, "targets": {"ref": {"kind": "reference", "path": "x.json"},
                                                            "held": {"kind": "heldout"}}}
    check_nll_targets(good)
    for bad, msg in (({"primary": "nope"}, "eval.primary"), ({"max_length": 0}, "max_length"),
                     ({"targets": {"ref": {"kind": "judge"}}}, "kind"),
                     ({"targets": {"ref": {"kind": "reference"}}}, "path")):
        with pytest.raises(InputError, match=msg):
            check_nll_targets(good | bad)


def test_scope_trains_part_of_the_plan_and_keeps_its_design(tmp_path):
    """selection.scope: '<label>' takes every seed of a label, '<label>:<seed>' one; the design key (token matching,
    overlap cap) stays the whole plan's, so the scoped subsets are the full study's own."""
    sel = _sel(scope=["f", "r:1"], max_overlap=0.3)
    assert [(e["label"], e["seed"]) for e in scoped_plan(sel)] == [("r", 1), ("f", 3)]
    assert scoped_plan(_sel()) == subset_plan(_sel())
    for bad in (["r:7"], ["nope"], "r", []):
        with pytest.raises(InputError, match="selection.scope"):
            scoped_plan(_sel(scope=bad))
    base = OmegaConf.to_container(_compose(["experiment=demo", f"cache_dir={tmp_path}",
                                            "+selection.max_overlap=0.3"]), resolve=True)
    scoped = base | {"selection": base["selection"] | {"scope": ["random:1", "kcenter"]}}
    assert [(e["label"], e["seed"]) for e in study_entries(scoped)] == [("random", 1), ("kcenter", 0)]
    assert stage_specs(scoped)["design"] == stage_specs(base)["design"]
    with pytest.raises(InputError, match="selection.only"):  # a chunk inside the scope
        study_entries(scoped | {"selection": scoped["selection"] | {"only": ["novelselect"]}})


def test_subset_train_seeds_off_trains_each_subset_once_per_finetune_seeds():
    cfg = {"finetune": {"seeds": [1], "args": {"seed": 9}}, "selection": {"subset_train_seeds": False}}
    reps = replicate_entries(subset_plan(_sel()), cfg)
    assert [(e["label"], e["seed"], e["train_seed"]) for e in reps] == [("r", 0, 1), ("r", 1, 1), ("f", 3, 1)]
    assert all(e["replicated"] for e in reps)  # named <label>-s<seed>-t1, as the full study's seed-1 replicates
    with pytest.raises(InputError, match="subset_train_seeds must be true or false"):
        replicate_entries(subset_plan(_sel()), cfg | {"selection": {"subset_train_seeds": "no"}})


def test_mini_v2_gemma_preset_is_a_stratified_half_on_mini_v2s_design(tmp_path):
    """The replication preset: Gemma-3-270M base, one seed, the first ceil(n/2) seeds of every label (35 of 64),
    on the same design key as mini_v2 (so its subsets are mini_v2's, from one cache)."""
    full = OmegaConf.to_container(_compose(["experiment=mini_v2", f"cache_dir={tmp_path}"]), resolve=True)
    cfg = OmegaConf.to_container(_compose(["experiment=mini_v2_gemma", f"cache_dir={tmp_path}"]), resolve=True)
    assert cfg["finetune"]["base_model"] == "packaged:gemma3-270m" and cfg["finetune"]["chat_template"] == "chatml_bos"
    entries = study_entries(cfg)
    plan = subset_plan(full["selection"])
    assert len(entries) == 35 >= len(plan) / 2 and {e["train_seed"] for e in entries} == {1}
    for label, group in pd.DataFrame(plan).groupby("label"):
        seeds = sorted(group["seed"])
        assert sorted(e["seed"] for e in entries if e["label"] == label) == seeds[:(len(seeds) + 1) // 2]
    assert stage_specs(cfg)["design"] == stage_specs(full)["design"]
    assert cfg["eval"] == full["eval"] and cfg["finetune"]["max_length"] == full["finetune"]["max_length"]


def test_mini_v2_preset_meets_the_issue(tmp_path):
    cfg = OmegaConf.to_container(_compose(["experiment=mini_v2", f"cache_dir={tmp_path}"]), resolve=True)
    plan = subset_plan(cfg["selection"])
    reps = replicate_entries(plan, cfg)
    assert len(plan) >= 64 and cfg["selection"]["size"] == 32 and cfg["finetune"]["max_length"] >= 384
    assert cfg["selection"]["size"] // cfg["finetune"]["args"]["per_device_train_batch_size"] >= 8
    assert sum(e["selector"] == "duplicate" for e in plan) <= 0.1 * len(plan)
    assert len(reps) - len(plan) == len(plan) // 4  # a second training seed on a quarter of the subsets
    by = pd.DataFrame(plan).groupby("label").size()
    assert by["random"] == 12 and all(by[f"cluster_{c}"] == 3 for c in (1, 2, 4, 8))
    assert {e["selector"] for e in plan if e.get("pool_fraction") == 0.5} == {"farthest", "qdit", "repr_filter",
                                                                               "mig"}
    assert cfg["pool"]["size"] == 2000 and cfg["pool"]["holdout"] == 100 and cfg["selection"]["max_overlap"] == 0.3
    targets = cfg["eval"]["targets"]
    assert cfg["eval"]["max_length"] == 512 and targets["reference"]["n_examples"] == 60
    assert targets["davinci003"]["n_examples"] == 30 and targets["davinci003"]["path"].endswith("text_davinci_003.json")
