"""What a multirun submits, checked before anything is queued (experiments.engine.cluster, BeforeRun.on_multirun_start):
the sweep's jobs as Hydra expands them, each job's config, and a SLURM request against the cluster's nodes."""

from __future__ import annotations

import logging
import sys

import pytest
from omegaconf import OmegaConf

from divcore.errors import InputError
from experiments.engine.cluster import Node, check_slurm_request, compose_with_hydra, sweep_jobs

NODES = [Node("cpu1", "debug", 2, 24_000, 0, True), Node("cpu2", "debug", 4, 8_000, 0, True),
         Node("gpu1", "gpu", 32, 512_000, 8, False)]


def _launcher(**kw) -> OmegaConf:
    return OmegaConf.create({"_target_": "x", "partition": None, "cpus_per_task": 1, "tasks_per_node": 1,
                             "mem_gb": 2, "gpus_per_node": 0, "nodes": 1} | kw)


def test_sweep_jobs_are_the_presets_params_unless_the_command_line_sets_the_key():
    cfg = compose_with_hydra("study", ["experiment=paper_llama3", "hydra/launcher=slurm_gpu"])
    jobs = sweep_jobs(cfg, ["experiment=paper_llama3"])
    assert len(jobs) == 12 and len({j[0] for j in jobs}) == 12 and all(j[0].startswith("selection.only=") for j in jobs)
    jobs = sweep_jobs(cfg, ["experiment=paper_llama3", "selection.only=kmeans,qdit", "seed=1,2"])
    assert sorted(" ".join(j) for j in jobs) == sorted(f"selection.only={s} experiment=paper_llama3 seed={n}"
                                                        for s in ("kmeans", "qdit") for n in (1, 2))


def _study_main(args: list[str], capsys, caplog) -> tuple[int, str]:
    from experiments.cli.study import main

    old, sys.argv = sys.argv, ["divbench-study", *args]
    try:
        with caplog.at_level(logging.INFO):
            main()
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out + out.err + caplog.text


@pytest.mark.slow  # the study's checks import the trainer (seconds)
def test_bad_sweep_exits_2_naming_the_job_before_anything_is_written(tmp_path, capsys, caplog):
    args = ["-m", "debug=tiny", f"cache_dir={tmp_path}/c", f"results_dir={tmp_path}/r",
            f"hydra.sweep.dir={tmp_path}/sweep", "hydra/launcher=local", "selection.only=random,bogus,kcenter"]
    code, out = _study_main(args, capsys, caplog)
    assert code == 2 and "sweep job #1 (selection.only=bogus) of 3" in out and "'bogus'" in out, out
    assert "nothing was submitted" in out and not list(tmp_path.iterdir())
    code, out = _study_main([*args[:-1], "selection.only=random,kcenter", "finetune.max_length=64,-1"], capsys,
                            caplog)  # a bad value in one job of a sweep over another key
    assert code == 2 and "finetune.max_length=-1" in out and not list(tmp_path.iterdir()), out


@pytest.mark.parametrize(("request_", "message"), [
    ({"partition": "bigmem"}, r"partition=bigmem: no partition \['bigmem'\].*\['debug', 'gpu'\]"),
    ({"cpus_per_task": 3, "tasks_per_node": 2}, r"cpus_per_task=3 x tasks_per_node=2 = 6 CPUs.*partition debug has 4"),
    ({"mem_gb": 64}, r"mem_gb=64.*largest node of partition debug has 23\.4 GB"),
    ({"gpus_per_node": 1}, r"gpus_per_node=1.*partition debug has no GPUs.*gpus_per_node=0"),
    ({"partition": "gpu", "gpus_per_node": 16}, r"gpus_per_node=16.*most GPUs has 8"),
    ({"nodes": 3}, r"nodes=3.*partition debug has 2 node"),
])
def test_slurm_request_no_node_can_meet_is_refused_naming_the_option(request_, message):
    with pytest.raises(InputError, match=message):
        check_slurm_request(_launcher(**request_), NODES)


def test_slurm_request_within_a_node_passes():
    check_slurm_request(_launcher(cpus_per_task=2, tasks_per_node=2, mem_gb=20), NODES)  # cpu2's CPUs, cpu1's memory
    check_slurm_request(_launcher(partition="gpu", gpus_per_node=8, cpus_per_task=4, tasks_per_node=8), NODES)
    check_slurm_request(_launcher(partition="debug,gpu", gpus_per_node=8), NODES)
    with pytest.raises(InputError, match="no default partition"):
        check_slurm_request(_launcher(), [n for n in NODES if not n.default])
