"""The stage DAG and its engine: every key is built from what a stage consumes, the order is checked, artifacts own
their files, and a new stage declared once (a Stage, its build function, its artifact class, its config) is run,
cached, planned, checked early and verified by its cost class without touching anything else."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from divcore.errors import InputError
from experiments.engine.dag import DAG, STAGES, stage_specs, subset_plan
from experiments.engine.pipeline import run, study_entries
from experiments.engine.stages import (
    CHEAP,
    COSTLY,
    Check,
    JsonRow,
    KeyInputs,
    Stage,
    Subset,
    check_dag,
    stage_keys,
)
from experiments.engine.store import CorruptArtifactError
from selection.registry import Selection
from tests.helpers import compose, precomputed_pool
from tests.test_study_e2e import _compose


def _noop(call):
    return None


def test_a_stage_must_follow_what_it_consumes_or_reads():
    late = (Stage("a", ("b",), Subset, lambda k: {}, _noop), Stage("b", (), Subset, lambda k: {}, _noop))
    with pytest.raises(ValueError, match="stage 'a': consumes \\['b'\\] not listed before it"):
        check_dag(late)
    reads_late = (Stage("a", (), Subset, lambda k: {}, _noop, reads=("b",)),
                  Stage("b", (), Subset, lambda k: {}, _noop))
    with pytest.raises(ValueError, match="stage 'a'"):
        check_dag(reads_late)
    shared_after_subset = (Stage("a", (), Subset, lambda k: {}, _noop),
                           Stage("b", ("a",), Subset, lambda k: {}, _noop, per_subset=False))
    with pytest.raises(ValueError, match="a shared stage cannot use a per-subset one"):
        check_dag(shared_after_subset)
    with pytest.raises(ValueError, match="cost must be"):
        Stage("a", (), Subset, lambda k: {}, _noop, cost="free")
    with pytest.raises(ValueError, match="needs write, read and files"):
        Stage("a", (), dict, lambda k: {}, _noop)


@pytest.mark.parametrize("overrides", [["debug=tiny"], ["debug=tiny", "eval=smoke_judge"],
                                       ["debug=tiny", "+selection.max_overlap=0.5"]])
def test_every_key_holds_the_keys_it_consumes(overrides, tmp_path):
    cfg = OmegaConf.to_container(_compose(overrides + [f"cache_dir={tmp_path}"]), resolve=True)
    entry = subset_plan(cfg["selection"])[0] | {"train_seed": 42}
    specs = stage_specs(cfg, entry)
    designed = "selection.max_overlap" in " ".join(overrides)  # the design stage exists only with a design
    stages = [s for s in STAGES if designed or s != "design"]
    assert list(specs) == stages  # a judge-free evaluation has a generate stage too
    for stage in DAG:
        if stage.name in specs:
            assert all(specs[stage.name][c] == specs[c] for c in stage.consumes), stage.name
    assert set(stage_specs(cfg)) == {s.name for s in DAG if not s.per_subset and s.name in stages}


def test_a_stage_without_its_config_drops_the_stages_after_it():
    dag = (Stage("a", (), Subset, lambda k: {"a": 1}, _noop), Stage("b", ("a",), Subset, lambda k: None, _noop),
           Stage("c", ("b",), Subset, lambda k: {"c": 1}, _noop), Stage("d", ("a",), Subset, lambda k: {"d": 1}, _noop))
    assert stage_keys(dag, KeyInputs({}, {}, None)) == {"a": {"a": 1}, "d": {"a": {"a": 1}, "d": 1}}


def test_subset_artifact_round_trip(tmp_path):
    Subset.write(tmp_path, Selection([3, 1, 3], {"selector": "duplicate"}))
    assert Subset.read(tmp_path) == [3, 1, 3]
    assert json.loads((tmp_path / Subset.PROVENANCE).read_text()) == {"selector": "duplicate"}


# ------------------------------------------------------------------ a new stage, declared once ------------------
class ToyRow(JsonRow):
    FILE = "toy.json"


BUILDS: list[str] = []


def _toy_key(k: KeyInputs) -> dict | None:
    return {"toy": k.keyed["toy"]} if "toy" in k.keyed and k.entry is not None else None


def _toy_build(call) -> dict:
    BUILDS.append(call.entry["label"])
    sub = call.inputs["subset"]
    return {"rows": len(sub) * call.cfg["toy"]["factor"], "novelsum": call.inputs["metrics"]["novelsum"],
            "first_id": call.inputs["pool"][sub[0]]["id"]}


def _toy_check(c) -> None:
    if c.cfg["toy"]["min_rows"] > len(c.value):
        raise InputError(f"toy.min_rows={c.cfg['toy']['min_rows']} but the pool has {len(c.value)} rows")


def _toy_dag(cost: str = CHEAP, artifact: type = ToyRow) -> tuple[Stage, ...]:
    """The study's DAG with one more stage after the metrics: the one declaration a new stage needs."""
    toy = Stage("toy", ("metrics",), artifact, _toy_key, _toy_build, cost=cost, reads=("pool", "subset"), config="toy",
                gpu_hours=lambda cfg: 2.0, checks=(Check("pool", _toy_check),))
    names = [s.name for s in DAG]
    cut = names.index("metrics") + 1
    return check_dag(DAG[:cut] + (toy,) + DAG[cut:])


def _toy_cfg(tmp: Path, n: int = 30) -> dict:
    """A study on a JSONL pool with precomputed vectors (no model is loaded) and the toy stage's config group."""
    cfg = compose("study", overrides=precomputed_pool(tmp, n), resolve=False)
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg["metrics"]["compute"] = [{"name": "novelsum", "params": {"neighbors": 3}}]
    cfg["selection"]["subsets"] = [{"label": "random", "selector": "random", "seeds": [0, 1]}]
    return cfg | {"toy": {"factor": 3, "min_rows": 1, "device": "cpu"}}


def test_a_new_stage_declared_once_is_run_cached_planned_and_keyed(tmp_path, caplog):
    dag, cfg = _toy_dag(), _toy_cfg(tmp_path)
    entries = study_entries(cfg)
    BUILDS.clear()
    caplog.set_level(logging.INFO)
    first = run(cfg, until="toy", entries=entries, dag=dag)
    assert BUILDS == ["random", "random"] and [o["toy"]["rows"] for o in first.outputs] == [12, 12]
    assert [o["toy"]["novelsum"] for o in first.outputs] == [o["metrics"]["novelsum"] for o in first.outputs]
    assert first.timings["toy"]["executed"] == 2 and ("random-s0", "toy") in first.built
    assert "toy [random-s1]: built in" in caplog.text
    assert len(list((tmp_path / "cache" / "toy").glob("*/toy.json"))) == 2  # its artifact class named the file

    caplog.clear()
    again = run(cfg, until="toy", entries=entries, dag=dag)
    assert BUILDS == ["random", "random"] and again.built == []  # every stage read back from the cache
    assert [o["toy"] for o in again.outputs] == [o["toy"] for o in first.outputs]
    assert again.timings["toy"] == again.timings["toy"] | {"reused": 2} and "executed" not in again.timings["toy"]
    assert "toy [random-s0]: reused from cache" in caplog.text and "embed [study]: reused from cache" in caplog.text

    plan = run(cfg | {"dry_run": True, "device": "cuda"}, until="toy", entries=entries, dag=dag).plan
    toy = plan[plan["stage"] == "toy"]
    assert list(toy["status"]) == ["done", "done"] and list(toy["est_gpu_hours"]) == [2.0, 2.0]
    assert list(plan["stage"].unique()) == ["pool", "embed", "signals", "subset", "metrics", "toy"]

    specs = [stage_specs(cfg, e, dag)["toy"] for e in entries]
    assert [stage_specs(cfg | {"toy": cfg["toy"] | {"device": "cuda"}}, e, dag)["toy"] for e in entries] == specs
    assert stage_specs(cfg | {"toy": cfg["toy"] | {"factor": 4}}, entries[0], dag)["toy"] != specs[0]
    assert stage_specs(cfg, entries[0])["metrics"] == stage_specs(cfg, entries[0], dag)["metrics"]


def test_a_new_stage_checks_the_pool_before_anything_is_embedded(tmp_path):
    cfg = _toy_cfg(tmp_path)
    cfg["toy"]["min_rows"] = 31
    with pytest.raises(InputError, match="toy.min_rows=31 but the pool has 30 rows"):
        run(cfg, until="toy", entries=study_entries(cfg), dag=_toy_dag())
    assert not (tmp_path / "cache" / "embed").exists()


@pytest.mark.parametrize("cost", [CHEAP, COSTLY])
def test_a_damaged_artifact_is_rebuilt_or_refused_by_its_cost_class(tmp_path, caplog, cost):
    dag, cfg = _toy_dag(cost), _toy_cfg(tmp_path)
    entries = study_entries(cfg)[:1]
    run(cfg, until="toy", entries=entries, dag=dag)
    (toy_file,) = (tmp_path / "cache" / "toy").glob("*/toy.json")
    toy_file.write_text(toy_file.read_text().replace("12", "13"))
    BUILDS.clear()
    if cost == COSTLY:
        with pytest.raises(CorruptArtifactError, match="cached toy artifact .* is damaged"):
            run(cfg, until="toy", entries=entries, dag=dag)
        assert BUILDS == [] and "13" in toy_file.read_text()  # never removed silently
        return
    caplog.set_level(logging.WARNING)
    redone = run(cfg, until="toy", entries=entries, dag=dag)
    assert BUILDS == ["random"] and redone.outputs[0]["toy"]["rows"] == 12 and "rebuilding it" in caplog.text


def test_a_build_that_misses_its_artifact_files_stores_nothing(tmp_path):
    class Forgetful(ToyRow):
        @classmethod
        def write(cls, folder: Path, row: dict) -> None:
            (folder / "other.json").write_text(json.dumps(row))

    cfg = _toy_cfg(tmp_path)
    with pytest.raises(RuntimeError, match=r"stage 'toy' built no \['toy.json'\]"):
        run(cfg, until="toy", entries=study_entries(cfg)[:1], dag=_toy_dag(artifact=Forgetful))
    assert not list((tmp_path / "cache" / "toy").glob("*/_complete.json"))
