"""The cluster path on a real SLURM: scripts/test-slurm.sh starts a single-node cluster on 127.0.0.1 and runs these
twice, with accounting (slurmdbd) and without (``DIVBENCH_SLURM_ACCOUNTING=0``); elsewhere they skip.

The README's sequence (prepare -> dry run -> multi-task fine-tuning -> fan-out -> gather) against a local run, a
failing job's error in the launching command, requests no node can meet refused before submission, and the
launcher submitted as a job of its own (submit, log out, gather later). The
launching commands run as users type them, with the site options a small node needs (experiments/README.md)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.engine.cluster import check_slurm_request, compose_with_hydra
from experiments.engine.config import PROJECT_ROOT
from tests.test_study_e2e import _artifacts, _tiny_overrides

pytestmark = pytest.mark.slurm
# What this node can give a job (scripts/test-slurm.sh: the machine's real CPUs and memory, no GPU).
SITE = ["hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=30"]
ACCOUNTING = os.environ.get("DIVBENCH_SLURM_ACCOUNTING") == "1"
FAILURE_BOUND_S = 240  # a failing job's error reaches the launcher well within this (a hang never does)
REPORT_FILES = ("table.csv", "runs.csv", "table.md", "table.tex", "noise_floor.json")


def _run(module: str, args: list[str], timeout: int = 900) -> tuple[subprocess.CompletedProcess, float]:
    """A command as a user types it; jobs inherit this environment (sbatch's default --export=ALL). One thread
    per process everywhere, so the SLURM and local runs compute alike (and share 2 cores politely)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(PROJECT_ROOT))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.monotonic() - start


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _jobs() -> set[str]:
    """Ids of the jobs the controller knows, finished ones included (kept MinJobAge = 300 s)."""
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def _active() -> set[str]:
    """Ids of the jobs pending or running."""
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def _report(line: str) -> None:
    """Timings for the lane's summary (scripts/test-slurm.sh prints the file)."""
    if os.environ.get("DIVBENCH_SLURM_REPORT"):
        with open(os.environ["DIVBENCH_SLURM_REPORT"], "a") as f:
            f.write(f"{line} ({'with' if ACCOUNTING else 'without'} accounting)\n")


SUBSETS = ("selection.subsets=[{label: random, selector: random, seeds: [0, 1]}, {label: kcenter, selector: kcenter}, "
           "{label: novelselect, selector: novelselect, params: {neighbors: 5}}]")


def _study(tmp: Path, model: str) -> list[str]:
    """debug=tiny on 3 of its subsets (4 models), with a global batch of 4 from 1 example per device: 4
    accumulation steps on one process, 2 on two SLURM tasks, each task its own 2 of the subset's 4 examples."""
    return _tiny_overrides(tmp, model) + [SUBSETS, "logger.enabled=false", "finetune.global_batch_size=4",
                                          "~finetune.args.gradient_accumulation_steps",
                                          "finetune.args.per_device_train_batch_size=1"]


def _train_stats(cache: Path) -> dict[str, dict]:
    """Each fine-tuned model's training record, less its wall time."""
    return {p.parent.name: {k: v for k, v in json.loads(p.read_text()).items() if k != "train_runtime_s"}
            for p in cache.glob("finetune/*/train.json")}


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_failing_job_shows_its_error_in_the_launching_command(tmp_path, tiny_model):
    """A job failing on bad input: its message in the launcher's output, exit 2, in bounded time (with
    or without accounting: submitit gets the error as the job's result, it needs no sacct)."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"messages": [{"role": "user", "content": "a question and no answer"}]}\n')
    args = ["-m", "hydra/launcher=slurm_gpu", *SITE, f"hydra.sweep.dir={tmp_path}/sweep", "pool=file",
            f"pool.path={pool}", "selection.only=random,kcenter", *_study(tmp_path, tiny_model)]
    before = _jobs()
    proc, seconds = _run("experiments.cli.study", args, timeout=FAILURE_BOUND_S + 120)
    _report(f"failing job: error shown, exit {proc.returncode}, after {seconds:.0f} s")
    shown = proc.stdout + proc.stderr  # the console: divbench's log lines on stdout, Hydra's on stderr
    assert proc.returncode == 2 and seconds < FAILURE_BOUND_S, shown[-3000:]  # the job's input error: exit 2
    assert f"{pool}:1: the conversation has no non-empty assistant turn" in shown, shown[-3000:]
    logs = list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))
    assert logs and any("no non-empty assistant turn" in p.read_text() for p in logs)  # also in the job's log
    assert len(_jobs() - before) == 2


@pytest.mark.slurm(accounting=True)  # sinfo's answer is the same without: run once
def test_request_no_node_can_meet_is_refused_before_submission(tmp_path):
    """slurm_gpu as shipped asks 8 CPUs and a GPU: refused naming the option, exit 2, nothing queued or written."""
    args = ["-m", "hydra/launcher=slurm_gpu", "debug=tiny", f"cache_dir={tmp_path}/c", f"results_dir={tmp_path}/r",
            f"hydra.sweep.dir={tmp_path}/sweep", "selection.only=random,kcenter"]
    before = _jobs()
    proc, seconds = _run("experiments.cli.study", args, timeout=300)
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "hydra.launcher.cpus_per_task=8 x tasks_per_node=1" in shown, shown
    assert not list(tmp_path.iterdir()) and _jobs() <= before
    _report(f"request above the node refused after {seconds:.0f} s")
    for option, message in [("hydra.launcher.partition=nope", "hydra.launcher.partition=nope: no partition"),
                            ("hydra.launcher.mem_gb=100000", "hydra.launcher.mem_gb=100000, but the largest node"),
                            ("hydra.launcher.gpus_per_node=1", "hydra.launcher.gpus_per_node=1, but partition debug "
                                                               "has no GPUs")]:
        launcher = compose_with_hydra("study", ["hydra/launcher=slurm_gpu", *SITE, option]).hydra.launcher
        with pytest.raises(Exception, match=message):
            check_slurm_request(launcher)  # against this cluster's sinfo
    check_slurm_request(compose_with_hydra("study", ["hydra/launcher=slurm_gpu", *SITE]).hydra.launcher)


@pytest.mark.slurm(accounting=True)  # checked before the scheduler is asked anything: run once
def test_bad_sweep_submits_nothing(tmp_path):
    args = ["-m", "hydra/launcher=slurm_gpu", *SITE, "debug=tiny", f"cache_dir={tmp_path}/c",
            f"results_dir={tmp_path}/r", f"hydra.sweep.dir={tmp_path}/sweep", "selection.only=random,bogus"]
    before = _jobs()
    proc, _ = _run("experiments.cli.study", args, timeout=300)
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "sweep job #1 (selection.only=bogus) of 2" in shown, shown
    assert not list(tmp_path.iterdir()) and _jobs() <= before


@pytest.mark.slurm(accounting=True)
def test_cluster_sequence_matches_a_local_run(tmp_path, tiny_model):
    """experiments/README.md's sequence on SLURM (prepare, dry run, 2-task fine-tuning, fan-out, gather) gives
    the report of the same study run locally (its 2-process fine-tuning through torchrun) byte for byte, with the
    same artifacts, shared stages built once, and each SLURM task training on its own half of a subset."""
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    labels = "random,kcenter,novelselect"

    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(PROJECT_ROOT))
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               f"--master_port={_free_port()}", "-m", "experiments.cli.finetune",
                               "selection.only=[random]", f"hydra.run.dir={local}/run-finetune",
                               *_study(local, tiny_model)],
                              cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    _ok(torchrun)
    _ok(_run("experiments.cli.study", [f"hydra.run.dir={local}/run", *_study(local, tiny_model)])[0])

    steps = {}
    study = _study(cluster, tiny_model)
    start = time.monotonic()
    _ok(_run("experiments.cli.study", [f"hydra.run.dir={cluster}/run-prepare", "stop_after=embed", *study])[0])
    shared = _artifacts(cluster / "cache")
    assert {k.split("/")[0] for k in shared} == {"pool", "embed"}
    _ok(_run("experiments.cli.study", [f"hydra.run.dir={cluster}/run-plan", "dry_run=true", *study])[0])
    plan = (cluster / "results" / "plan.csv").read_bytes()
    steps["prepare + dry run"] = time.monotonic() - start

    proc, steps["3b fine-tune, 2 tasks"] = _run("experiments.cli.finetune", [
        "-m", "hydra/launcher=slurm_multigpu", *SITE, "hydra.launcher.tasks_per_node=2", "hydra.launcher.mem_gb=4",
        f"hydra.sweep.dir={cluster}/sweep-finetune", "selection.only=random", *study])
    _ok(proc)
    trained = _train_stats(cluster / "cache")
    assert len(trained) == 2  # random, seeds 0 and 1: one job, two models
    for stats in trained.values():
        assert stats["world_size"] == 2 and stats["effective_batch_size"] == 4
        assert stats["gradient_accumulation_steps"] == 2 and stats["per_device_train_batch_size"] == 1
        assert stats["examples_per_rank"] == [2, 2] and stats["examples_on_several_ranks"] == 0

    proc, steps["3a fan-out"] = _run("experiments.cli.study", [
        "-m", "hydra/launcher=slurm_gpu", *SITE, f"hydra.sweep.dir={cluster}/sweep-study", f"selection.only={labels}",
        *study])
    _ok(proc)
    assert not (cluster / "results" / "table.csv").exists()  # partial jobs write no report
    proc, steps["gather"] = _run("experiments.cli.study", [f"hydra.run.dir={cluster}/run-gather", *study])
    _ok(proc)
    _report("cluster sequence: " + ", ".join(f"{k} {v:.0f} s" for k, v in steps.items()))

    for name in REPORT_FILES:
        assert (cluster / "results" / name).read_bytes() == (local / "results" / name).read_bytes(), name
    assert (cluster / "results" / "plan.csv").read_bytes() == plan  # kept across the gather
    after = _artifacts(cluster / "cache")
    assert set(after) == set(_artifacts(local / "cache"))  # the same artifact keys
    assert all(after[k] == v for k, v in shared.items())  # pool and embeddings built once, by the prepare step
    assert sum(k.startswith("signals/") for k in after) == 1
    models = _train_stats(cluster / "cache")
    assert len(models) == 4 and {k: models[k] for k in trained} == trained  # 3a found the 2-task models
    assert _train_stats(local / "cache") == models  # the same trainings (torchrun's 2 processes for random)


@pytest.mark.slurm(accounting=False)  # the launcher as a job of its own: once, on the cluster without accounting
def test_launcher_submitted_as_a_job_frees_the_terminal(tmp_path, tiny_model):
    """Submit, log out, gather later: `sbatch --wrap "divbench-study -m ..."` returns at once, the launcher job
    submits the fan-out from inside SLURM (nested jobs, environment through --export=ALL) and ends when it is done;
    the gather then finds everything in the cache."""
    study = _study(tmp_path, tiny_model)
    launch = " ".join(shlex.quote(a) for a in [
        sys.executable, "-m", "experiments.cli.study", "-m", "hydra/launcher=slurm_gpu", *SITE,
        f"hydra.sweep.dir={tmp_path}/sweep", "selection.only=random,kcenter", "stop_after=subset", *study])
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(PROJECT_ROOT))
    start = time.monotonic()
    submitted = subprocess.run(["sbatch", "--parsable", "-c", "1", "--mem=2G", f"--output={tmp_path}/launcher.log",
                                "--wrap", launch], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                               timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    returned_s = time.monotonic() - start
    job = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 900
    while job in _active():
        assert time.monotonic() < deadline, (tmp_path / "launcher.log").read_text()[-3000:]
        time.sleep(2)
    _report(f"launcher as a job: sbatch returned after {returned_s:.1f} s, the fan-out ended after "
            f"{time.monotonic() - start:.0f} s")
    log = (tmp_path / "launcher.log").read_text()
    assert returned_s < 10 and "Traceback" not in log and "sweep output dir" in log, log[-3000:]
    built = {k.split("/")[0] for k in _artifacts(tmp_path / "cache")}
    assert built == {"pool", "embed", "signals", "subset"}
    assert sum(k.startswith("subset/") for k in _artifacts(tmp_path / "cache")) == 3  # random x 2 seeds, kcenter
