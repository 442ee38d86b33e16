"""divbench-measure: diversity metrics of embedding sets already on disk, one row per subset (no pool, no model).

``divbench-measure subsets=/data/subset_embeddings/ reference=/data/pool_embeddings/ out=results/measure``
Main keys: subsets (a .npy / .json file or a folder of them, one subset per file), reference (density / coverage
reference; null: each subset is its own), metrics=<default | embedding_only | paper> or metrics.compute=[...] (as in
the study), out. Writes <out>/measure.csv and measure.md (one column per metric configuration).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from experiments.cli.command import hydra_command
from experiments.report.measure import check_measure_config, measure


def measure_embedding_sets(cfg: dict[str, Any]) -> pd.DataFrame:
    """The command's work (Hydra names the job, its log and run folder after this module: measure)."""
    return measure(cfg)


main = hydra_command("measure", validate=check_measure_config)(measure_embedding_sets)

if __name__ == "__main__":
    main()
