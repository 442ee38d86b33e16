"""A newcomer's first contact (issue 25): messages that name keys of the composed config, ``divbench-data where``
without the data, dataset cards that mark smoke-test numbers and carry no local paths."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from omegaconf import OmegaConf

from divcore.errors import InputError
from eval.benchmarks import alpaca_eval_reference, reference_examples, reference_nll_config
from eval.reference_nll import read_reference
from experiments.cli import data as data_cli
from experiments.data.export import SMOKE_CAVEAT, dataset_card
from experiments.engine.environment import benchmark_files, missing_benchmark_files
from tests.helpers import compose


def _demo(tmp_path, extra: list[str] = ()) -> dict:
    cfg = compose("study", overrides=["experiment=demo", f"shared_dir={tmp_path}/no-shared", *extra], resolve=False)
    return cfg


def _key_exists(cfg, key: str) -> bool:
    return OmegaConf.select(cfg, key, throw_on_missing=False) is not None


def test_doctor_names_keys_that_exist_in_the_demo(tmp_path, monkeypatch):
    monkeypatch.delenv("DIVBENCH_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = _demo(tmp_path, ["eval=demo"])  # the demo's AlpacaEval option (its default target reads no file)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    files = benchmark_files(resolved)
    assert files, "eval=demo reads no benchmark file"
    for key, _ in files:
        assert _key_exists(cfg, key), f"{key} is not a key of the composed demo config"
    problems = missing_benchmark_files(resolved)
    assert problems and all(key in problems[0] for key, _ in files)


def test_reference_errors_name_the_composed_key(tmp_path):
    with pytest.raises(InputError, match=r"eval\.alpaca_eval\.reference_path=<file>"):
        alpaca_eval_reference({"reference_path": str(tmp_path / "none.json")})
    suite = {"name": "suite", "alpaca_eval": {"reference_path": str(tmp_path / "none.json")},
             "reference_nll": {"max_length": 64}, "generation": {}}
    with pytest.raises(InputError, match=r"eval\.alpaca_eval\.reference_path=<file>"):
        reference_examples(reference_nll_config(suite))
    with pytest.raises(InputError, match=r"set eval\.reference_path=<file>"):
        read_reference(tmp_path / "none.json")


def test_demo_key_in_message_can_be_overridden(tmp_path):
    """The key the message names is one a user can set on the command line."""
    cfg = _demo(tmp_path, ["eval=demo", f"eval.alpaca_eval.reference_path={tmp_path}/x.json"])
    assert cfg.eval.alpaca_eval.reference_path == f"{tmp_path}/x.json"


def test_data_where_lists_roots_and_fails_when_missing(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("DIVBENCH_DATA", raising=False)
    monkeypatch.setenv("DIVBENCH_SHARED", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home" / "data"))
    with caplog.at_level(logging.INFO, logger="divbench.data"), pytest.raises(SystemExit) as exit_:
        data_cli.main(["where"])
    assert exit_.value.code == 2
    assert str(tmp_path / "empty" / "data") in caplog.text and "searched" in caplog.text
    assert "missing" in caplog.text and "divbench-data fetch" in caplog.text


def test_data_where_succeeds_when_every_file_is_found(tmp_path, monkeypatch, caplog):
    for relative in data_cli.SOURCES:
        (tmp_path / "data" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / relative).write_text("[]")
    monkeypatch.setenv("DIVBENCH_DATA", str(tmp_path / "data"))
    with caplog.at_level(logging.INFO, logger="divbench.data"):
        assert data_cli.main(["where"]) == 0  # as every command: 0 returned, a failure's code exited with
    assert "(missing)" not in caplog.text


PROVENANCE = {"size": 4, "selector": "novelselect", "pool_size": 10, "study": "/home/someone/divbench/results/demo",
              "pool": {"path": "/home/someone/shared/pool.jsonl", "format": "sharegpt"},
              "embed": {"path": "/home/someone/cache/emb.npy", "model": "BAAI/bge-small-en-v1.5"},
              "params": {"density_power": 0.5}}


def test_dataset_card_marks_smoke_scores_and_has_no_local_paths():
    scores = {"alpaca_eval_win_rate": 36.9, "mt_bench_score": 1.2, "neg_reference_nll": -1.5,
              "judge_smoke_test": 1.0}
    card = dataset_card("demo", PROVENANCE, {"novelsum": 0.5}, scores)
    assert SMOKE_CAVEAT in card
    assert "`alpaca_eval_win_rate (smoke test)`" in card and "`mt_bench_score (smoke test)`" in card
    assert "`neg_reference_nll` |" in card  # judge-free: no caveat on the key
    assert "/home/someone" not in card and "pool.jsonl" in card


def test_dataset_card_without_smoke_judge_has_no_caveat():
    card = dataset_card("demo", PROVENANCE, {}, {"alpaca_eval_win_rate": 36.9})
    assert SMOKE_CAVEAT not in card and "(smoke test)" not in card


def test_study_scores_carry_the_smoke_flag(tmp_path):
    import json

    from experiments.engine.subsets import _replicate_scores

    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"alpaca_eval_win_rate": 30.0, "judge_smoke_test": True, "judge": "x"}))
    scores = _replicate_scores(tmp_path, {"label": "a", "seed": 0, "train_seed": 0}, eval_json)
    assert scores == {"alpaca_eval_win_rate": 30.0, "judge_smoke_test": 1.0}




@pytest.mark.slow
def test_built_wheel_ships_the_configs_and_writes_outside_the_source_tree(tmp_path):
    """A non-editable install: the wheel carries configs/ as package data, CONFIG_DIR finds it, and the demo's
    dry run composes and writes its plan under the working directory (not site-packages, not the clone)."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"  # a copy of the tracked files: the build writes build/ and *.egg-info into its tree
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.split()
    for rel in tracked:
        if rel.startswith(("results/", "notebooks/", "tests/golden")) or not (root / rel).is_file():
            continue
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, src / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("divbench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    prefix = "experiments/engine/configs/"
    shipped = {n.removeprefix(prefix) for n in names if n.startswith(prefix)}
    in_tree = {str(p.relative_to(root / "configs")) for p in (root / "configs").rglob("*") if p.is_file()
               and "__pycache__" not in p.parts}
    assert in_tree and in_tree <= shipped
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(site),
                    str(wheel)], check=True)
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DIVBENCH_DATA",)}
    env |= {"PYTHONPATH": str(site), "DIVBENCH_SHARED": str(tmp_path / "no-shared"), "HF_HUB_OFFLINE": "1"}
    probe = subprocess.run([sys.executable, "-c", "from experiments.engine.config import CONFIG_DIR as c; print(c)"],
                           cwd=cwd, env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == str(site / "experiments" / "engine" / "configs")
    run = subprocess.run([sys.executable, "-m", "experiments.cli.study", "experiment=demo", "dry_run=true"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert (cwd / "results" / "demo" / "plan.csv").exists(), run.stdout[-2000:] + run.stderr[-2000:]
    assert not (site / "results").exists()


@pytest.mark.slow
def test_embedding_progress_advances_per_batch(tiny_model, tmp_path, monkeypatch):
    """One chunk of 7 texts in batches of 2: the bar moves 2, 2, 2, 1 (not once by 7 at the chunk's end), and the
    vectors are those of the encoder called directly."""
    import numpy as np

    from experiments.embedding import backends

    updates: list[int] = []

    class Recording(backends.tqdm):
        def update(self, n=1):
            updates.append(n)
            return super().update(n)

    monkeypatch.setattr(backends, "tqdm", Recording)
    texts = [f"text number {i} " * (i + 1) for i in range(7)]
    encoder = backends.LastTokenEncoder(tiny_model, max_length=16, batch_size=2)
    path = backends.embed_chunked(texts, encoder, tmp_path / "w", chunk_size=100)
    assert updates == [2, 2, 2, 1] and encoder.on_batch is None
    np.testing.assert_array_equal(np.load(path), encoder(texts))


def test_from_study_searches_the_current_cache_and_names_it(tmp_path):
    """A study folder copied from another machine (its study_config.json names the developer's cache): the export
    searches this machine's cache_dir, and the error names that cache, the study's own and the missing subsets."""
    import json

    from experiments.engine.subsets import run_select

    cfg = OmegaConf.to_container(_demo(tmp_path), resolve=True)
    results = tmp_path / "results"
    results.mkdir()
    (results / "study_config.json").write_text(json.dumps(cfg | {"cache_dir": "/home/developer/.cache/divbench"}))
    here = tmp_path / "my-cache"
    with pytest.raises(InputError) as err:
        run_select({"from_study": str(results), "out": str(tmp_path / "export"), "cache_dir": str(here)})
    message = str(err.value)
    assert f"searched the cache {here}" in message and "cache_dir=/home/developer/.cache/divbench" in message
    assert "novelselect" in message or "random" in message


@pytest.mark.parametrize("suffix", [".npy", ".json"])
def test_measure_nan_error_names_the_subset_file(tmp_path, suffix):
    import json

    import numpy as np

    from experiments.data.embedding_sets import load_subsets

    subsets = tmp_path / "subsets"
    subsets.mkdir()
    np.save(subsets / "good.npy", np.ones((3, 4), dtype=np.float32))
    bad = np.ones((3, 4), dtype=np.float32)
    bad[1, 2] = np.nan
    target = subsets / f"broken{suffix}"
    if suffix == ".npy":
        np.save(target, bad)
    else:
        target.write_text(json.dumps([[1.0] * 4, [1.0, 1.0, None, 1.0], [1.0] * 4]))
    with pytest.raises(InputError, match=rf"{target}: NaN or inf in 1 rows \(first: \[1\]\) of its 3 vectors"):
        load_subsets(subsets)


def test_job_name_keeps_what_the_job_studies():
    from experiments.cli.study import job_name

    assert job_name(["experiment=demo", "metrics.compute.0.params.density_power=0.5", "results_dir=/x",
                     "selection.size=4"]) == "metrics.compute.0.params.density_power=0.5,selection.size=4"
    assert job_name(["experiment=demo", "eval=reference_nll", "+finetune/x=y"]) == "eval=reference_nll,finetune_x=y"
    assert job_name(["experiment=demo"]) == "default"
    # only what the sweep varies names the folder: a setting every job shares is the study itself
    swept = {"selection.only", "finetune.lr"}
    assert job_name(["selection.only=random", "finetune.lr=0.1", "embed.model=/m"], swept) == "finetune.lr=0.1"
    assert job_name(["selection.only=random", "embed.model=/m"], {"selection.only"}) == "default"
    model = "embed.model=/scratch/someone/models/" + "a-very-long-checkpoint-name" * 8  # over a folder name's limit
    long = job_name([model, "seed=1"])
    assert len(long.encode()) <= 200 and long.startswith("embed.model=_scratch_someone_models_a-very-long")
    assert long != job_name([model, "seed=2"])  # still one folder per job


@pytest.mark.slow
def test_sweep_jobs_write_their_own_results(tmp_path):
    """``divbench-study -m ... selection.size=4,6`` (dry runs): one plan.csv per job, in a folder named by it."""
    import os
    import subprocess
    import sys

    env = os.environ | {"DIVBENCH_SHARED": str(tmp_path / "no-shared")}
    subprocess.run([sys.executable, "-m", "experiments.cli.study", "-m", "debug=tiny", "dry_run=true",
                    "selection.size=4,6", f"results_dir={tmp_path}/r", f"hydra.sweep.dir={tmp_path}/h"],
                   check=True, env=env, capture_output=True, timeout=600)
    assert sorted(p.parent.name for p in (tmp_path / "r").glob("*/plan.csv")) == ["selection.size=4",
                                                                                   "selection.size=6"]


def test_sweep_job_study_run_carries_its_variant(tmp_path, monkeypatch):
    """The study's W&B run (real, offline) of a sweep job: its overrides in the run's name, group and config."""
    import pandas as pd

    from experiments.engine import pipeline

    seen = []
    real = pipeline.wandb_run

    def recording(cfg, **kw):
        seen.append((cfg, kw))
        return real(cfg, **kw)

    monkeypatch.setattr(pipeline, "wandb_run", recording)
    logger = {"enabled": True, "project": "divbench-test", "mode": "offline", "dir": str(tmp_path),
              "group": "demo/selection.size=4"}
    pipeline._log_study({"logger": logger, "study": "demo", "variant": "selection.size=4"},
                        pd.DataFrame({"subset": ["a"], "performance": [1.0]}), {})
    (cfg, kw), = seen
    assert kw["name"] == "study-demo[selection.size=4]" and kw["config"]["variant"] == "selection.size=4"
    assert cfg["group"] == "demo/selection.size=4"


def test_headline_table_from_a_study_table():
    """The end of a study: per metric r [CI], rho, q, n and the paper's value, strongest |r| first."""
    from pathlib import Path

    import pandas as pd

    from experiments.cli.study import headline

    table = Path(__file__).resolve().parents[1] / "results" / "demo" / "table.csv"
    text = headline(str(table))
    lines = text.splitlines()
    assert lines[1].split() == ["metric", "r", "[95%", "CI]", "rho", "q", "n", "paper"]
    t = pd.read_csv(table)
    top = t.loc[t["pearson_r"].abs().idxmax()]
    assert lines[2].split()[0] == top["metric"] and f"{top['pearson_r']:.2f}" in lines[2]
    assert any(line.split()[0] == "novelsum" for line in lines[2:])


def test_measure_defaults_fit_a_small_reference(tmp_path, caplog, capsys):
    """divbench-measure's default metric set on a 40-row reference: default k-means sizes too large for the data
    are scaled (a warning names the metric and its key); a size the user sets is an error naming the same key."""
    import numpy as np

    from experiments.report.measure import fit_cluster_counts
    from tests.helpers import run_cli

    configs = compose("measure", ["subsets=x"])["metrics"]["compute"]
    where = {"reference": "ref.npy", "subsets": "subs"}
    with caplog.at_level(logging.WARNING):
        fitted = fit_cluster_counts(configs, 40, 16, where)
    by_name = {c["name"]: c for c in fitted}
    assert by_name["partition_entropy"]["params"]["n_clusters"] == 10  # on the reference: 40 // 4
    assert by_name["mig_information"]["params"]["n_clusters"] == 10
    assert "+metrics.compute.10.params.n_clusters" in caplog.text and "mig_information" in caplog.text
    with pytest.raises(InputError, match=r"metrics\.compute\[0\] \(partition_entropy\) fits 50 k-means clusters on "
                                         r"the reference, which has 40 rows .*metrics\.compute\.0\.params\.n_clusters"):
        fit_cluster_counts([{"name": "partition_entropy", "params": {"n_clusters": 50}}], 40, 16, where)
    rng = np.random.default_rng(0)
    (tmp_path / "subs").mkdir()
    for i in range(2):
        np.save(tmp_path / "subs" / f"s{i}.npy", rng.standard_normal((16, 8)))
    np.save(tmp_path / "ref.npy", rng.standard_normal((40, 8)))
    code, output = run_cli("measure", f"subsets={tmp_path}/subs", f"reference={tmp_path}/ref.npy",
                           f"out={tmp_path}/m", f"hydra.run.dir={tmp_path}/h", capsys=capsys)
    assert code == 0, output[-2000:]
    assert len(pd.read_csv(tmp_path / "m" / "measure.csv")) == 2


def _variant_runs(tmp_path, variant: str, strength: float):
    """One sweep job's runs.csv (folder named by its overrides, study_config.json recording the variant): the
    same 8 subsets and performance, a NovelSum whose agreement with performance depends on the variant."""
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    perf = rng.normal(size=8)
    folder = tmp_path / "demo" / variant
    folder.mkdir(parents=True)
    runs = pd.DataFrame({"base_model": "m", "subset": [f"s{i}" for i in range(8)],
                         "selector": ["random", "kcenter", "novelselect", "duplicate"] * 2, "seed": 0,
                         "performance": perf, "novelsum": strength * perf + rng.normal(0, 0.3, size=8),
                         "vendi": rng.normal(size=8), "schema": 1})
    runs.to_csv(folder / "runs.csv", index=False)
    (folder / "study_config.json").write_text(json.dumps({"study": "demo", "variant": variant}))
    return folder / "runs.csv"


def test_report_combines_sweep_variants_with_their_difference(tmp_path, capsys):
    """divbench-report runs=[<job a>/runs.csv,<job b>/runs.csv] of one study's sweep: each variant reported as a
    group (a ``variant`` column; per-variant correlation rows), and variants.csv with r_b - r_a and its interval."""
    from tests.helpers import run_cli

    a = _variant_runs(tmp_path, "metrics.compute.0.params.density_power=0", 0.0)
    b = _variant_runs(tmp_path, "metrics.compute.0.params.density_power=0.5", 1.0)
    code, output = run_cli("report", f"runs=['{a}','{b}']", f"out={tmp_path}/both", "n_boot=200", "n_perm=0",
                           f"hydra.run.dir={tmp_path}/h", capsys=capsys)  # quoted: the folder names hold '='
    assert code == 0, output[-3000:]
    code, output = run_cli("report", f"runs='{tmp_path}/demo/*/runs.csv'", f"out={tmp_path}/glob", "n_boot=200",
                           "n_perm=0", f"hydra.run.dir={tmp_path}/h2", capsys=capsys)  # every job of the sweep
    assert code == 0, output[-3000:]
    assert pd.read_csv(tmp_path / "glob" / "variants.csv").equals(pd.read_csv(tmp_path / "both" / "variants.csv"))
    runs = pd.read_csv(tmp_path / "both" / "runs.csv")
    assert sorted(runs["variant"].unique()) == ["metrics.compute.0.params.density_power=0",
                                                "metrics.compute.0.params.density_power=0.5"]
    table = pd.read_csv(tmp_path / "both" / "table.csv")
    groups = set(table["base_model"])
    assert {"m [metrics.compute.0.params.density_power=0]", "m [metrics.compute.0.params.density_power=0.5]"} <= groups
    diff = pd.read_csv(tmp_path / "both" / "variants.csv").set_index("metric").loc["novelsum"]
    assert diff["variant"].endswith("=0.5") and diff["vs_variant"].endswith("=0")
    assert diff["pearson_diff"] == pytest.approx(diff["pearson_r"] - diff["pearson_r_vs"])
    assert diff["pearson_diff"] > 0.5  # the variant whose NovelSum follows performance
    assert diff["pearson_diff_ci_low"] <= diff["pearson_diff"] <= diff["pearson_diff_ci_high"]
    single = pd.read_csv(a)
    assert "variant" not in single  # the inputs are read, never rewritten


def test_report_variant_from_a_malformed_study_config_is_an_error(tmp_path, capsys):
    """A study_config.json beside a variant's runs.csv that is not JSON is named, not read as "no variant": the
    folder name would silently stand in for the variant the study recorded."""
    from tests.helpers import run_cli

    a = _variant_runs(tmp_path, "a", 0.0)
    b = _variant_runs(tmp_path, "b", 1.0)
    (b.parent / "study_config.json").write_text("{not json")
    code, output = run_cli("report", f"runs=['{a}','{b}']", f"out={tmp_path}/both", "n_boot=50", "n_perm=0",
                           f"hydra.run.dir={tmp_path}/h", capsys=capsys)
    assert code == 2, output[-3000:]
    assert f"{b.parent / 'study_config.json'}: malformed JSON at line 1" in output
    assert not (tmp_path / "both").exists()
