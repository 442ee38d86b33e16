"""Content hashes of specs: the cache keys of every stage and of judge caches."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any


def stable_hash(spec: Any) -> str:
    """Hash of a JSON-serialisable spec, independent of key order (16 hex digits of SHA-256).

    >>> stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    True
    >>> len(stable_hash([1, 2, 3]))
    16
    """
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def texts_sha256(texts: Sequence[str]) -> str:
    """SHA-256 (hex) of a sequence of texts, boundaries included (JSON list encoding): what a resumable embedding
    records of the text it embedded."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()
