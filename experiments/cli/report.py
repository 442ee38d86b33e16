"""divbench-report: rebuild every table, figure and report.html of a study from its runs.csv alone (no cache, no
model).

``divbench-report runs=results/demo/runs.csv`` (out defaults to the folder of runs.csv), or several base models'
runs in one report: ``divbench-report runs=[results/llama/runs.csv,results/qwen/runs.csv] out=results/both``.
Main keys: runs, out, exclude_selectors=[...] (a sensitivity report without those selectors' subsets, written to
another out), n_boot, n_perm, reference_metric, alpha, block, covariates, untuned_performance, seed. Writes
table.md / .csv / .tex, noise_floor.json, the figures and report.html; a folder it did not write is refused.
"""

from __future__ import annotations

import logging
from typing import Any

from experiments.cli.command import hydra_command
from experiments.report.tables import check_report_config

log = logging.getLogger("divbench.report")


def regenerate_report(cfg: dict[str, Any]) -> dict:
    """Regenerate the report the resolved config asks for; returns the written paths."""
    from experiments.report.tables import regenerate

    paths = regenerate(cfg["runs"], cfg["out"], exclude=list(cfg.get("exclude_selectors") or []),
                       n_boot=cfg["n_boot"], seed=cfg["seed"], n_perm=cfg["n_perm"],
                       reference_metric=cfg["reference_metric"], alpha=cfg["alpha"], block=cfg["block"],
                       covariates=cfg["covariates"], untuned_performance=cfg["untuned_performance"])
    log.info("wrote %d files to %s", len(paths), paths["runs"].parent)
    return paths


main = hydra_command("report", validate=check_report_config)(regenerate_report)

if __name__ == "__main__":
    main()
