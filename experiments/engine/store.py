"""Content-addressed artifact store: a stage's output lives at ``<root>/<stage>/<hash of its resolved spec>``.

A stage writes into a hidden temporary directory and renames it into place only when complete, with a
``_complete.json`` marker holding the spec and every file's size and SHA-256; an interrupted stage leaves nothing
that could be mistaken for a finished artifact, and a re-run redoes exactly the missing work.

Concurrent jobs (a SLURM fan-out over one cache) build each artifact once: ``build`` holds a lock per artifact
(``<root>/.locks/<stage>-<hash>.lock``, :mod:`divcore.locks`) while it checks, computes and publishes, so a twin
that arrives while the artifact is being built waits, then finds it complete and reuses it. The first writer wins
and a finished artifact is never replaced; a lock held longer than ``lock_timeout_s`` is an error naming the file.

Verified reads: before a stage uses an artifact, :meth:`ArtifactStore.ready` checks each file against the marker
(sizes always; hashes through a stat-keyed cache, so an unchanged file is not re-read). A damaged artifact of a
cheap stage (``cheap=True``: the stage's cost class, ``Stage.cost``; seconds to redo) is removed with a warning
naming its folder and rebuilt; one of a costly stage (GPU hours or paid judge calls) is refused with
:class:`CorruptArtifactError` naming the folder and how to rebuild it, never silently redone.
Markers written before verification existed (no file list) are trusted as they are. Temporary folders carry their
host and process id (``divcore.io``); :func:`remove_stale_temps` removes those whose process is gone.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from divcore.errors import InputError
from divcore.hashing import stable_hash
from divcore.io import atomic_dir
from divcore.locks import hold_lock

log = logging.getLogger(__name__)

MARKER = "_complete.json"
SCHEMA = 1  # bump when a stage's output format or semantics change: old artifacts then miss, never mislead
LOCK_TIMEOUT_S = 48 * 3600.0  # longer than any one stage (a full 8B fine-tuning); `cache_lock_timeout_s` overrides
HASHES = ".hashes.json"  # remembered file hashes (experiments.engine.fingerprint), beside the stages


class CorruptArtifactError(InputError):
    """A finished artifact of a costly stage fails verification; the message names its folder and the fix."""


class ArtifactStore:
    def __init__(self, root: str | Path, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        from experiments.engine.fingerprint import hash_cache

        self.root = Path(root)
        self.lock_timeout_s = float(lock_timeout_s)
        self.hashes = hash_cache(str(self.root.absolute() / HASHES))

    def path(self, stage: str, spec: Any) -> Path:
        return self.root / stage / stable_hash({"schema": SCHEMA, "spec": spec})

    def lock_path(self, stage: str, spec: Any) -> Path:
        return self.root / ".locks" / f"{stage}-{self.path(stage, spec).name}.lock"

    def is_complete(self, stage: str, spec: Any) -> bool:
        return (self.path(stage, spec) / MARKER).exists()

    def manifest(self, folder: Path) -> dict[str, dict[str, Any]]:
        """``{relative path: {size, sha256}}`` of every file of an artifact folder but the marker."""
        from experiments.engine.fingerprint import iter_files

        return {f.relative_to(folder).as_posix(): {"size": f.stat().st_size, "sha256": self.hashes.file_hash(f)}
                for f in iter_files(folder) if f != folder / MARKER}

    def damage(self, stage: str, spec: Any) -> str | None:
        """What is wrong with a finished artifact (the first problem found), or None when it verifies."""
        folder = self.path(stage, spec)
        try:
            files = json.loads((folder / MARKER).read_text()).get("files")
        except (OSError, ValueError, AttributeError):
            return f"its marker {MARKER} is unreadable"
        for rel, want in (files or {}).items():
            f = folder / rel
            if not f.is_file():
                return f"{rel} is missing"
            size = f.stat().st_size
            if size != want["size"]:
                return f"{rel} has {size} bytes, {want['size']} expected (truncated or overwritten)"
            if self.hashes.file_hash(f) != want["sha256"]:
                return f"{rel} does not match its recorded SHA-256 (modified after it was written)"
        self.hashes.save()
        return None

    def status(self, stage: str, spec: Any) -> str:
        """'done', 'corrupt' or 'to run': what a dry run shows."""
        if not self.is_complete(stage, spec):
            return "to run"
        return "corrupt" if self.damage(stage, spec) else "done"

    def ready(self, stage: str, spec: Any, *, cheap: bool = False) -> bool:
        """True when a finished, verified artifact exists. A damaged one is removed and reported missing for a
        ``cheap`` stage (so it is rebuilt), or refused with :class:`CorruptArtifactError` for a costly one."""
        if not self.is_complete(stage, spec):
            return False
        problem = self.damage(stage, spec)
        if problem is None:
            return True
        folder = self.path(stage, spec)
        if not cheap:
            raise CorruptArtifactError(
                f"cached {stage} artifact {folder} is damaged: {problem}. It is costly to redo, so it is not "
                f"rebuilt silently: remove it (rm -rf {folder}) and re-run the same command to rebuild it")
        log.warning("cached %s artifact %s is damaged (%s): rebuilding it", stage, folder, problem)
        shutil.rmtree(folder)
        return False

    @contextmanager
    def build(self, stage: str, spec: Any, *, cheap: bool = False) -> Iterator[Path | None]:
        """Under the artifact's lock: yield None when the artifact is (or, after waiting for a twin, has become)
        complete and verified; else a fresh temporary directory, which on success becomes the artifact (its
        marker listing every file's size and hash) and on failure is removed. Compute inside the block, so that
        twins wait instead of computing too."""
        final = self.path(stage, spec)
        with hold_lock(self.lock_path(stage, spec), self.lock_timeout_s, f"{stage} artifact {final}",
                       "or raise cache_lock_timeout_s"):
            if self.ready(stage, spec, cheap=cheap):  # a damaged cheap artifact is removed here and rebuilt below
                yield None
                return
            # under the lock, an existing directory without a marker can only be a killed run's leftover: replaced
            with atomic_dir(final) as tmp:
                yield tmp
                marker = {"stage": stage, "spec": spec, "files": self.manifest(tmp)}
                (tmp / MARKER).write_text(json.dumps(marker, indent=2, default=str))
                self.hashes.save()
            log.info("built %s artifact %s", stage, final.name)
