"""Weights & Biases: offline by default, one run per subset stage and one for the study, always finished
(failed ones marked failed)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


@contextmanager
def wandb_run(cfg: dict[str, Any], *, name: str, job_type: str, config: dict[str, Any],
              tags: list[str] | None = None) -> Iterator[Any]:
    """A W&B run (or None when ``cfg['enabled']`` is false), always finished: with exit code 1 (failed) when the
    body raises, so a crashed or interrupted stage never shows as a success."""
    if not cfg.get("enabled", False):
        yield None
        return
    import wandb

    os.makedirs(cfg["dir"], exist_ok=True)
    run = wandb.init(project=cfg["project"], entity=cfg.get("entity"), group=cfg.get("group"), name=name,
                     job_type=job_type, config=config, tags=list(cfg.get("tags") or []) + list(tags or []),
                     mode=cfg.get("mode", "offline"), dir=cfg["dir"], reinit="finish_previous")
    try:
        yield run
    except BaseException:
        run.finish(exit_code=1)  # W&B shows the stage's run as failed, not as a finished success
        raise
    run.finish()
