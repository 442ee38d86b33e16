"""Hydra entry point: rebuild every table, figure and report.html from a runs.csv alone.

``divbench-report runs=results/demo/runs.csv`` (``out`` defaults to the folder of runs.csv), or several base
models' runs in one report: ``divbench-report runs=[results/llama/runs.csv,results/qwen/runs.csv] out=results/both``.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from experiments.engine.config import CONFIG_DIR

log = logging.getLogger("divbench.report")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="report")
def _hydra_main(cfg: DictConfig) -> None:
    from experiments.cli.command import guard
    from experiments.report.tables import regenerate

    def work() -> dict:
        runs = OmegaConf.to_container(cfg.runs) if isinstance(cfg.runs, ListConfig) else cfg.runs
        covariates = OmegaConf.to_container(cfg.covariates) if isinstance(cfg.covariates, ListConfig) else None
        return regenerate(runs, cfg.out, exclude=list(cfg.exclude_selectors or []), n_boot=cfg.n_boot,
                          seed=cfg.seed, n_perm=cfg.n_perm, reference_metric=cfg.reference_metric, alpha=cfg.alpha,
                          block=cfg.block, covariates=covariates, untuned_performance=cfg.untuned_performance)

    paths = guard(work)
    log.info("wrote %d files to %s", len(paths), paths["runs"].parent)


def main() -> None:
    """``divbench-report``: the runs table and the output folder are checked before Hydra writes anything."""
    from experiments.cli.command import preflight
    from experiments.report.tables import check_report_config

    preflight("report", validate=check_report_config)
    _hydra_main()


if __name__ == "__main__":
    main()
