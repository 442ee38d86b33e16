"""Content-addressed artifact store: a stage's output lives at ``<root>/<stage>/<hash of its resolved spec>``.

A stage writes into a hidden temporary directory and renames it into place only when complete, with a
``_complete.json`` marker holding the spec; an interrupted stage leaves nothing that could be mistaken for a
finished artifact, and a re-run redoes exactly the missing work.

Concurrent jobs (a SLURM fan-out over one cache) build each artifact once: ``build`` holds a lock per artifact
(``<root>/.locks/<stage>-<hash>.lock``, :mod:`divcore.locks`) while it checks, computes and publishes, so a twin
that arrives while the artifact is being built waits, then finds it complete and reuses it. The first writer wins
and a finished artifact is never replaced; a lock held longer than ``lock_timeout_s`` is an error naming the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from divcore.hashing import stable_hash
from divcore.io import atomic_dir, atomic_write
from divcore.locks import LockTimeoutError, hold_lock

log = logging.getLogger(__name__)

MARKER = "_complete.json"
__all__ = ["LOCK_TIMEOUT_S", "MARKER", "SCHEMA", "ArtifactStore", "LockTimeoutError", "atomic_write", "hold_lock",
           "stable_hash"]
SCHEMA = 1  # bump when a stage's output format or semantics change: old artifacts then miss, never mislead
LOCK_TIMEOUT_S = 48 * 3600.0  # longer than any one stage (a full 8B fine-tuning); `cache_lock_timeout_s` overrides


class ArtifactStore:
    def __init__(self, root: str | Path, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.root = Path(root)
        self.lock_timeout_s = float(lock_timeout_s)

    def path(self, stage: str, spec: Any) -> Path:
        return self.root / stage / stable_hash({"schema": SCHEMA, "spec": spec})

    def lock_path(self, stage: str, spec: Any) -> Path:
        return self.root / ".locks" / f"{stage}-{self.path(stage, spec).name}.lock"

    def is_complete(self, stage: str, spec: Any) -> bool:
        return (self.path(stage, spec) / MARKER).exists()

    @contextmanager
    def build(self, stage: str, spec: Any) -> Iterator[Path | None]:
        """Under the artifact's lock: yield None when the artifact is (or, after waiting for a twin, has become)
        complete; else a fresh temporary directory, which on success becomes the artifact and on failure is
        removed. Compute inside the block, so that twins wait instead of computing too."""
        final = self.path(stage, spec)
        with hold_lock(self.lock_path(stage, spec), self.lock_timeout_s, f"{stage} artifact {final}",
                       "or raise cache_lock_timeout_s"):
            if (final / MARKER).exists():
                yield None
                return
            # under the lock, an existing directory without a marker can only be a killed run's leftover: replaced
            with atomic_dir(final) as tmp:
                yield tmp
                (tmp / MARKER).write_text(json.dumps({"stage": stage, "spec": spec}, indent=2, default=str))
            log.info("built %s artifact %s", stage, final.name)
