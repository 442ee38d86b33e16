"""The stage DAG: every key is built from what a stage consumes, the order is checked, artifacts own their files."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from experiments.engine.pipeline import DAG, STAGES, stage_specs, subset_plan
from experiments.engine.stages import KeyInputs, Stage, Subset, check_dag, stage_keys
from tests.test_study_e2e import _compose


def test_a_stage_must_follow_what_it_consumes():
    late = (Stage("a", ("b",), Subset, lambda k: {}), Stage("b", (), Subset, lambda k: {}))
    with pytest.raises(ValueError, match="stage 'a': consumes \\['b'\\] not listed before it"):
        check_dag(late)
    assert [s.name for s in DAG] == list(STAGES)


@pytest.mark.parametrize("overrides", [["debug=tiny"], ["debug=tiny", "eval=smoke_judge"]])
def test_every_key_holds_the_keys_it_consumes(overrides, tmp_path):
    cfg = OmegaConf.to_container(_compose(overrides + [f"cache_dir={tmp_path}"]), resolve=True)
    entry = subset_plan(cfg["selection"])[0] | {"train_seed": 42}
    specs = stage_specs(cfg, entry)
    assert list(specs) == list(STAGES)  # a judge-free evaluation has a generate stage too
    for stage in DAG:
        assert all(specs[stage.name][c] == specs[c] for c in stage.consumes), stage.name
    assert set(stage_specs(cfg)) == {s.name for s in DAG if not s.per_subset}


def test_a_stage_without_its_config_drops_the_stages_after_it():
    dag = (Stage("a", (), Subset, lambda k: {"a": 1}), Stage("b", ("a",), Subset, lambda k: None),
           Stage("c", ("b",), Subset, lambda k: {"c": 1}), Stage("d", ("a",), Subset, lambda k: {"d": 1}))
    assert stage_keys(dag, KeyInputs({}, {}, None)) == {"a": {"a": 1}, "d": {"a": {"a": 1}, "d": 1}}


def test_subset_artifact_round_trip(tmp_path):
    Subset.write(tmp_path, [3, 1, 3], {"selector": "duplicate"})
    assert Subset.read(tmp_path) == [3, 1, 3] and (tmp_path / Subset.PROVENANCE).exists()
