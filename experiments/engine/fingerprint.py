"""Content fingerprints of file and folder inputs, so cache keys follow what an input holds, not where it is.

A file's fingerprint is the SHA-256 of its bytes. Hashing a 16 GB checkpoint on every run would cost minutes, so
each hash is remembered beside the artifact store (``<cache_dir>/.hashes.json``) by device and inode with the
file's size and mtime: a file whose stat is unchanged reuses its hash (a fast stat check), any change re-hashes
it. A folder's fingerprint hashes the sorted (relative path, file hash) pairs of every file under it, so a
renamed, added or removed file changes it too. The remembered hashes are a cache: a lost update (two processes
saving at once) only costs a re-hash, never a wrong answer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from divcore.errors import InputError

log = logging.getLogger(__name__)
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _stamp(st: os.stat_result) -> tuple[str, list[int]]:
    """(key, stamp): files are known by device and inode, so a rename (an artifact moved into place) keeps its
    hash; size and mtime tell whether the bytes may have changed."""
    return f"{st.st_dev}:{st.st_ino}", [st.st_size, st.st_mtime_ns]


def iter_files(folder: Path) -> Iterator[Path]:
    """Every regular file under ``folder`` (following no links out of it), sorted for a stable order."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield Path(root) / name


class HashCache:
    """SHA-256 of files, remembered by (size, mtime, inode) in a JSON file; ``None`` keeps it in memory only."""

    def __init__(self, file: str | Path | None) -> None:
        self.file = Path(file) if file else None
        self._hashes: dict[str, list] | None = None
        self._dirty = False

    def _load(self) -> dict[str, list]:
        if self._hashes is None:
            self._hashes = {}
            if self.file is not None and self.file.exists():
                try:
                    self._hashes = json.loads(self.file.read_text())
                except (OSError, ValueError):  # a damaged cache of hashes only costs re-hashing
                    log.debug("ignoring unreadable hash cache %s", self.file)
        return self._hashes

    def file_hash(self, path: Path) -> str:
        key, stamp = _stamp(Path(path).stat())
        known = self._load().get(key)
        if known is not None and known[:2] == stamp:
            return known[2]
        digest = sha256_file(Path(path))
        self._load()[key] = [*stamp, digest]
        self._dirty = True
        return digest

    def fingerprint(self, path: str | Path) -> str:
        """Content hash of a file, or of every file under a folder with its relative path."""
        path = Path(path)
        if path.is_file():
            return self.file_hash(path)
        h = hashlib.sha256()
        for f in iter_files(path):
            if f.is_symlink() and not f.exists():
                raise InputError(f"{f}: a symbolic link that leads nowhere (a dangling link, or a loop) in {path}; "
                                 "fix or remove it")
            h.update(f"{f.relative_to(path).as_posix()}\0{self.file_hash(f)}\n".encode())
        return h.hexdigest()

    def save(self) -> None:
        if not self._dirty or self.file is None:
            return
        from divcore.io import atomic_write

        atomic_write(self.file, json.dumps(self._hashes, separators=(",", ":")))
        self._dirty = False


@functools.cache
def hash_cache(file: str) -> HashCache:
    """One HashCache per file per process, so cache keys and artifact checks share what was hashed."""
    return HashCache(file)


def looks_like_path(value: str) -> bool:
    """A config string that names a local file or folder (``/data/pool.json``, ``./ckpt``, ``~/models/x``)."""
    return ("/" in value or value.startswith("~")) and "://" not in value and os.path.exists(os.path.expanduser(value))


def content_keys(spec: Any, hashes: HashCache) -> Any:
    """``spec`` with every string naming an existing local file or folder replaced by its content fingerprint.

    Hub ids (``Qwen/Qwen2.5-7B``) name no local path and stay as they are; a local checkpoint, pool file,
    embeddings file or judge data file enters the key by what it holds, so an edited input misses the cache
    (downstream of it, and only there) and a moved one still hits."""
    if isinstance(spec, dict):
        return {k: content_keys(v, hashes) for k, v in spec.items()}
    if isinstance(spec, list):
        return [content_keys(v, hashes) for v in spec]
    if isinstance(spec, str) and looks_like_path(spec):
        return {"content_sha256": hashes.fingerprint(os.path.expanduser(spec))}
    return spec
