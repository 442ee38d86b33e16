"""Hydra entry point: measure any embedding sets with any metric configs, one row per subset.

``divbench-measure subsets=/data/subset_embeddings/ reference=/data/pool_embeddings/ out=results/measure``
writes ``measure.csv`` and ``measure.md`` (one column per metric configuration). ``metrics=<group>`` and
``metrics.compute=[...]`` choose what is computed, as in the study.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.engine.config import CONFIG_DIR

log = logging.getLogger("divbench.measure")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="measure")
def _hydra_main(cfg: DictConfig) -> None:
    from experiments.cli.command import guard
    from experiments.report.measure import measure

    guard(lambda: measure(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)))


def main() -> None:
    """``divbench-measure``: secrets, inputs and the output folder are checked before Hydra writes anything."""
    from experiments.cli.command import preflight
    from experiments.report.measure import check_measure_config

    preflight("measure", validate=check_measure_config)
    _hydra_main()


if __name__ == "__main__":
    main()
