"""Hydra entry point ``divbench-embed``: a pool -> embeddings, the authors' ``embedding.py`` as a command.

* ``out=<dir>``: the authors' layout, one JSON list of vectors per pool file with the pool file's name
  (``0.json, 1.json, ...`` for their numbered text directory; ``<stem>.json`` for a single file). A file whose
  output already holds as many vectors as it has records is skipped, so a killed run resumes per file.
* ``out=<file>.npy``: one matrix.

Both run the engine's pool and embed stages (``experiments.engine.embed_pool``), with every embed option the study
passes.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.engine.config import CONFIG_DIR

log = logging.getLogger("divbench.embed")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="embed_pool")
def _hydra_main(cfg: DictConfig) -> None:
    from experiments.cli.command import guard
    from experiments.engine.embed_pool import embed_pool

    guard(lambda: embed_pool(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)))


def main() -> None:
    """``divbench-embed``: secrets and the config are checked before Hydra writes its run folder."""
    from experiments.cli.command import preflight

    preflight("embed_pool")
    _hydra_main()


if __name__ == "__main__":
    main()
