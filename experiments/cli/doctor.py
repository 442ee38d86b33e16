"""divbench-doctor: can the chosen preset run on this machine? Lists torch / CUDA / GPUs, faiss, vLLM, DeepSpeed,
the Hugging Face token, the judge's key variable and free disk, names each missing thing with its fix and exits 2
(checks: :mod:`experiments.engine.environment`). Nothing is downloaded or written.

Main keys: the study's (experiment=<preset>, debug=tiny, device, eval/judge=..., cache_dir).
"""

from __future__ import annotations

import logging
from typing import Any

from divcore.errors import InputError
from experiments.cli.command import hydra_command
from experiments.engine.environment import Check, diagnose

log = logging.getLogger("divbench")


def log_checks(checks: list[Check]) -> int:
    """One line per check, one per missing thing with its fix; returns how many are missing."""
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "MISS" if not c.ok else "--  " if c.found.startswith("not installed") else "ok  "
        log.info("%s %-*s  %s", mark, width, c.name, c.found)
    missing = [c for c in checks if not c.ok]
    for c in missing:
        log.error("missing %s: %s", c.name, c.fix)
    if not missing:
        log.info("everything this preset needs is here")
    return len(missing)


def doctor(cfg: dict[str, Any]) -> None:
    """Diagnose the resolved study config; anything missing is an input error (exit 2)."""
    log.info("divbench-doctor: study %s", cfg["study"])
    missing = log_checks(diagnose(cfg))
    if missing:
        raise InputError(f"{missing} thing(s) missing: this preset cannot run here")


main = hydra_command("study")(doctor)

if __name__ == "__main__":
    main()
