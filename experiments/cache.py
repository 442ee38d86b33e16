"""Content-addressed artifact store: a stage's output lives at ``<root>/<stage>/<hash of its resolved spec>``.

A stage writes into a hidden temporary directory and renames it into place only when complete, with a
``_complete.json`` marker holding the spec; an interrupted stage leaves nothing that could be mistaken for a
finished artifact, and a re-run redoes exactly the missing work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from divcore.hashing import stable_hash
from divcore.io import atomic_dir, atomic_write

MARKER = "_complete.json"
__all__ = ["MARKER", "SCHEMA", "ArtifactStore", "atomic_write", "stable_hash"]
SCHEMA = 1  # bump when a stage's output format or semantics change: old artifacts then miss, never mislead


class ArtifactStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, stage: str, spec: Any) -> Path:
        return self.root / stage / stable_hash({"schema": SCHEMA, "spec": spec})

    def is_complete(self, stage: str, spec: Any) -> bool:
        return (self.path(stage, spec) / MARKER).exists()

    @contextmanager
    def build(self, stage: str, spec: Any) -> Iterator[Path]:
        """Yield a fresh temporary directory; on success it becomes the artifact, on failure it is removed."""
        # an existing directory is an incomplete leftover from a killed run, or a concurrent twin: replaced
        with atomic_dir(self.path(stage, spec)) as tmp:
            yield tmp
            (tmp / MARKER).write_text(json.dumps({"stage": stage, "spec": spec}, indent=2, default=str))
