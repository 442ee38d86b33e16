"""The pool signals (metrics.signals): built once per study, read by metrics and selectors with the numbers they
compute on their own, keyed by what they need and never by runtime knobs, refused before work when the pool
cannot meet them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

import metrics
import selection
from divcore.errors import InputError
from experiments.engine.dag import stage_specs
from experiments.engine.pipeline import run_study
from metrics.labels import Clustering
from metrics.registry import metric_needs
from metrics.signals import PoolSignals, SignalNeeds, pool_signals
from selection.registry import selector_needs
from tests.helpers import compose, precomputed_pool

SIGNAL_METRICS = [
    {"name": "novelsum", "params": {"neighbors": 3}},
    {"name": "novelsum_grid", "params": {"neighbors": [2, 5], "density_powers": [0, 0.5], "distance_powers": [1],
                                         "mode": "paper"}},
    {"name": "partition_entropy", "params": {"n_clusters": 6, "seed": 1}},
    {"name": "mig_information", "params": {"n_clusters": 5, "seed": 2, "threshold": 0.5}},
]


def _pool(n: int = 60, dim: int = 8, seed: int = 0) -> np.ndarray:
    """Clustered random rows with exact duplicates (rows n-5.. repeat rows 0..4): the kNN reference is de-duplicated."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, dim))[rng.integers(0, 4, n)] + 0.5 * rng.normal(size=(n, dim))
    x[n - 5:] = x[:5]
    return x.astype(np.float32)


def test_metrics_read_from_signals_equal_their_own_computation():
    emb = _pool()
    sig = pool_signals(emb, metric_needs(SIGNAL_METRICS))
    assert sig.knn_k == 5 and set(sig.partitions) == {(6, 1)} and set(sig.kmeans) == {(5, 2)}
    assert sig.distinct_rows == 55
    for rows in ([0, 1, 2, 55, 56, 57], list(range(10, 40)), [3, 3, 7, 8, 9, 59]):  # duplicates, >= 20 rows, repeats
        idx = np.asarray(rows)
        own = metrics.compute(SIGNAL_METRICS, metrics.MetricInputs(embeddings=emb[idx], reference=emb))
        read = metrics.compute(SIGNAL_METRICS, metrics.MetricInputs(embeddings=emb[idx], reference=emb, signals=sig,
                                                                    rows=idx))
        assert read.keys() == own.keys()
        np.testing.assert_allclose([read[k] for k in own], list(own.values()), rtol=1e-6)


def test_metrics_refuse_signals_that_lack_what_they_read():
    emb = _pool()
    sig = pool_signals(emb, SignalNeeds(knn_k=2))
    inputs = metrics.MetricInputs(embeddings=emb[:6], reference=emb, signals=sig, rows=np.arange(6))
    with pytest.raises(InputError, match="K=3 .*up to K=2"):
        metrics.compute([{"name": "novelsum", "params": {"neighbors": 3}}], inputs)
    with pytest.raises(InputError, match="partitions fit with n_clusters=6"):
        metrics.compute([SIGNAL_METRICS[2]], inputs)


def test_metrics_take_their_pool_work_from_the_signals_not_from_a_refit():
    """Hand-made signals no fit or search of these embeddings would give: a partition putting rows 0-1 and 2-3 in
    two clusters (entropy of a half-half split: 1 bit), and every row's squared kNN distance 4 (density
    1 / (4 + 1e-9) ** 0.5, so NovelSum is half its density-free value)."""
    emb = _pool(8)
    part = Clustering(np.zeros((4, 8), dtype=np.float32), np.array([0, 0, 1, 1, 2, 2, 3, 3]), spherical=False)
    sig = PoolSignals(size=8, knn_sq=np.full((8, 3), 4.0, dtype=np.float32), partitions={(4, 0): part})
    rows = np.arange(4)
    inputs = metrics.MetricInputs(embeddings=emb[rows], reference=emb, signals=sig, rows=rows)
    row = metrics.compute([{"name": "partition_entropy", "params": {"n_clusters": 4, "seed": 0}},
                           {"name": "novelsum", "params": {"neighbors": 3}}], inputs)
    assert row["partition_entropy"] == 1.0
    flat = metrics.novelsum(emb[rows], emb, neighbors=3, density_power=0.0)
    assert row["novelsum"] == pytest.approx(flat / (4 + 1e-9) ** 0.5, rel=1e-12)


def test_every_declaration_names_signals_for_its_default_parameters():
    from divcore.registry import signature_defaults
    from metrics.registry import METRICS
    from selection.registry import SELECTORS

    declared = {m.name: m.signals(signature_defaults(m.fn, 1)) for m in METRICS if m.signals is not None}
    declared |= {s.name: s.signals(signature_defaults(s.fn, 3), 0) for s in SELECTORS if s.signals is not None}
    assert set(declared) == {"novelsum", "novelsum_grid", "partition_entropy", "mig_information", "kmeans", "mig",
                             "novelselect", "cluster_random"}
    assert all(isinstance(n, SignalNeeds) and n != SignalNeeds() for n in declared.values())
    assert declared["mig"] == declared["mig_information"]  # the same labels for the selector and the metric
    assert declared["cluster_random"].kmeans  # its clusters come from the pool signals' k-means fits


def test_mig_metric_and_selector_read_the_same_labels_from_the_signals():
    """Hand-made labels the embeddings could never produce: three orthogonal label vectors (no graph edges), rows
    0-2 on label 0, 3-4 on label 1, 5 on label 2. MIG's greedy takes one row per label, lowest row first; E of
    one unit on each label is 3 (1 + 1e-6) ** 0.8, of three units on one label (3 + 1e-6) ** 0.8 + 2 (1e-6) ** 0.8."""
    emb = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    fit = Clustering(np.eye(3, 4, dtype=np.float32), np.array([0, 0, 0, 1, 1, 2]), spherical=True)
    sig = PoolSignals(size=6, kmeans={(3, 0): fit})
    pool = selection.PoolInputs(size=6, embeddings=emb, proxy_quality=np.ones(6), signals=sig)
    params = {"label_source": "kmeans", "n_clusters": 3}
    picks = selection.select("mig", pool, 3, 0, label_seed=0, **params).indices
    assert picks == [0, 3, 5]

    def information(rows: list[int]) -> float:
        inputs = metrics.MetricInputs(embeddings=emb[rows], reference=emb, signals=sig, rows=np.asarray(rows))
        return metrics.compute([{"name": "mig_information", "params": params | {"seed": 0}}], inputs)["mig_information"]

    assert information(picks) == pytest.approx(3 * (1 + 1e-6) ** 0.8, rel=1e-6)
    assert information([0, 1, 2]) == pytest.approx((3 + 1e-6) ** 0.8 + 2 * 1e-6 ** 0.8, rel=1e-6)


def test_selectors_read_from_signals_pick_what_they_pick_alone():
    emb = _pool(80)
    plan = [{"selector": "mig", "params": {"n_clusters": 6}, "seed": 0},
            {"selector": "kmeans", "params": {"n_clusters": 4}, "seed": 1},
            {"selector": "novelselect", "params": {"neighbors": 4}, "seed": 2}]
    needs = selector_needs(plan)
    assert needs == SignalNeeds(knn_k=4, kmeans=frozenset({(4, 1)}),
                                auto_labels=frozenset({(6, 0, "packaged:minilm")}))
    proxy = np.linspace(0.1, 1.0, 80)
    sig = pool_signals(emb, needs, proxy_quality=proxy)
    alone = selection.PoolInputs(size=80, embeddings=emb, proxy_quality=proxy)
    read = selection.PoolInputs(size=80, embeddings=emb, proxy_quality=sig.proxy_quality, signals=sig)
    for entry in plan:
        assert (selection.select(entry["selector"], read, 10, entry["seed"], **entry["params"]).indices
                == selection.select(entry["selector"], alone, 10, entry["seed"], **entry["params"]).indices)
    # a pool too large for NovelSelect's Gram matrix takes its density from the signals' kNN instead of a search
    big = selection.novelselect(emb, 10, neighbors=4, seed=2, gram_max_bytes=0, knn_sq=sig.knn(np.arange(80), 4))
    assert big == selection.novelselect(emb, 10, neighbors=4, seed=2, gram_max_bytes=0)


def test_signals_save_and_load_unchanged(tmp_path):
    emb = _pool()
    tags = [["math", "code"] if i % 3 == 0 else ["chat"] for i in range(60)]
    sig = pool_signals(emb, SignalNeeds(knn_k=3, kmeans=frozenset({(4, 0)}), partitions=frozenset({(5, 1)})),
                       quality=np.arange(60.0), proxy_quality=np.ones(60))
    # tag vectors need a sentence embedder; these stand in for one, so the round trip is what is checked
    sig = PoolSignals(**(sig.__dict__ | {"tag_vocab": ("chat", "code", "math"),
                                         "tag_ids": [[2, 1] if i % 3 == 0 else [0] for i in range(60)],
                                         "tag_vectors": {"packaged:minilm": np.eye(3, dtype=np.float32)}}))
    sig.save(tmp_path)
    back = PoolSignals.load(tmp_path)
    np.testing.assert_array_equal(back.knn_sq, sig.knn_sq)
    for kind in ("kmeans", "partitions"):
        (key, fit), = getattr(sig, kind).items()
        np.testing.assert_array_equal(getattr(back, kind)[key].centroids, fit.centroids)
        np.testing.assert_array_equal(getattr(back, kind)[key].ids, fit.ids)
        assert getattr(back, kind)[key].spherical == fit.spherical
    labels = back.mig_labels("auto", 4, 0, "packaged:minilm")  # auto: the pool has tags
    assert labels.source == "tags" and labels.ids_of(tags) == back.tag_ids == sig.tag_ids
    assert back.quality.tolist() == list(range(60)) and back.proxy_quality.tolist() == [1.0] * 60


def test_needs_the_pool_cannot_meet_are_refused_before_any_fit():
    emb = _pool(20)
    with pytest.raises(InputError, match="n_clusters=30 needs at least that many rows; the pool has 20"):
        pool_signals(emb, SignalNeeds(knn_k=3, partitions=frozenset({(30, 0)})))
    with pytest.raises(InputError, match="15 distinct rows; neighbors=15 needs at least 16"):
        pool_signals(emb, SignalNeeds(knn_k=15))
    with pytest.raises(InputError, match="no 'tags' column"):
        pool_signals(emb, SignalNeeds(tag_embedders=frozenset({"packaged:minilm"})))


def _study(tmp: Path, n: int = 30) -> dict:
    """A judge-free study on a JSONL pool with precomputed vectors, stopped after the metrics: no model is loaded."""
    overrides = precomputed_pool(tmp, n, question=lambda i: f"question {i} about topic {i % 5}", min_words=10)
    cfg = compose("study", [*overrides, "stop_after=metrics"])
    cfg["metrics"]["compute"] = copy.deepcopy(SIGNAL_METRICS)  # tests change their copy
    cfg["selection"]["subsets"] = [{"label": "random", "selector": "random", "seeds": [0, 1]},
                                   {"label": "mig", "selector": "mig", "params": {"n_clusters": 4}}]
    return cfg


def _builds(caplog, stage: str) -> int:
    return sum(f"built {stage} artifact" in r.getMessage() for r in caplog.records)


def test_study_builds_the_signals_once_and_a_second_study_reuses_them(tmp_path, caplog):
    caplog.set_level("INFO")
    cfg = _study(tmp_path)
    run_study(cfg)
    assert _builds(caplog, "signals") == 1 and _builds(caplog, "metrics") == 3
    signals = PoolSignals.load(next((tmp_path / "cache" / "signals").iterdir()))
    assert signals.knn_k == 5 and set(signals.kmeans) == {(4, 0), (5, 2)} and set(signals.partitions) == {(6, 1)}

    # the study's metrics are the numbers each metric computes on the arrays alone
    emb = np.load(tmp_path / "emb.npy")
    for metrics_dir in (tmp_path / "cache" / "metrics").iterdir():
        subset = json.loads((metrics_dir / "_complete.json").read_text())["spec"]["subset"]
        subset_dir = next(d for d in (tmp_path / "cache" / "subset").iterdir()
                          if json.loads((d / "_complete.json").read_text())["spec"] == subset)
        idx = json.loads((subset_dir / "indices.json").read_text())
        row = json.loads((metrics_dir / "metrics.json").read_text())
        alone = metrics.compute(SIGNAL_METRICS, metrics.MetricInputs(embeddings=emb[idx], reference=emb))
        np.testing.assert_allclose([row[k] for k in alone], list(alone.values()), rtol=1e-6)

    caplog.clear()
    cfg["selection"]["subsets"][0]["seeds"] = [2, 3]  # other subsets, the same needs: the signals are a cache hit
    run_study(cfg)
    assert _builds(caplog, "signals") == 0 and _builds(caplog, "metrics") == 2
    assert len(list((tmp_path / "cache" / "signals").iterdir())) == 1


def test_signals_key_follows_the_needs_never_runtime_knobs(tmp_path):
    cfg = _study(tmp_path)
    key = stage_specs(cfg)["signals"]
    knobs = json.loads(json.dumps(cfg))
    knobs["device"] = "cuda"
    knobs["metrics"]["compute"][0]["params"]["device"] = "cuda"
    knobs["metrics"]["compute"][0]["params"]["block_size"] = 7  # blocks of the distance matrix: not a signal
    knobs["embed"]["batch_size"] = 64
    assert stage_specs(knobs)["signals"] == key
    mig_selector = SignalNeeds(auto_labels=frozenset({(4, 0, "packaged:minilm")}))  # no tags given: auto
    assert key["signals"] == (metric_needs(SIGNAL_METRICS) | mig_selector).key()
    more = json.loads(json.dumps(cfg))
    more["metrics"]["compute"][0]["params"]["neighbors"] = 9
    assert stage_specs(more)["signals"] != key and stage_specs(more)["embed"] == stage_specs(cfg)["embed"]


@pytest.mark.parametrize("command", ["divbench-study", "divbench-finetune"])
def test_bad_signal_needs_are_refused_before_embedding(tmp_path, command):
    """divbench-finetune builds the subsets through the same stages as the study, signals and their checks
    included: a k-means the pool cannot meet is refused before anything is embedded, by either command."""
    from experiments.cli.finetune import finetune_subsets

    cfg = _study(tmp_path)
    cfg["metrics"]["compute"][2]["params"]["n_clusters"] = 31
    with pytest.raises(InputError, match="n_clusters=31 needs at least that many rows; the pool has 30"):
        (run_study if command == "divbench-study" else finetune_subsets)(cfg)
    assert not (tmp_path / "cache" / "embed").exists() and not (tmp_path / "cache" / "signals").exists()


def test_two_entries_selecting_the_same_rows_are_named_in_a_warning(tmp_path, caplog):
    cfg = _study(tmp_path)
    # MIG ignores the selection seed: listed with two seeds, it selects one subset twice
    cfg["selection"]["subsets"] = [{"label": "random", "selector": "random", "seeds": [0, 1]},
                                   {"label": "mig", "selector": "mig", "params": {"n_clusters": 4}, "seeds": [0, 1]}]
    caplog.set_level("WARNING")
    run_study(cfg)
    warnings = [r.getMessage() for r in caplog.records if "select the same rows" in r.getMessage()]
    assert warnings == ["subsets mig (seed 0) and mig (seed 1) select the same rows, so the report counts one subset "
                        "twice; give one of them other parameters, or list a deterministic selector once"]
