"""Hydra entry point: rebuild every table and figure from a runs.csv alone.

``divbench-report runs=results/demo/runs.csv`` (``out`` defaults to the folder of runs.csv), or several base
models' runs in one report: ``divbench-report runs=[results/llama/runs.csv,results/qwen/runs.csv] out=results/both``.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from experiments.run_study import CONFIG_DIR

log = logging.getLogger("divbench.report")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="report")
def main(cfg: DictConfig) -> None:
    from experiments.report import regenerate
    from metrics.validation import InputError

    try:
        runs = OmegaConf.to_container(cfg.runs) if isinstance(cfg.runs, ListConfig) else cfg.runs
        paths = regenerate(runs, cfg.out, n_boot=cfg.n_boot, seed=cfg.seed, n_perm=cfg.n_perm,
                           reference_metric=cfg.reference_metric, alpha=cfg.alpha)
    except InputError as e:
        log.error("%s", e)
        sys.exit(2)
    log.info("wrote %d files to %s", len(paths), paths["runs"].parent)


if __name__ == "__main__":
    main()
