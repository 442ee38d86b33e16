"""``divbench-doctor [experiment=...]``: can the chosen preset run on this machine? Names each missing thing with
its fix and exits 2 (checks: :mod:`experiments.engine.environment`). Nothing is downloaded or written."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.engine.config import CONFIG_DIR
from experiments.engine.environment import Check, diagnose

log = logging.getLogger("divbench")


def report(checks: list[Check]) -> int:
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "MISS" if not c.ok else "--  " if c.found.startswith("not installed") else "ok  "
        log.info("%s %-*s  %s", mark, width, c.name, c.found)
    missing = [c for c in checks if not c.ok]
    for c in missing:
        log.error("missing %s: %s", c.name, c.fix)
    if missing:
        log.error("%d thing(s) missing: this preset cannot run here", len(missing))
    else:
        log.info("everything this preset needs is here")
    return 2 if missing else 0


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="study")
def _hydra_main(cfg: DictConfig) -> None:
    from experiments.cli.command import guard

    resolved = guard(lambda: OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    log.info("divbench-doctor: study %s", resolved["study"])
    code = report(diagnose(resolved))
    if code:
        sys.exit(code)


def main() -> None:
    """``divbench-doctor``: secrets, composition errors and missing keys are reported (exit 2) before Hydra writes
    anything."""
    from experiments.cli.command import preflight

    preflight("study")
    _hydra_main()


if __name__ == "__main__":
    main()
