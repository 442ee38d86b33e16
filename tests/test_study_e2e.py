"""The whole study through Hydra on a tiny model and a small real pool; resumption; CLI errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from experiments.run_study import CONFIG_DIR, PROJECT_ROOT, run


def _tiny_overrides(tmp: Path, model: str) -> list[str]:
    return [f"cache_dir={tmp}/cache", f"results_dir={tmp}/results", f"logger.dir={tmp}/wandb", "study=tiny",
            "pool.size=40", "pool.max_prompt_chars=300", f"embed.model={model}", "embed.max_length=64",
            "selection.size=4", f"finetune.base_model={model}", "finetune.max_length=96",
            "finetune.args.disable_tqdm=true", "eval.n_examples=2", "eval.max_length=96",
            "selection.subsets.4.params.neighbors=5", "report.n_boot=50"]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("study", overrides=overrides)


def _artifacts(cache: Path) -> dict[str, float]:
    return {str(p.relative_to(cache)): p.stat().st_mtime for p in cache.glob("*/*/_complete.json")}


def test_tiny_study_end_to_end_and_resume(tmp_path, tiny_model):
    overrides = _tiny_overrides(tmp_path, tiny_model)
    result = run(_compose(overrides))
    res = tmp_path / "results"
    runs = pd.read_csv(res / "runs.csv")
    assert len(runs) == 6 and set(runs["selector"]) == {"random", "duplicate", "kcenter", "novelselect"}
    assert list(runs.loc[runs["subset"] == "duplicate_25", "unique_rows"]) == [1]
    assert runs["performance"].notna().all() and runs["novelsum"].notna().all()
    table = pd.read_csv(res / "table.csv")
    configured = {m["name"] for m in _compose(overrides).metrics.compute}
    assert set(table["metric"]) == configured and {"novelsum", "distsum_cosine", "vendi"} <= configured
    assert table[["pearson_r", "spearman_rho"]].abs().max().max() <= 1.0
    assert (res / "table.md").read_text().startswith("| base_model | metric |")
    assert (res / "scatter_novelsum.png").exists() and (res / "scatter_distsum_cosine.png").exists()
    assert set(result["timings"]) == {"pool", "embed", "subset", "metrics", "finetune", "eval", "report"}
    assert len(list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))) == 6 * 4 + 1  # (subset, stage) + study

    before = _artifacts(tmp_path / "cache")
    assert len([k for k in before if k.startswith("finetune/")]) == 6
    rerun = run(_compose(overrides))
    assert _artifacts(tmp_path / "cache") == before  # nothing recomputed
    pd.testing.assert_frame_equal(rerun["runs"], runs)

    run(_compose(overrides + ["eval.n_examples=3"]))  # a config tweak redoes only the stage it touches
    after = _artifacts(tmp_path / "cache")
    new = {k.split("/")[0] for k in set(after) - set(before)}
    assert new == {"eval"} and all(after[k] == v for k, v in before.items())


def _cli(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, "-m", "experiments.run_study", f"cache_dir={tmp}/c",
                           f"results_dir={tmp}/r", "logger=none", f"hydra.run.dir={tmp}/o", *args],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["selection.sizee=3"], "selection.sizee"),
    (["metrics.compute.0.params.neighbours=3"], "metrics.compute.0.params.neighbours"),
    (["selection.subsets.0.selector=randomm"], "unknown selector 'randomm'"),
    (["metrics.compute.0.name=novelsumm"], "unknown metric 'novelsumm'"),
    (["+metrics.compute.0.params.neighbours=3"], "no hyperparameter(s) ['neighbours']"),
    (["pool=file", "pool.path=/nonexistent/pool.json"], "/nonexistent/pool.json does not exist"),
])
def test_cli_bad_input_fails_clearly(tmp_path, args, message):
    proc = _cli(*args, tmp=tmp_path)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (tmp_path / "r").exists()
