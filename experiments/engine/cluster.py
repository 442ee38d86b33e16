"""What a multirun (``-m``) will submit, known before anything is queued: every job's overrides, as Hydra's basic
sweeper expands them, and a SLURM launcher's request checked against the cluster's partitions (``sinfo``).

A request no node can meet would otherwise wait in the queue forever (``PD (PartitionConfig)``, e.g. the shipped
launchers' ``cpus_per_task: 8`` on a smaller node), and a typo in a sweep would cost a queue wait per job.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from divcore.errors import InputError

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
SINFO_TIMEOUT_S = 60


def compose_with_hydra(config_name: str, overrides: list[str]) -> Any:
    """The primary config with its ``hydra`` node (launcher, sweeper), composed from the overrides that are not
    sweeps (``key=a,b``); composition errors are input errors."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from experiments.engine.config import CONFIG_DIR

    try:
        fixed = [o.input_line for o in OverridesParser.create().parse_overrides(overrides)
                 if not o.is_sweep_override()]
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name, overrides=fixed, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise InputError(f"command line: {e} (check the key's spelling and its config group)") from None


def sweep_jobs(cfg: Any, overrides: list[str]) -> list[list[str]] | None:
    """Each job's overrides, as Hydra's ``BasicSweeper`` builds them: ``hydra.sweeper.params`` first, then the
    command line (a key given in both: the command line's value), the cartesian product of every ``a,b,c``. None
    for another sweeper (its jobs are chosen while it runs)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    sweeper = cfg.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    try:
        parsed = OverridesParser.create().parse_overrides([*params, *overrides])
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except HydraException as e:
        raise InputError(f"command line: {e}") from None


def varying_keys(jobs: list[list[str]]) -> set[str]:
    """The override keys whose value differs between the jobs of a sweep.

    >>> sorted(varying_keys([["a=1", "b=x"], ["a=2", "b=x"]]))
    ['a']
    """
    return {o.lstrip("+~").partition("=")[0] for job in jobs for o in job if any(o not in other for other in jobs)}


def is_slurm(launcher: Any) -> bool:
    return launcher.get("_target_") == SLURM_LAUNCHER


@dataclass(frozen=True)
class Node:
    """One node of a partition as ``sinfo`` reports it."""

    name: str
    partition: str
    cpus: int
    memory_mb: int
    gpus: int
    default: bool


def gpu_count(gres: str) -> int:
    """GPUs in a node's GRES string: ``gpu:4``, ``gpu:a100:8(S:0-1)``, several comma-separated entries, or
    ``(null)``.

    >>> gpu_count("gpu:a100:8(S:0-1),shard:16"), gpu_count("(null)"), gpu_count("gpu:2")
    (8, 0, 2)
    """
    return sum(int(m.group(1)) for m in re.finditer(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))


def parse_sinfo(text: str) -> list[Node]:
    """``sinfo -h -N -o %N|%P|%c|%m|%G`` lines; the default partition carries a ``*``.

    >>> parse_sinfo("n1|debug*|2|24105|(null)")[0]
    Node(name='n1', partition='debug', cpus=2, memory_mb=24105, gpus=0, default=True)
    """
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, partition, cpus, memory, gres = line.split("|", 4)
        nodes.append(Node(name, partition.rstrip("*"), int(cpus.rstrip("+")), int(memory.rstrip("+")),
                          gpu_count(gres), partition.endswith("*")))
    return nodes


def cluster_nodes() -> list[Node]:
    """Every node of every partition the scheduler reports (one line per node and partition)."""
    if shutil.which("sinfo") is None:
        raise InputError("hydra/launcher is a SLURM launcher but SLURM's sinfo is not on PATH: launch from the "
                         "cluster's login node (or use hydra/launcher=local on one machine)")
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N|%P|%c|%m|%G"], capture_output=True, text=True,
                             timeout=SINFO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InputError(f"sinfo did not answer within {SINFO_TIMEOUT_S} s: is the SLURM controller up?") from None
    if out.returncode != 0:
        raise InputError(f"sinfo failed (exit {out.returncode}): {out.stderr.strip()}; is the SLURM controller "
                         "up and SLURM_CONF right?")
    return parse_sinfo(out.stdout)


def _value(launcher: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(launcher, key, throw_on_resolution_failure=False)


def check_slurm_request(launcher: Any, nodes: list[Node] | None = None) -> None:
    """Refuse a request no node of the chosen partition can meet, naming the option: an unknown partition,
    ``cpus_per_task`` x ``tasks_per_node`` above every node's CPUs, ``mem_gb`` above every node's memory,
    ``gpus_per_node`` above every node's GPUs (any on a GPU-less partition), ``nodes`` above the partition's
    size. ``launcher`` is the composed ``hydra.launcher`` node; ``nodes`` defaults to :func:`cluster_nodes`."""
    nodes = cluster_nodes() if nodes is None else nodes
    partitions = sorted({n.partition for n in nodes})
    wanted = _value(launcher, "partition")
    if wanted:
        names = [p.strip() for p in str(wanted).split(",")]
        unknown = [p for p in names if p not in partitions]
        if unknown:
            raise InputError(f"hydra.launcher.partition={wanted}: no partition {unknown} on this cluster (it has "
                             f"{partitions}); set hydra.launcher.partition to one of them")
        pool = [n for n in nodes if n.partition in names]
    else:
        pool = [n for n in nodes if n.default]
        if not pool:
            raise InputError(f"hydra.launcher.partition is unset and this cluster has no default partition; set "
                             f"hydra.launcher.partition to one of {partitions}")
    where = f"partition {wanted or pool[0].partition}"
    tasks = int(_value(launcher, "tasks_per_node") or 1)
    cpus = int(_value(launcher, "cpus_per_task") or 1)
    most_cpus = max(n.cpus for n in pool)
    if cpus * tasks > most_cpus:
        raise InputError(f"hydra.launcher.cpus_per_task={cpus} x tasks_per_node={tasks} = {cpus * tasks} CPUs, but "
                         f"the largest node of {where} has {most_cpus}: lower hydra.launcher.cpus_per_task (the "
                         "job would wait in the queue forever)")
    mem_gb = _value(launcher, "mem_gb")
    most_mb = max(n.memory_mb for n in pool)
    if mem_gb is not None and float(mem_gb) * 1024 > most_mb:
        raise InputError(f"hydra.launcher.mem_gb={mem_gb}, but the largest node of {where} has "
                         f"{most_mb / 1024:.1f} GB: lower hydra.launcher.mem_gb")
    gpus = int(_value(launcher, "gpus_per_node") or 0)
    most_gpus = max(n.gpus for n in pool)
    if gpus > most_gpus:
        raise InputError(f"hydra.launcher.gpus_per_node={gpus}, but " + (
            f"{where} has no GPUs: choose a GPU partition (hydra.launcher.partition) or set "
            "hydra.launcher.gpus_per_node=0" if most_gpus == 0 else
            f"the node of {where} with most GPUs has {most_gpus}: lower hydra.launcher.gpus_per_node"))
    count = int(_value(launcher, "nodes") or 1)
    size = len({n.name for n in pool})
    if count > size:
        raise InputError(f"hydra.launcher.nodes={count}, but {where} has {size} node(s): lower hydra.launcher.nodes")
