"""Pool-level signals: what metrics and selectors read about the whole pool, computed once per (embeddings, signal
parameters) and cached by the study's ``signals`` stage (``experiments.engine.dag``).

* ``knn_sq``: each pool row's squared L2 distances to its ``knn_k`` nearest rows of the de-duplicated pool, the
  first hit dropped (:func:`metrics.knn.knn_sq_distances`, mode ``reference``): NovelSum's and NovelSelect's
  density, for every K up to the largest in use. The de-duplicated pool itself is not kept (the search is its one
  reader), only its row count, ``distinct_rows``. The values are the subset search's up to float32 rounding: faiss
  searches fewer than 20 query rows directly and more through BLAS (|x|^2 + |y|^2 - 2 x.y), so a 16-row subset's
  own search and the pool-wide one can differ in the last bits (NovelSum on the demo pool: <= 1.1e-7 relative).
* ``kmeans``: spherical k-means over the unit rows per (n_clusters, seed) (:func:`metrics.labels.spherical_kmeans`):
  MIG's k-means labels and the ``kmeans`` selector's clusters.
* ``partitions``: L2 k-means over the raw rows per (n_clusters, seed), as the NovelSum authors' ``entropy.py``
  (:func:`metrics.baselines.partition_kmeans`): partition entropy. A different fit from ``kmeans``, so keyed apart.
* tag labels: the pool's distinct tags, each row's tag ids, and the tag vectors per tag embedder (MIG's graph).
* ``quality`` (the pool's column) and ``proxy_quality`` (selection's length proxy), when given.

Each registered metric and selector declares what it reads from its parameters (``register(..., signals=...)``,
returning :class:`SignalNeeds`); the union over a study's config is what the stage builds and its cache key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from divcore.errors import InputError
from metrics.baselines import partition_kmeans
from metrics.knn import knn_sq_distances, unique_rows
from metrics.labels import Clustering, PoolLabels, spherical_kmeans, tag_labels
from metrics.validation import as_embeddings

log = logging.getLogger(__name__)

Fit = tuple[int, int]  # (n_clusters, seed)


@dataclass(frozen=True)
class SignalNeeds:
    """What a metric or selector reads from the pool signals; ``a | b`` is what both read."""

    knn_k: int = 0  # the largest K of a reference-mode kNN (0: no kNN)
    kmeans: frozenset[Fit] = frozenset()  # spherical k-means fits
    partitions: frozenset[Fit] = frozenset()  # raw-row L2 k-means fits
    tag_embedders: frozenset[str] = frozenset()  # tag label vectors by these embedders (needs the pool's tags)
    auto_labels: frozenset[tuple[int, int, str]] = frozenset()  # MIG auto: tags by embedder if the pool has them,
    # else k-means (n_clusters, seed)

    def __or__(self, other: SignalNeeds) -> SignalNeeds:
        return SignalNeeds(max(self.knn_k, other.knn_k), self.kmeans | other.kmeans,
                           self.partitions | other.partitions, self.tag_embedders | other.tag_embedders,
                           self.auto_labels | other.auto_labels)

    def key(self) -> dict[str, Any]:
        """A JSON form, sorted: the signals stage's cache key part, and what :meth:`from_key` reads back."""
        return {"knn_k": self.knn_k, "kmeans": sorted(map(list, self.kmeans)),
                "partitions": sorted(map(list, self.partitions)), "tag_embedders": sorted(self.tag_embedders),
                "auto_labels": sorted(map(list, self.auto_labels))}

    @classmethod
    def from_key(cls, key: Mapping[str, Any]) -> SignalNeeds:
        return cls(int(key["knn_k"]), frozenset(tuple(f) for f in key["kmeans"]),
                   frozenset(tuple(f) for f in key["partitions"]), frozenset(key["tag_embedders"]),
                   frozenset(tuple(a) for a in key["auto_labels"]))

    def resolved(self, has_tags: bool) -> SignalNeeds:
        """MIG's ``auto`` labels decided by whether the pool has tags."""
        if has_tags:
            return SignalNeeds(self.knn_k, self.kmeans, self.partitions,
                               self.tag_embedders | {e for _, _, e in self.auto_labels})
        return SignalNeeds(self.knn_k, self.kmeans | {(n, s) for n, s, _ in self.auto_labels}, self.partitions,
                           self.tag_embedders)


def mig_label_needs(label_source: str, n_clusters: int, seed: int, embedder: str) -> SignalNeeds:
    """What MIG's labels read (the ``mig_information`` metric and the ``mig`` selector declare the same)."""
    if label_source == "kmeans":
        return SignalNeeds(kmeans=frozenset({(n_clusters, seed)}))
    if label_source == "tags":
        return SignalNeeds(tag_embedders=frozenset({embedder}))
    return SignalNeeds(auto_labels=frozenset({(n_clusters, seed, embedder)}))


def _missing(what: str) -> InputError:
    return InputError(f"the pool signals hold no {what}: the metric or selector that reads it must declare it "
                      "(register(..., signals=...)) so that the signals stage builds it")


@dataclass(frozen=True)
class PoolSignals:
    """The pool-level signals of one pool's embeddings (module docstring). Build with :func:`pool_signals`."""

    size: int
    distinct_rows: int = 0
    knn_sq: np.ndarray | None = None  # (size, knn_k) float32
    kmeans: dict[Fit, Clustering] = field(default_factory=dict)
    partitions: dict[Fit, Clustering] = field(default_factory=dict)
    tag_vocab: tuple[str, ...] | None = None
    tag_ids: list[list[int]] | None = None  # each row's tag ids into tag_vocab
    tag_vectors: dict[str, np.ndarray] = field(default_factory=dict)  # embedder -> (len(tag_vocab), dim)
    quality: np.ndarray | None = None
    proxy_quality: np.ndarray | None = None

    @property
    def knn_k(self) -> int:
        return 0 if self.knn_sq is None else self.knn_sq.shape[1]

    def knn(self, rows: np.ndarray, k: int) -> np.ndarray:
        """Squared distances of pool ``rows`` to their ``k`` nearest other rows (reference mode)."""
        if self.knn_sq is None or k > self.knn_k:
            raise _missing(f"kNN distances at K={k} (they go up to K={self.knn_k})")
        return self.knn_sq[np.asarray(rows), :k]

    def clustering(self, kind: str, n_clusters: int, seed: int) -> Clustering:
        """A k-means fit: ``kind`` 'kmeans' (spherical) or 'partitions' (raw rows, L2)."""
        fits = self.kmeans if kind == "kmeans" else self.partitions
        if (n_clusters, seed) not in fits:
            raise _missing(f"{kind} fit with n_clusters={n_clusters}, seed={seed}")
        return fits[(n_clusters, seed)]

    def mig_labels(self, label_source: str, n_clusters: int, seed: int, embedder: str) -> PoolLabels:
        """MIG's pool-wide labels: the tags (``auto`` when the pool has them) or the spherical k-means clusters."""
        if label_source == "tags" or (label_source == "auto" and self.tag_ids is not None):
            if self.tag_ids is None:
                raise InputError("MIG: label_source=tags but the pool has no 'tags' column; use label_source=kmeans")
            if embedder not in self.tag_vectors:
                raise _missing(f"tag vectors by {embedder!r}")
            return PoolLabels(self.tag_ids, self.tag_vectors[embedder], "tags", self.tag_vocab)
        return self.clustering("kmeans", n_clusters, seed).labels()

    def save(self, folder: Path) -> None:
        """``signals.npz`` (arrays) and ``signals.json`` (what they are) in ``folder``."""
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"size": self.size, "distinct_rows": self.distinct_rows, "kmeans": [], "partitions": [],
                                "tag_vocab": None if self.tag_vocab is None else list(self.tag_vocab),
                                "tag_embedders": sorted(self.tag_vectors)}
        if self.knn_sq is not None:
            arrays["knn_sq"] = self.knn_sq
        for kind, fits in (("kmeans", self.kmeans), ("partitions", self.partitions)):
            for (n, s), fit in sorted(fits.items()):
                meta[kind].append([n, s])
                arrays[f"{kind}-{n}-{s}-centroids"], arrays[f"{kind}-{n}-{s}-ids"] = fit.centroids, fit.ids
        if self.tag_ids is not None:
            arrays["tag_ids"] = np.asarray([i for row in self.tag_ids for i in row], dtype=np.int64)
            arrays["tag_counts"] = np.asarray([len(row) for row in self.tag_ids], dtype=np.int64)
        for i, embedder in enumerate(meta["tag_embedders"]):
            arrays[f"tag_vectors-{i}"] = self.tag_vectors[embedder]
        for name in ("quality", "proxy_quality"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        np.savez(folder / "signals.npz", **arrays)
        (folder / "signals.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> PoolSignals:
        meta = json.loads((folder / "signals.json").read_text())
        with np.load(folder / "signals.npz", allow_pickle=False) as npz:
            a = {k: npz[k] for k in npz.files}
        fits = {kind: {(n, s): Clustering(a[f"{kind}-{n}-{s}-centroids"], a[f"{kind}-{n}-{s}-ids"],
                                          spherical=kind == "kmeans") for n, s in meta[kind]}
                for kind in ("kmeans", "partitions")}
        tag_ids = None
        if "tag_ids" in a:
            bounds = np.concatenate([[0], np.cumsum(a["tag_counts"])])
            tag_ids = [a["tag_ids"][lo:hi].tolist() for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        return cls(meta["size"], meta["distinct_rows"], a.get("knn_sq"), fits["kmeans"], fits["partitions"],
                   None if meta["tag_vocab"] is None else tuple(meta["tag_vocab"]), tag_ids,
                   {e: a[f"tag_vectors-{i}"] for i, e in enumerate(meta["tag_embedders"])},
                   a.get("quality"), a.get("proxy_quality"))


def check_needs(needs: SignalNeeds, n_rows: int, distinct_rows: int | None = None, has_tags: bool = False) -> None:
    """Refuse needs the pool cannot meet, before any k-means or kNN runs."""
    if distinct_rows is not None and needs.knn_k and distinct_rows < needs.knn_k + 1:
        raise InputError(f"the pool has {distinct_rows} distinct rows; neighbors={needs.knn_k} needs at least "
                         f"{needs.knn_k + 1}: lower neighbors or use a larger pool")
    resolved = needs.resolved(has_tags)
    for kind, fits in (("k-means (MIG labels, the kmeans selector)", resolved.kmeans),
                       ("partition_entropy's k-means", resolved.partitions)):
        too_many = sorted(n for n, _ in fits if n > n_rows)
        if too_many:
            raise InputError(f"{kind} with n_clusters={too_many[-1]} needs at least that many rows; the pool has "
                             f"{n_rows}: lower n_clusters")
    if resolved.tag_embedders and not has_tags:
        raise InputError("MIG: label_source=tags but the pool has no 'tags' column; use label_source=kmeans")


def pool_signals(embeddings: np.ndarray, needs: SignalNeeds, *, tags: Sequence[Sequence[str]] | None = None,
                 quality: np.ndarray | None = None, proxy_quality: np.ndarray | None = None,
                 device: str = "cpu") -> PoolSignals:
    """Compute the signals ``needs`` asks for on the pool ``embeddings`` (one row per pool row). ``tags``: the
    pool's tags (MIG's tag labels); ``quality`` / ``proxy_quality``: carried along for the selectors."""
    x = as_embeddings(embeddings, "pool embeddings", cosine=False)
    distinct = len(unique_rows(x)[0]) if needs.knn_k else 0
    check_needs(needs, len(x), distinct if needs.knn_k else None, tags is not None)
    resolved = needs.resolved(tags is not None)
    knn_sq = None
    if needs.knn_k:  # the same search NovelSum runs per subset, once for every pool row
        knn_sq = knn_sq_distances(x, x, needs.knn_k, mode="reference", device=device)
    tag_vocab, tag_ids, vectors = None, None, {}
    for embedder in sorted(resolved.tag_embedders):
        labels = tag_labels(tags, embedder)  # type: ignore[arg-type]
        tag_vocab, tag_ids, vectors[embedder] = labels.vocab, labels.labels, labels.vectors
    signals = PoolSignals(len(x), distinct, knn_sq,
                          {fit: spherical_kmeans(x, *fit) for fit in sorted(resolved.kmeans)},
                          {fit: partition_kmeans(x, *fit) for fit in sorted(resolved.partitions)},
                          tag_vocab, tag_ids, vectors,
                          None if quality is None else np.asarray(quality, dtype=np.float64),
                          None if proxy_quality is None else np.asarray(proxy_quality, dtype=np.float64))
    log.info("pool signals of %d rows: kNN K=%d, %d spherical and %d partition k-means fits, %d tag embedders",
             len(x), needs.knn_k, len(resolved.kmeans), len(resolved.partitions), len(vectors))
    return signals


def union(needs: Iterable[SignalNeeds]) -> SignalNeeds:
    out = SignalNeeds()
    for n in needs:
        out |= n
    return out
