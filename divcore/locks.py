"""Inter-process locks (``filelock``) for work that concurrent jobs share: artifacts, model conversions, judge
caches. An OS lock (``fcntl``) is released by the kernel when its holder dies, so a killed job never leaves a
stale lock behind; a wait past the timeout is an error naming the lock file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from divcore.errors import InputError


class LockTimeoutError(InputError):
    """Another process held a lock past the timeout."""


@contextmanager
def hold_lock(lock_path: str | Path, timeout_s: float, what: str, hint: str = "") -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``lock_path``; waiting longer than ``timeout_s`` raises
    :class:`LockTimeoutError` naming ``what``, the lock file and ``hint`` (how to raise the timeout)."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path, timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise LockTimeoutError(
            f"{what}: the lock {lock_path} was held by another process for more than {timeout_s:.0f} s. A job doing "
            f"the same work is still running (wait for it){'; ' + hint if hint else ''}; a killed holder releases "
            "the lock by itself") from None
    try:
        yield
    finally:
        lock.release()
