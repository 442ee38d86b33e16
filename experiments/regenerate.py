"""Hydra entry point: rebuild every table and figure from a runs.csv alone.

``divbench-report runs=results/demo/runs.csv`` (``out`` defaults to the folder of runs.csv).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from experiments.run_study import CONFIG_DIR

log = logging.getLogger("divbench.report")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="report")
def main(cfg: DictConfig) -> None:
    from experiments.report import regenerate
    from metrics.validation import InputError

    try:
        paths = regenerate(cfg.runs, cfg.out, n_boot=cfg.n_boot, seed=cfg.seed)
    except InputError as e:
        log.error("%s", e)
        sys.exit(2)
    log.info("wrote %d files to %s", len(paths), paths["table_md"].parent)


if __name__ == "__main__":
    main()
