"""Atomic writes and JSON / JSONL reading with errors that name the file and line.

A file is written to a temporary sibling and renamed into place; a directory is built in a hidden temporary
sibling and renamed when complete. A killed run therefore never leaves a half-written artifact behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from divcore.errors import InputError


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


@contextmanager
def atomic_dir(dest: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``dest``; on success it is renamed to ``dest``, on failure removed.

    ``replace``: an existing ``dest`` (an incomplete leftover, or a concurrent twin) is removed first.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        yield tmp
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
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: malformed JSON ({e.msg}); fix or remove the line") from None


def read_jsonl(path: str | Path, what: str = "JSONL", hint: str = "") -> list[Any]:
    """The documents of a JSONL file, blank lines skipped; errors as :func:`iter_jsonl`."""
    return [row for _, row in iter_jsonl(path, what, hint)]


def read_json(path: str | Path, what: str = "JSON", hint: str = "") -> Any:
    """The JSON document in ``path``; a missing or malformed file raises :class:`InputError` with the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file {path} not found" + (f" ({hint})" if hint else ""))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON at line {e.lineno} ({e.msg})") from None
