"""divbench-select: one subset of a pool, selected and exported as files and a Hugging Face dataset
(``experiments.data.export``).

``divbench-select pool.path=text/ embed=precomputed embed.path=emb/ selector=novelselect size=1000 out=ns1k``
Main keys: pool.path, embed=<smollm2 | minilm | vllm | precomputed> (embed.path for precomputed), selector (any of
selection.available()), params.<name>=<value> (the selector's parameters), size, seed, out, overwrite, map=true
(pool.parquet for embedding-atlas), push_to_hub=<user/repo>, from_study=<results_dir>.

Runs the engine up to the metrics stage (``experiments.engine.subsets.run_select``) on the study's artifact cache,
so a selection a study already made (same pool, embeddings, selector, parameters, seed and size) is read back, not
recomputed. ``from_study=<results_dir>`` exports every subset of a finished study instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from experiments.cli.command import hydra_command

log = logging.getLogger("divbench.select")


def select(cfg: dict[str, Any]) -> Path:
    """Export one selection, or every subset of a study; logs where."""
    from experiments.engine.subsets import run_select

    out = run_select(cfg)
    log.info("exported to %s", out)
    return out


# a study's subsets (from_study) need no pool.path; params starts empty, so params.<name>= adds a key (the
# selector's own signature then refuses unknown names)
main = hydra_command("select", all_values=lambda cfg: not cfg.get("from_study"), additions=("params.",))(select)

if __name__ == "__main__":
    main()
