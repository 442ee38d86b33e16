"""Hydra entry point: ``divbench-study experiment=demo`` (or ``python -m experiments.cli.study``)."""

from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.engine.config import CONFIG_DIR

log = logging.getLogger("divbench")


def run(cfg: DictConfig) -> dict:
    """Resolve the config and run the study; shared by the CLI and the tests."""
    from experiments.engine.pipeline import run_study

    os.environ.setdefault("WANDB_SILENT", "true")
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    result = run_study(resolved)
    for stage, t in result.get("timings", {}).items():
        log.info("stage %-9s wall %7.1f s   peak RSS %.2f GiB", stage, t["wall_s"], t["peak_rss_gib"])
    if result.get("paths"):
        log.info("results in %s", resolved["results_dir"])
    return result


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
