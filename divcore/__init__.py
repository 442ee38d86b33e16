"""Shared pieces below every other package: the input error, atomic writes, hashing, JSON/JSONL I/O and row
normalisation. ``divcore`` imports no project package, so anything may import it (import-linter checks this)."""

from divcore.errors import InputError
from divcore.hashing import stable_hash
from divcore.io import atomic_dir, atomic_write, iter_jsonl, read_json, read_jsonl, write_jsonl
from divcore.rows import normalize_rows

__all__ = ["InputError", "atomic_dir", "atomic_write", "iter_jsonl", "normalize_rows", "read_json", "read_jsonl",
           "stable_hash", "write_jsonl"]
