"""divbench-embed: a pool -> embeddings, the authors' ``embedding.py`` as a command.

Main keys: pool.path (or pool=<sharegpt | paper_mix>), embed=<smollm2 | minilm | vllm> (the study's backends) with
embed.model / embed.max_length, out (a folder or a .npy file), cache_dir.

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

from pathlib import Path
from typing import Any

from experiments.cli.command import hydra_command
from experiments.engine.embed_pool import check_embed_pool_config, embed_pool


def embed(cfg: dict[str, Any]) -> Path:
    """The command's work (Hydra names the job, its log and run folder after this module: embed)."""
    return embed_pool(cfg)


main = hydra_command("embed_pool", validate=check_embed_pool_config)(embed)

if __name__ == "__main__":
    main()
