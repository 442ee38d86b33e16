"""divbench-study: the whole study, pool -> embeddings -> subsets -> diversity metrics -> fine-tune -> evaluate ->
correlation report, each stage cached (re-runs resume; a changed setting rebuilds only what depends on it).

Main keys: experiment=<demo | mini | noise_floor | paper_llama3 | paper_qwen25> (a preset), debug=tiny (the
smallest complete study), dry_run=true (what is done / to run, and plan.csv), stop_after=<stage>,
selection.only=<label> (one subset: fan-out sweeps), cache_dir, results_dir, device, logger=none.
Writes results_dir (results/<study>/: runs.csv, table.*, noise_floor.json, figures) and the cache under cache_dir.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig

from experiments.cli.command import hydra_command, resolve

log = logging.getLogger("divbench")


# Overrides that say where or how a job runs, not what it studies: left out of a sweep job's folder name.
# ``selection.only`` is a fan-out of one study, not a variant: its jobs share the study's folder and its gather.
NOT_IN_JOB_NAME = ("experiment", "debug", "results_dir", "cache_dir", "shared_dir", "dry_run", "hydra", "logger",
                   "device", "selection.only")


def _in_job_name(key: str) -> bool:
    return key not in NOT_IN_JOB_NAME and key.split(".", 1)[0].split("/", 1)[0] not in NOT_IN_JOB_NAME


MAX_JOB_NAME = 200  # bytes; a folder name may have 255 (a model path among the overrides easily passes that)


def job_name(overrides: list[str], swept: set[str] | None = None) -> str:
    """A sweep job's folder name from its overrides (``key=value``, comma-joined, ``/`` -> ``_``): the ``swept`` keys
    (those the command line gave several values; all of them when ``None``), leaving out where/how it runs
    (:data:`NOT_IN_JOB_NAME`). A setting every job shares names no folder: it is the study, not a variant. A name
    over :data:`MAX_JOB_NAME` bytes keeps its start and ends in ``~`` and a hash of the whole, so it stays unique and
    fits the filesystem."""
    import hashlib

    def kept(override: str) -> bool:
        key = override.lstrip("+~").split("=", 1)[0]
        return _in_job_name(key) and (swept is None or key in swept)

    name = ",".join(sorted(o.lstrip("+~") for o in overrides if kept(o))).replace("/", "_") or "default"
    if len(name.encode()) <= MAX_JOB_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return name.encode()[:MAX_JOB_NAME - 13].decode(errors="ignore") + "~" + digest


def swept_keys(hydra_cfg: Any) -> set[str] | None:
    """The keys whose value differs between a multirun's jobs (a job sees only its own values): the sweep expanded
    from the ``multirun.yaml`` Hydra's basic sweeper saves in the sweep folder, as the pre-submit checks expand it
    (:func:`experiments.engine.cluster.sweep_jobs`); ``None`` with a sweeper that saves none or expands its own
    jobs (then every override names the job)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from experiments.engine.cluster import sweep_jobs, varying_keys

    folder = Path(hydra_cfg.sweep.dir)
    path = folder if folder.is_absolute() else Path(hydra_cfg.runtime.cwd) / folder
    path = path / "multirun.yaml"
    if not path.exists():
        log.info("no %s: every override of a sweep job names its results folder", path)
        return None
    saved = OmegaConf.load(path)
    jobs = sweep_jobs(saved, list(saved.hydra.overrides.task))
    return None if jobs is None else varying_keys(jobs)


def per_job_results(cfg: dict[str, Any]) -> str | None:
    """Under ``-m`` each job writes ``<results_dir>/<its swept overrides>/`` (see :func:`job_name`), so jobs of a
    sweep never overwrite each other; ``divbench-report runs=[...]`` combines them. A fan-out over
    ``selection.only`` alone is one study in chunks: its jobs share the study's folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra_cfg = HydraConfig.get()
    name = job_name(list(hydra_cfg.overrides.task), swept_keys(hydra_cfg))
    if name == "default":
        return None
    cfg["results_dir"] = f"{cfg['results_dir']}/{name}"
    log.info("sweep job %s: results in %s", name, cfg["results_dir"])
    return name


def run(cfg: dict[str, Any] | DictConfig) -> dict:
    """Run the study on the config (resolved here if it is not yet); shared by the command and the tests."""
    from experiments.engine.pipeline import run_study

    os.environ.setdefault("WANDB_SILENT", "true")
    resolved = resolve(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    variant = per_job_results(resolved)
    if variant:  # W&B: the study run's name, group and config carry the job's overrides
        resolved["variant"] = variant
        logger = resolved.get("logger") or {}
        logger["group"] = f"{logger.get('group') or resolved['study']}/{variant}"
    result = run_study(resolved)
    for stage, t in result.get("timings", {}).items():
        log.info("stage %-9s wall %7.1f s   peak RSS %.2f GiB", stage, t["wall_s"], t["peak_rss_gib"])
    if result.get("paths"):
        table = result["paths"].get("table_csv")
        if table and os.path.exists(table):
            log.info("%s", headline(table))
        log.info("results in %s (%s)", resolved["results_dir"],
                 ", ".join(sorted(os.path.basename(str(p)) for p in result["paths"].values())))
    return result


def _num(value: object) -> str:
    return f"{value:6.2f}" if isinstance(value, float) else str(value)


def headline(table_csv: str) -> str:
    """The study's answer in a few lines: per metric Pearson r [95% CI], Spearman rho, q (BH), n and the paper's
    value, strongest r first."""
    import pandas as pd

    t = pd.read_csv(table_csv)
    t = t[t.get("base_model", "all") == "all"] if "base_model" in t and (t["base_model"] == "all").any() else t
    t = t.sort_values("pearson_r", ascending=False, key=lambda r: r.abs())
    rows = [f"{'metric':<20} {'r [95% CI]':<24} {'rho':>6} {'q':>6} {'n':>3} {'paper':>6}"]
    for r in t.itertuples():
        paper = getattr(r, "paper_reported", float("nan"))
        rows.append(f"{r.metric:<20} {r.pearson_r:6.2f} [{r.pearson_ci_low:5.2f}, {r.pearson_ci_high:5.2f}]    "
                    f"{r.spearman_rho:6.2f} {getattr(r, 'pearson_q', float('nan')):6.2f} {int(r.n):>3} "
                    f"{'' if pd.isna(paper) else _num(paper)}")
    return "correlation with the study's target:\n" + "\n".join(rows)


def check_config(cfg: dict[str, Any]) -> None:
    """The study's checks that need no data or model (the pipeline is imported only here, when needed)."""
    from experiments.engine.pipeline import check_study_config

    check_study_config(cfg)


main = hydra_command("study", validate=check_config)(run)

if __name__ == "__main__":
    main()
