"""Content-addressed artifact store: a stage's output lives at ``<root>/<stage>/<hash of its resolved spec>``.

A stage writes into a hidden temporary directory and renames it into place only when complete, with a
``_complete.json`` marker holding the spec; an interrupted stage leaves nothing that could be mistaken for a
finished artifact, and a re-run redoes exactly the missing work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MARKER = "_complete.json"
SCHEMA = 1  # bump when a stage's output format or semantics change: old artifacts then miss, never mislead


def stable_hash(spec: Any) -> str:
    """Hash of a JSON-serialisable spec, independent of key order."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        final = self.path(stage, spec)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
        try:
            yield tmp
            (tmp / MARKER).write_text(json.dumps({"stage": stage, "spec": spec}, indent=2, default=str))
            if final.exists():  # an incomplete leftover from a killed run, or a concurrent twin
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
