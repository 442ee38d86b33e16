"""Weights & Biases: offline by default, one run per subset stage and one for the study, always finished
(failed ones marked failed)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from divcore.secrets import redact

log = logging.getLogger(__name__)
WANDB_MODES = ("online", "offline", "disabled", "dryrun", "shared")  # what wandb.init(mode=...) accepts


def check_logger_config(cfg: dict[str, Any]) -> None:
    """An enabled logger's mode (``logger.mode``, from ``WANDB_MODE``) is one W&B accepts: checked before any work,
    not found by ``wandb.init`` after it."""
    from divcore.errors import InputError

    if cfg.get("enabled") and cfg.get("mode", "offline") not in WANDB_MODES:
        raise InputError(f"logger.mode={cfg.get('mode')!r} (from WANDB_MODE or the command line) is not a W&B mode; "
                         f"use one of {list(WANDB_MODES)} (export WANDB_MODE=offline), or logger=none")


@contextmanager
def wandb_run(cfg: dict[str, Any], *, name: str, job_type: str, config: dict[str, Any],
              tags: list[str] | None = None) -> Iterator[Any]:
    """A W&B run (or None when ``cfg['enabled']`` is false), always finished: with exit code 1 (failed) when the
    body raises, so a crashed or interrupted stage never shows as a success."""
    if not cfg.get("enabled", False):
        yield None
        return
    check_logger_config(cfg)
    import wandb

    os.makedirs(cfg["dir"], exist_ok=True)
    run = wandb.init(project=cfg["project"], entity=cfg.get("entity"), group=cfg.get("group"), name=name,
                     job_type=job_type, config=redact(config), tags=list(cfg.get("tags") or []) + list(tags or []),
                     mode=cfg.get("mode", "offline"), dir=cfg["dir"], reinit="finish_previous")
    try:
        yield run
    except BaseException:
        run.finish(exit_code=1)  # W&B shows the stage's run as failed, not as a finished success
        raise
    run.finish()


def log_tables(cfg: dict[str, Any], *, name: str, config: dict[str, Any], tables: dict[str, list[dict]],
               summary: dict[str, Any]) -> None:
    """One W&B run holding each table (e.g. a model's generations with the judge's prompt, reply and score, so a
    researcher can read what the judge saw and said) and the numeric summary."""
    with wandb_run(cfg, name=name, job_type="judge", config=config) as run:
        if run is not None:
            log_to_run(run, tables, summary)


def log_to_run(run: Any, tables: dict[str, list[dict]], summary: dict[str, Any] | None = None) -> None:
    """Log ``tables`` (rows of plain values) as ``wandb.Table``s and the numbers of ``summary`` into ``run``."""
    import pandas as pd
    import wandb

    for key, rows in tables.items():
        if rows:
            frame = pd.DataFrame(rows)
            frame = frame.astype(object).where(frame.notna(), None)
            run.log({f"{key}/judgments": wandb.Table(dataframe=frame)})
    numbers = {k: v for k, v in (summary or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        run.log(numbers)
