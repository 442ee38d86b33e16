"""Hydra entry point: ``divbench-study experiment=demo`` (or ``python -m experiments.cli.study``)."""

from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.engine.config import CONFIG_DIR

log = logging.getLogger("divbench")


# Overrides that say where or how a job runs, not what it studies: left out of a sweep job's folder name.
NOT_IN_JOB_NAME = ("experiment", "debug", "results_dir", "cache_dir", "shared_dir", "dry_run", "hydra", "logger",
                   "device")


def job_name(overrides: list[str]) -> str:
    """A sweep job's folder name from its command-line overrides (``key=value``, comma-joined, ``/`` -> ``_``),
    leaving out where/how it runs (:data:`NOT_IN_JOB_NAME`)."""
    kept = [o.lstrip("+~") for o in overrides
            if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0].split("/", 1)[0] not in NOT_IN_JOB_NAME]
    return ",".join(sorted(kept)).replace("/", "_") or "default"


def per_job_results(cfg: DictConfig) -> str | None:
    """Under ``-m`` each job writes ``<results_dir>/<its overrides>/`` (see :func:`job_name`), so jobs of a sweep
    never overwrite each other; ``divbench-report runs=[...]`` combines them."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    name = job_name(list(HydraConfig.get().overrides.task))
    cfg.results_dir = f"{cfg.results_dir}/{name}"
    log.info("sweep job %s: results in %s", name, cfg.results_dir)
    return name


def run(cfg: DictConfig) -> dict:
    """Resolve the config and run the study; shared by the CLI and the tests."""
    from experiments.engine.pipeline import run_study

    os.environ.setdefault("WANDB_SILENT", "true")
    variant = per_job_results(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
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


def check_config(cfg: dict) -> None:
    """The study's checks that need no data or model (the pipeline is imported only here, when needed)."""
    from experiments.engine.pipeline import check_study_config

    check_study_config(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="study")
def _hydra_main(cfg: DictConfig) -> None:
    from experiments.cli.command import guard

    guard(lambda: run(cfg))


def main() -> None:
    """``divbench-study``: secrets and the config are checked before Hydra writes its run folder."""
    from experiments.cli.command import preflight

    preflight("study", validate=check_config)
    _hydra_main()


if __name__ == "__main__":
    main()
