"""Hydra entry point: measure any embedding sets with any metric configs, one row per subset.

``divbench-measure subsets=/data/subset_embeddings/ reference=/data/pool_embeddings/ out=results/measure``
writes ``measure.csv`` and ``measure.md`` (one column per metric configuration). ``metrics=<group>`` and
``metrics.compute=[...]`` choose what is computed, as in the study.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from experiments.run_study import CONFIG_DIR

log = logging.getLogger("divbench.measure")


def measure(cfg: dict) -> pd.DataFrame:
    import metrics
    from experiments.cache import atomic_write
    from experiments.embedding_sets import load_matrix, load_subsets
    from experiments.report import to_markdown
    from metrics.registry import check_config

    configs = list(cfg["metrics"]["compute"])
    for c in configs:
        check_config(c["name"], dict(c.get("params") or {}))
    reference = load_matrix(cfg["reference"]) if cfg.get("reference") else None
    rows = []
    for name, emb in load_subsets(cfg["subsets"]).items():
        ref = emb if reference is None else reference
        row = metrics.compute(configs, metrics.MetricInputs(embeddings=emb, reference=ref))
        rows.append({"subset": name, "n": len(emb)} | row)
        log.info("measured %s (%d rows)", name, len(emb))
    table = pd.DataFrame(rows)
    out = Path(cfg["out"])
    atomic_write(out / "measure.csv", table.to_csv(index=False))
    atomic_write(out / "measure.md", to_markdown(table))
    log.info("wrote %s", out / "measure.csv")
    return table


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="measure")
def main(cfg: DictConfig) -> None:
    from metrics.validation import InputError

    try:
        measure(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    except InputError as e:
        log.error("%s", e)
        sys.exit(2)


if __name__ == "__main__":
    main()
