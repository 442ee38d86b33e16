"""Concurrent jobs of one study on one cold cache (a SLURM fan-out): every job succeeds, each artifact is built
once and never replaced, nothing is left half-written; a lock held too long is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from divcore.locks import LockTimeoutError, hold_lock
from experiments.engine.config import PROJECT_ROOT
from experiments.engine.pipeline import STAGES
from experiments.engine.store import ArtifactStore
from tests.test_study_e2e import _artifacts, _tiny_overrides


@pytest.mark.slow
def test_three_study_processes_on_one_cold_cache(tmp_path, tiny_model):
    overrides = _tiny_overrides(tmp_path, tiny_model) + ["selection.only=kcenter"]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", PYTHONPATH=str(PROJECT_ROOT))
    procs = [subprocess.Popen([sys.executable, "-m", "experiments.cli.study", *overrides,
                               f"hydra.run.dir={tmp_path}/hydra{i}"], cwd=PROJECT_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(3)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    # every stage the tiny preset defines (not the study-design stage: no match_tokens / max_overlap), the
    # judge-free evaluation too: its NLL in generate, its row in eval
    stages = [s for s in STAGES if s != "design"]
    artifacts = _artifacts(tmp_path / "cache")
    assert sorted(k.split("/")[0] for k in artifacts) == sorted(stages)  # one artifact per stage
    for stage in stages:  # built by exactly one of the three jobs; the others waited and reused it
        assert sum(out.count(f"built {stage} artifact") for out in outs) == 1, stage
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if ".tmp-" in p.name]
    assert not leftovers
    # one W&B run per subset stage built: subset, metrics, finetune, generate, eval
    assert len(list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))) == 5


def test_first_writer_wins_and_a_held_lock_times_out(tmp_path):
    store = ArtifactStore(tmp_path, lock_timeout_s=0.3)
    spec = {"x": 1}
    with store.build("stage", spec) as tmp:
        (tmp / "out.txt").write_text("first")
    with store.build("stage", spec) as tmp:
        assert tmp is None  # complete: the finished artifact is reused, never replaced
    assert (store.path("stage", spec) / "out.txt").read_text() == "first"

    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with hold_lock(store.lock_path("stage", {"x": 2}), 5, "test"):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    try:
        with pytest.raises(LockTimeoutError, match=r"stage-[0-9a-f]{16}\.lock was held by another process"):
            with store.build("stage", {"x": 2}):
                pass
    finally:
        release.set()
        thread.join()
    assert not store.path("stage", {"x": 2}).exists()
