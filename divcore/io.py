"""Atomic writes and JSON / JSONL reading with errors that name the file and line.

A file is written to a temporary sibling and renamed into place; a directory is built in a hidden temporary
sibling and renamed when complete. A killed run therefore never leaves a half-written artifact behind.

Temporary names carry the host and process id (``.<name>.tmp-<host>-<pid>-XXXX``), so
:func:`remove_stale_temps` can remove those of dead processes (a killed model conversion, stage or report) and
never a live one or another host's. Everything created here honours the umask: ``mkstemp``/``mkdtemp`` alone
create owner-only files and folders, which a shared cache or results folder must not be.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from divcore.errors import InputError

log = logging.getLogger(__name__)
_TEMP = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-[^/]*$")


def umask_mode(mode: int) -> int:
    """``mode`` with the process umask applied (read and restored at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def temp_tag() -> str:
    """``<host>-<pid>``: which process owns a temporary file or folder, so a sweep can tell dead from live."""
    return f"{re.sub(r'[^A-Za-z0-9_.]', '_', socket.gethostname())}-{os.getpid()}"


def make_temp_dir(parent: str | Path, name: str) -> Path:
    """A hidden temporary folder ``.<name>.tmp-<host>-<pid>-XXXX`` in ``parent``, with umask permissions."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-{temp_tag()}-"))
    tmp.chmod(umask_mode(0o777))
    return tmp


def honour_umask(root: str | Path) -> None:
    """Give every file under ``root`` the umask's permissions (``0o666 & ~umask``, folders ``0o777 & ~umask``).

    safetensors (``save_pretrained`` of a model or a LoRA adapter) and ``mkstemp`` create owner-only (0600) files,
    which would leave weights in a shared cache unreadable to the group; a finished folder is fixed before it is
    renamed into place."""
    file_mode, dir_mode = umask_mode(0o666), umask_mode(0o777)
    for base, dirs, files in os.walk(root):
        for name in files:
            p = Path(base) / name
            if not p.is_symlink():
                p.chmod(file_mode | (p.stat().st_mode & umask_mode(0o111)))  # executable bits kept
        for name in dirs:
            if not (Path(base) / name).is_symlink():
                (Path(base) / name).chmod(dir_mode)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(root: str | Path, depth: int = 2) -> list[Path]:
    """Remove temporary files and folders under ``root`` (``depth`` levels down) whose process on this host is
    gone; a live process's, or another host's (a shared file system), are left alone."""
    root, removed = Path(root), []
    if not root.is_dir():
        return removed
    host = temp_tag().rsplit("-", 1)[0]
    for level in range(1, depth + 1):
        for p in root.glob("/".join(["*"] * level)):
            m = _TEMP.match(p.name)
            if not m or m["host"] != host or _alive(int(m["pid"])):
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.info("removed %d temporary folder(s) of dead runs under %s", len(removed), root)
    return removed


def replace_dir(new: Path, final: Path) -> None:
    """Put the finished folder ``new`` at ``final``, replacing what was there as a whole: the old folder is
    renamed aside, the new one renamed in, the old one removed. A reader sees the old or the new folder, never a
    mix of both."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.tmp-{temp_tag()}-old-{os.urandom(4).hex()}"
        final.rename(old)
    new.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{temp_tag()}-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(dest: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``dest``; on success it is renamed to ``dest``, on failure removed.

    ``replace``: an existing ``dest`` (an incomplete leftover, or a concurrent twin) is removed first.
    """
    dest = Path(dest)
    tmp = make_temp_dir(dest.parent, dest.name)
    try:
        yield tmp
        honour_umask(tmp)
        if replace and dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Write one JSON document per line (UTF-8, non-ASCII kept), atomically."""
    atomic_write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def iter_jsonl(path: str | Path, what: str = "JSONL", hint: str = "") -> Iterator[tuple[int, Any]]:
    """``(line number, document)`` for every non-blank line of a JSONL file.

    A missing file or a malformed line raises :class:`InputError` naming ``what``, the file and the line number;
    ``hint`` is appended to the missing-file message (where the data usually lives).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file {path} not found" + (f" ({hint})" if hint else ""))
    n = 0
    try:
        with path.open(encoding="utf-8") as fh:  # streamed: pools run to gigabytes
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        doc = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path}:{n}: malformed JSON ({e.msg}); fix or remove the line") from None
                    yield n, doc
    except UnicodeDecodeError as e:
        raise InputError(f"{path}:{n + 1}: " + _not_utf8(path, e).split(": ", 1)[1]) from None


def read_text(path: str | Path) -> str:
    """A file's UTF-8 text; another encoding, or a folder, is an input error naming the file (and the byte)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(_not_utf8(path, e)) from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, expected a file") from None


def _not_utf8(path: Path, e: UnicodeDecodeError) -> str:
    return (f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); re-encode it as UTF-8 "
            "(e.g. iconv -t UTF-8)")


def read_jsonl(path: str | Path, what: str = "JSONL", hint: str = "") -> list[Any]:
    """The documents of a JSONL file, blank lines skipped; errors as :func:`iter_jsonl`."""
    return [row for _, row in iter_jsonl(path, what, hint)]


def read_json(path: str | Path, what: str = "JSON", hint: str = "") -> Any:
    """The JSON document in ``path``; a missing or malformed file raises :class:`InputError` with the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file {path} not found" + (f" ({hint})" if hint else ""))
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON at line {e.lineno} ({e.msg})") from None


def check_writable(path: str | Path, key: str) -> None:
    """``path`` (created later) can be written: its nearest existing ancestor is a writable directory."""
    p = Path(path).expanduser().absolute()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{key}={path}: {probe} is a file, not a folder; choose another {key}")
    try:  # a real entry, not os.access: root passes access() where sysfs, ACLs or SELinux still refuse the write
        os.rmdir(tempfile.mkdtemp(prefix=".divbench-write-probe-", dir=probe))
    except OSError as e:
        why = WRITE_ERRORS.get(e.errno, e.strerror or str(e))
        raise InputError(f"{key}={path}: {probe} is not writable by this user ({why}); choose a writable "
                         f"{key}") from None


WRITE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                errno.EROFS: "the file system is read-only"}


@contextmanager
def writing(path: str | Path, key: str = "out") -> Iterator[None]:
    """Turn the write failures a user fixes (disk full, quota, permissions, read-only file system) into an
    :class:`InputError` naming ``key``, the path and the fix, instead of a traceback."""
    try:
        yield
    except Exception as e:
        if isinstance(e, OSError) and e.errno in WRITE_ERRORS:
            why, where = f"{WRITE_ERRORS[e.errno]} ({e.strerror})", e.filename or path
        elif disk_full(e):  # wrapped by a library (safetensors, arrow)
            why, where = "no space left on the device", path
        else:
            raise
        raise InputError(f"{key}={path}: cannot write {where}: {why}; free space or fix the permissions there, or "
                         f"choose another {key}") from None


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or quota, also when a library wraps it in
    its own error type (safetensors: "No space left on device (os error 28)")."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen) or "Disk quota exceeded" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
