"""Per-row signals some selectors need when the pool does not carry them: quality scores and labels.

* Quality: the pool's ``quality`` column when present. Otherwise an offline proxy, the normalised log length of
  the assistant turns, ``log(1 + words) / max log(1 + words)``: response length is the strongest single
  correlate of judged quality in instruction data (Zhao et al. 2024, "Long Is More for Alignment"); it needs
  no model and no network. It is a proxy, named ``length_proxy`` in provenance.
* Labels for MIG (``metrics.labels``, shared with the ``mig_information`` metric): the pool's InsTag-style ``tags``
  when present, else k-means cluster ids over the row embeddings. In a study both come from the pool signals
  (``metrics.signals``), built once per pool.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from divcore.errors import InputError
from metrics.labels import kmeans_labels, tag_labels  # noqa: F401  (re-exported: the selectors' label signals)

log = logging.getLogger(__name__)


def _answer_words(conv: dict) -> int:
    if "messages" not in conv:  # a plain-text row (turns already joined): its whole text stands in
        return len(conv["text"].split())
    return sum(len(m["content"].split()) for m in conv["messages"] if m["role"] == "assistant")


def length_proxy(conversations: Sequence[dict]) -> np.ndarray:
    words = np.array([_answer_words(c) for c in conversations], dtype=np.float64)
    score = np.log1p(words)
    return score / score.max() if score.max() > 0 else np.ones_like(score)


def resolve_quality(source: str, data: np.ndarray | None, proxy: np.ndarray | None) -> tuple[np.ndarray, str]:
    """Pick the quality scores by ``source`` (data | proxy | auto); returns (scores, the source used)."""
    if source not in ("data", "proxy", "auto"):
        raise InputError(f"quality source must be 'data', 'proxy' or 'auto', got {source!r}")
    if source == "data" or (source == "auto" and data is not None):
        if data is None:
            raise InputError("quality_source=data but the pool has no 'quality' column: add one, or use "
                             "quality_source=proxy")
        return np.asarray(data, dtype=np.float64), "data"
    if proxy is None:
        raise InputError("no quality scores: the pool has no 'quality' column and no proxy was computed")
    return np.asarray(proxy, dtype=np.float64), "length_proxy"
