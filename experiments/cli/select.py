"""Hydra entry point ``divbench-select``: one subset of a pool, exported (``experiments.data.export``).

``divbench-select pool.path=text/ embed=precomputed embed.path=emb/ selector=novelselect size=1000 out=ns1k``

Runs the engine up to the metrics stage (``experiments.engine.subsets.run_select``) on the study's artifact cache,
so a selection a study already made (same pool, embeddings, selector, parameters, seed and size) is read back, not
recomputed. ``from_study=<results_dir>`` exports every subset of a finished study instead.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.engine.config import CONFIG_DIR

log = logging.getLogger("divbench.select")


def params_as_additions(argv: list[str]) -> list[str]:
    """``params.<name>=<value>`` -> ``++params.<name>=<value>``: ``params`` starts empty and Hydra would otherwise
    refuse a key it does not hold; the selector's own signature then rejects unknown names (exit 2)."""
    return [f"++{a}" if a.startswith("params.") and "=" in a else a for a in argv]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="select")
def _main(cfg: DictConfig) -> None:
    from experiments.cli.command import guard
    from experiments.engine.subsets import run_select

    def work() -> None:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=not cfg.get("from_study"))
        log.info("exported to %s", run_select(resolved))

    guard(work)


def main() -> None:
    """``divbench-select``: secrets are refused before Hydra writes anything (mandatory keys depend on the mode,
    so the config is resolved in the run)."""
    from experiments.cli.command import preflight

    sys.argv = sys.argv[:1] + params_as_additions(sys.argv[1:])
    preflight("select", resolve=False)
    _main()


if __name__ == "__main__":
    main()
