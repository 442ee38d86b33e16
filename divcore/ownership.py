"""Ownership of output folders: divbench writes, replaces or deletes only files it wrote itself.

Every folder a command writes (a report, an export, an embedding folder, a measure or judge folder, a study's
results_dir) carries a manifest, ``.divbench-manifest`` (JSON), listing the files divbench put there (paths
relative to the folder). Before writing, :func:`check_output_dir` refuses

- an ``out`` that is a file, or that is, lies inside, or contains one of the command's inputs (the pool folder,
  ``embed.path``, a runs.csv), or that is or contains the current working directory;
- a folder without a manifest that holds any file divbench did not write (exit 2, the foreign files named, and the
  fix), whatever else it holds: a runs.csv next to a thesis does not make the folder divbench's.

A file is divbench's when a manifest lists it, or when its name is one the command itself writes (the ``legacy``
patterns each command passes: for a report ``runs.csv``, ``table.*``, ``scatter_*.png``, ...). A folder without a
manifest was written before manifests existed (the committed ``results/*`` got one listing their divbench files) or
is not divbench's: it is accepted only when every file in it has such a name. In a folder with a manifest, files
divbench did not write (a README added to a results folder, another command's folder with its own manifest) are
left untouched and kept when the folder is replaced. Temporary files of divbench's atomic writes
(``.<name>.tmp-<host>-<pid>-...``) count as divbench's.

:func:`publish_dir` puts a folder built beside ``out`` in place: the old folder is moved aside, the new one
renamed in, then only the old folder's own files are removed and every other file is moved back.
:func:`write_owned` writes files into a folder in place (a resumable output, a small result folder) and adds them
to its manifest.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from divcore.errors import InputError
from divcore.io import _TEMP, atomic_write, honour_umask, temp_tag

log = logging.getLogger(__name__)

MANIFEST = ".divbench-manifest"  # no .json suffix: readers of *.json folders must not take it for data
SHOWN = 10  # foreign files named in a refusal


def _rel_files(folder: Path) -> list[str]:
    """Every file (and symlink, dangling or not) under ``folder``, as POSIX paths relative to it; symlinked folders
    are not followed."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        base = Path(root)
        links = [d for d in dirs if (base / d).is_symlink()]
        for name in [*files, *links]:
            found.append((base / name).relative_to(folder).as_posix())
    return sorted(found)


def read_manifest(folder: str | Path) -> set[str] | None:
    """The files ``folder``'s manifest lists, or None when it has none; a damaged manifest owns nothing."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {str(f) for f in doc["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s is unreadable: no file of %s is taken to be divbench's", path, folder)
        return set()


def _is_temp(rel: str) -> bool:
    return any(_TEMP.match(part) for part in rel.split("/"))


def _legacy(rel: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


def owned_files(folder: str | Path, legacy: Sequence[str] = (), *, nested: bool = True) -> set[str]:
    """The files under ``folder`` divbench wrote: those a manifest lists (``folder``'s own, or a subfolder's for
    the files under it: a study export's per-subset folders), and those outside a subfolder with a manifest that
    match the ``legacy`` name patterns (``fnmatch`` on the path relative to ``folder``). ``nested=False``: only
    those of ``folder`` itself, i.e. what a command replacing ``folder`` may delete."""
    folder = Path(folder)
    if not folder.is_dir():
        return set()
    manifests = {}  # relative folder ("" for folder itself) -> the files its manifest lists
    for rel in _rel_files(folder):
        if rel == MANIFEST or rel.endswith("/" + MANIFEST):
            sub = rel[:-len(MANIFEST)].rstrip("/")
            manifests[sub] = read_manifest(folder / sub) or set()
    owned = set()
    for rel in _rel_files(folder):
        subs = [sub for sub in manifests if sub and rel.startswith(sub + "/")]  # another command's folder
        if rel == MANIFEST or (nested and rel.rsplit("/", 1)[-1] == MANIFEST):
            owned.add(rel)
        elif subs:
            if nested and any(rel[len(sub) + 1:] in manifests[sub] for sub in subs):
                owned.add(rel)
        elif rel in manifests.get("", ()) or _legacy(rel, legacy):
            owned.add(rel)
    return owned


def foreign_files(folder: str | Path, legacy: Sequence[str] = ()) -> list[str]:
    """The files under ``folder`` that divbench did not write (see :func:`owned_files`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    owned = owned_files(folder, legacy)
    return [f for f in _rel_files(folder) if f not in owned and not _is_temp(f)]


def _resolved(path: str | Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_not_input(out: str | Path, key: str, inputs: Mapping[str, str | Path | None]) -> None:
    """Refuse an output path equal to, inside or containing an input, or equal to or containing the working
    directory (replacing it would delete the user's data or the inputs themselves)."""
    target = _resolved(out)
    cwd = _resolved(Path.cwd())
    if _within(cwd, target):
        raise InputError(f"{key}={out} is {'the' if target == cwd else 'a folder holding the'} current working "
                         f"directory ({cwd}); divbench will not write its output over it: give {key}=<a new folder>")
    for name, value in inputs.items():
        if value in (None, ""):
            continue
        source = _resolved(value)
        if _within(target, source) or _within(source, target):
            where = ("is" if target == source else "lies inside" if _within(target, source) else "contains")
            raise InputError(f"{key}={out} {where} the input {name}={value}; writing there could replace or delete "
                             f"the input: give {key}=<a folder that neither lies in nor holds {value}>")


def check_output_dir(out: str | Path, key: str = "out", *, legacy: Sequence[str] = (),
                     inputs: Mapping[str, str | Path | None] | None = None, what: str = "output folder") -> None:
    """Everything a command checks before it writes the folder ``out``: not a file, not an input nor the working
    directory (``inputs``: {config key: path}), and, without a manifest, holding no file divbench did not write
    (``what`` names the kind of folder expected, for the message)."""
    path = Path(out)
    check_not_input(path, key, inputs or {})
    if path.exists() and not path.is_dir():
        raise InputError(f"{key}={out} is a file, not a folder: give {key}=<a folder> (it is created if missing)")
    foreign = foreign_files(path, legacy)
    if foreign and read_manifest(path) is not None:
        log.info("%s: %d file(s) divbench did not write are left untouched: %s", path, len(foreign),
                 foreign[:SHOWN])
    elif foreign:
        more = f" and {len(foreign) - SHOWN} more" if len(foreign) > SHOWN else ""
        raise InputError(f"{key}={out} is not a divbench {what}: it holds {len(foreign)} file(s) divbench did not "
                         f"write ({', '.join(foreign[:SHOWN])}{more}), and divbench never replaces or deletes files "
                         f"it did not write: give {key}=<a new or empty folder>, or move those files out")


def write_manifest(folder: str | Path, files: Iterable[str], command: str,
                   provenance: Mapping[str, object] | None = None) -> None:
    """List ``files`` (relative to ``folder``) in its manifest, atomically; ``provenance``: {file: what it was made
    from}, for outputs a re-run resumes (:func:`read_provenance`)."""
    doc: dict[str, object] = {"written_by": "divbench", "command": command,
                              "files": sorted(f for f in set(files) if f.rsplit("/", 1)[-1] != MANIFEST)}
    if provenance:
        doc["provenance"] = dict(provenance)
    atomic_write(Path(folder) / MANIFEST, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def read_provenance(folder: str | Path) -> dict[str, object]:
    """{file: provenance} recorded in ``folder``'s manifest (empty without one)."""
    try:
        doc = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
        return dict(doc.get("provenance") or {})
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def write_owned(folder: str | Path, files: Mapping[str, str | bytes], command: str, *,
                legacy: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``files`` ({relative path: content}) into ``folder`` atomically, each added to its manifest (after
    the foreign-file check, which the caller should have run before any work too)."""
    folder = Path(folder)
    check_output_dir(folder, legacy=legacy)
    owned = owned_files(folder, legacy, nested=False)
    paths = {}
    for rel, data in files.items():
        atomic_write(folder / rel, data)
        owned.add(rel)
        write_manifest(folder, owned, command)  # after each file: a kill leaves every written file listed
        paths[rel] = folder / rel
    return paths


def adopt(folder: str | Path, rel: str, command: str, legacy: Sequence[str] = ()) -> None:
    """Add one file divbench just wrote into ``folder`` (by another writer than :func:`write_owned`) to its
    manifest."""
    owned = owned_files(folder, legacy, nested=False) | {rel}
    write_manifest(folder, owned, command)


def _remove_owned(old: Path, owned: set[str]) -> None:
    for rel in owned:
        p = old / rel
        if p.is_symlink() or p.is_file():
            p.unlink()
    (old / MANIFEST).unlink(missing_ok=True)
    for root, _dirs, _files in sorted(os.walk(old), key=lambda w: -len(w[0])):
        if Path(root) != old and not any(Path(root).iterdir()):
            Path(root).rmdir()


def publish_dir(new: str | Path, out: str | Path, command: str, *, legacy: Sequence[str] = ()) -> None:
    """Put the finished folder ``new`` (built beside ``out``) at ``out`` with a manifest of its files. An existing
    ``out`` must hold only divbench's files (checked again here); it is renamed aside, ``new`` renamed in, and only
    the old folder's own files are removed. A file that appeared in the old folder after the check is moved back
    into ``out`` (or, on a name clash, left in a folder named in a warning); nothing else is deleted."""
    new, out = Path(new), Path(out)
    write_manifest(new, _rel_files(new), command)
    honour_umask(new)
    if not out.exists():
        new.rename(out)
        return
    check_output_dir(out, legacy=legacy)
    owned = owned_files(out, legacy, nested=False)
    others = set(_rel_files(out)) - owned  # a README, another command's folder: kept
    old = out.parent / f".{out.name}.tmp-{temp_tag()}-old-{os.urandom(4).hex()}"
    out.rename(old)
    new.rename(out)
    _remove_owned(old, owned)
    _restore_leftovers(old, out, others)


def _restore_leftovers(old: Path, out: Path, expected: set[str]) -> None:
    left = [f for f in _rel_files(old) if not _is_temp(f)]
    clashes = []
    for rel in left:
        dest = out / rel
        if dest.exists() or dest.is_symlink():
            clashes.append(rel)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(old / rel, dest)
    if clashes:
        keep = out.parent / f"{out.name}.not-divbench-{os.urandom(3).hex()}"
        old.rename(keep)
        log.warning("%d file(s) appeared in %s while it was being replaced and clash with new ones; kept in %s: %s",
                    len(clashes), out, keep, clashes[:SHOWN])
        return
    if set(left) - expected:
        left = sorted(set(left) - expected)
        log.warning("%d file(s) appeared in %s while it was being replaced; kept: %s", len(left), out, left[:SHOWN])
    shutil.rmtree(old, ignore_errors=True)  # only empty folders and dead temporaries are left


def check_output_file(path: str | Path, key: str, *, inputs: Mapping[str, str | Path | None] | None = None,
                      ours: Callable[[Path], bool] | None = None, what: str = "output") -> None:
    """A single output file: not a folder, not an input, in a writable folder, and, when it exists, a file
    divbench wrote (``ours`` recognises one by its content: a single file has no manifest of its own)."""
    from divcore.io import check_writable

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{key}={path} is a folder; give {key}=<a file path> for the {what}")
    check_not_input(path, key, inputs or {})
    if path.exists() and ours is not None and not ours(path):
        raise InputError(f"{key}={path} exists and is not a divbench {what}; divbench never replaces files it did "
                         f"not write: give {key}=<a new file>, or move that file away")
    check_writable(path, key)
