"""Hydra entry point ``divbench-embed``: a pool -> embeddings, the authors' ``embedding.py`` as a command.

* ``out=<dir>``: the authors' layout, one JSON list of vectors per pool file with the pool file's name
  (``0.json, 1.json, ...`` for their numbered text directory; ``<stem>.json`` for a single file). The folder's
  manifest records each file's provenance (model, settings, SHA-256 of its texts); a re-run keeps a finished file
  only when they match and redoes the rest. ``out`` may not be the pool folder, nor hold files divbench did not
  write.
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
    from experiments.engine.embed_pool import check_embed_pool_config

    preflight("embed_pool", validate=check_embed_pool_config)
    _hydra_main()


if __name__ == "__main__":
    main()
