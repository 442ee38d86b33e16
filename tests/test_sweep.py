"""The study as a sweep: a 2-job fan-out through hydra-submitit-launcher's local executor, then the gather;
a dry run; and a run killed mid-stage, then re-launched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from experiments.cli.study import run
from experiments.engine.config import PROJECT_ROOT
from tests.test_study_e2e import _artifacts, _compose, _tiny_overrides


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, HYDRA_FULL_ERROR="1", OMP_WAIT_POLICY="PASSIVE")
    return subprocess.Popen([sys.executable, "-m", "experiments.cli.study", *args], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_local_sweep_then_gather(tmp_path, tiny_model):
    overrides = _tiny_overrides(tmp_path, tiny_model) + ["logger.enabled=false"]
    proc = _cli(["-m", "hydra/launcher=local", "selection.only=random,kcenter",
                 f"hydra.sweep.dir={tmp_path}/multirun", *overrides])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    swept = _artifacts(tmp_path / "cache")
    assert len([k for k in swept if k.startswith("finetune/")]) == 3  # random x 2 seeds + kcenter
    # partial (selection.only) jobs share the study's folder and never write the report, only their chunk timings
    assert not list((tmp_path / "results").rglob("runs.csv")) and not list((tmp_path / "results").rglob("table*"))

    dry = run(_compose(overrides + ["dry_run=true"]))["dry_run"]
    status = dry.set_index(["subset", "seed", "stage"])["status"]
    assert status[("kcenter", 0, "eval")] == "done" and status[("novelselect", 0, "eval")] == "to run"
    assert (tmp_path / "results" / "plan.csv").exists()

    plan = (tmp_path / "results" / "plan.csv").read_bytes()
    result = run(_compose(overrides))
    assert (tmp_path / "results" / "plan.csv").read_bytes() == plan  # the gather keeps the plan beside the report
    after = _artifacts(tmp_path / "cache")
    assert all(after[k] == v for k, v in swept.items())  # the sweep's work is reused, not redone
    assert len(pd.read_csv(tmp_path / "results" / "runs.csv")) == 6 == len(result["runs"])


@pytest.mark.slow
def test_killed_stage_is_redone_and_nothing_else(tmp_path, tiny_model):
    overrides = _tiny_overrides(tmp_path, tiny_model) + ["logger.enabled=false"]
    proc = _cli(overrides, start_new_session=True)
    cache = tmp_path / "cache"
    deadline = time.time() + 300
    while not list((cache / "finetune").glob(".*.tmp-*")) if (cache / "finetune").exists() else True:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:] if proc.poll() else "timeout"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _artifacts(cache)
    assert not [k for k in before if k.startswith(("finetune/", "eval/"))]  # the half-written stage is no artifact
    assert {k.split("/")[0] for k in before} == {"pool", "embed", "signals", "subset", "metrics"}
    run(_compose(overrides))
    after = _artifacts(cache)
    assert all(after[k] == v for k, v in before.items())
    assert len([k for k in after if k.startswith("finetune/")]) == 6
    assert Path(tmp_path / "results" / "table.csv").exists()
