"""MIG's information score (Chen et al., "MIG: Automatic Data Selection for Instruction Tuning by Maximizing
Information Gain in Semantic Space", 2025; code: yichengchen24/MIG ``mig/label.py``, ``mig/sampler.py``),
shared by the ``mig_information`` metric and the ``mig`` selector.

Labels are the nodes of a graph whose edge weight is the cosine similarity of the two label vectors where it
is >= ``threshold``, else 0 (the diagonal, similarity 1, is kept). The propagation matrix keeps the diagonal,
scales the off-diagonal edges by ``prop_weight`` and normalises each column to sum 1. A sample i with labels
L_i and quality s_i contributes ``u_i = v_i @ P`` where ``v_i[l] = s_i`` for l in L_i (``s_i / |L_i|`` with
``norm=True``); a set D holds ``E(D) = sum_l phi(sum_{i in D} u_il)``, ``phi(x) = (x + phi_a) ** phi_b``.

The authors' defaults: their CLI and README sample with ``norm`` off (the paper's equation has no division);
``MIGSampler``'s own constructor default is ``norm=True``, kept here as the switch. Their sampler holds
``v @ P`` as a dense (rows x labels) float32 matrix; here it is a scipy sparse matrix (a row has nonzeros only
on its labels and their graph neighbours), so a 396k-row pool with thousands of labels fits in memory, and
the graph itself (thresholded at 0.9, nearly all zeros) is sparse too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from divcore.errors import InputError
from divcore.rows import normalize_rows
from metrics.validation import as_embeddings

log = logging.getLogger(__name__)

PHI_A, PHI_B = 1e-6, 0.8
SPARSE_EDGE_SHARE = 0.05  # below this share of labels with an edge, propagation is nearly off: warn


def phi(x: np.ndarray, a: float = PHI_A, b: float = PHI_B) -> np.ndarray:
    """MIG's concave information function ``(x + a) ** b``."""
    return np.power(x + a, b)


def phi_gradient(x: np.ndarray, a: float = PHI_A, b: float = PHI_B) -> np.ndarray:
    """``b * (x + a) ** (b - 1)``: the authors' ``_d_phi_pow``."""
    return b * np.power(x + a, b - 1)


def _check_params(threshold: float, prop_weight: float, phi_a: float, phi_b: float) -> None:
    if not -1.0 <= float(threshold) <= 1.0:
        raise InputError(f"MIG threshold must be a cosine similarity in [-1, 1], got {threshold}")
    if float(prop_weight) < 0:
        raise InputError(f"MIG prop_weight must be >= 0, got {prop_weight}")
    if float(phi_a) <= 0 or not 0 < float(phi_b) <= 1:
        raise InputError(f"MIG phi needs phi_a > 0 and 0 < phi_b <= 1 (concave), got phi_a={phi_a}, phi_b={phi_b}")


def label_graph(label_vectors: np.ndarray, threshold: float = 0.9, block: int = 4096) -> sp.csr_matrix:
    """Weighted adjacency of the labels (diagonal included): cosine similarity where >= threshold, else 0.

    Built a row block at a time in float32 (the authors' dtype), so no dense labels x labels matrix is held.
    """
    unit = normalize_rows(as_embeddings(label_vectors, "label vectors"))
    blocks = []
    for lo in range(0, len(unit), block):
        sim = unit[lo:lo + block] @ unit.T
        sim[sim < threshold] = 0.0
        blocks.append(sp.csr_matrix(sim))
    return sp.vstack(blocks, format="csr")


def graph_stats(w: sp.csr_matrix) -> dict[str, float]:
    """Size of the label graph without self-loops: labels, undirected edges, mean degree, share with an edge."""
    off = w - sp.diags(w.diagonal())
    off.eliminate_zeros()
    degree = np.diff(off.tocsr().indptr)
    n = w.shape[0]
    return {"labels": float(n), "edges": float(off.nnz // 2), "mean_degree": float(degree.mean()) if n else 0.0,
            "share_with_edge": float((degree > 0).mean()) if n else 0.0}


def warn_if_sparse(stats: dict[str, float], threshold: float, where: str) -> None:
    """Propagation is MIG's point; a graph with (almost) no edges silently turns it off."""
    if stats["share_with_edge"] < SPARSE_EDGE_SHARE:
        log.warning("%s: only %.1f%% of the %d labels have an edge at threshold %.3g (%d edges), so label "
                    "propagation is nearly off; lower the threshold or use a tag embedder whose similar tags "
                    "score above it (MIG's paper configs name theirs)", where, 100 * stats["share_with_edge"],
                    int(stats["labels"]), threshold, int(stats["edges"]))


def propagation_matrix(w: sp.spmatrix, prop_weight: float = 1.0) -> sp.csr_matrix:
    """Diagonal kept, off-diagonal edges times ``prop_weight``, each column normalised to sum 1."""
    p = w.astype(np.float32).tocsr()
    p.data = np.where(p.indices == np.repeat(np.arange(p.shape[0]), np.diff(p.indptr)), p.data,
                      np.float32(prop_weight) * p.data)
    colsum = np.bincount(p.indices, weights=p.data, minlength=p.shape[1]).astype(np.float32)
    if (colsum <= 0).any():
        bad = np.flatnonzero(colsum <= 0)[:5].tolist()
        raise InputError(f"MIG: labels {bad} have no weight in the label graph (threshold above their "
                         "self-similarity?); lower the threshold")
    p.data = p.data / colsum[p.indices]  # float32 division, as the authors' dense mat_p / mat_p.sum(axis=0)
    return p


def sample_vectors(labels: Sequence[Sequence[int]], quality: np.ndarray | None, n_labels: int,
                   norm: bool = False) -> sp.csr_matrix:
    """Rows ``v_i[l] = s_i`` for each label l of row i (``s_i / |L_i|`` with ``norm``), as the authors'
    ``LabelGraph.vectorize``: a label repeated in a row counts once, but ``|L_i|`` counts the repeats."""
    n = len(labels)
    s = np.ones(n) if quality is None else np.asarray(quality, dtype=np.float64)
    if s.shape != (n,) or not np.isfinite(s).all():
        raise InputError(f"MIG: quality must be {n} finite scores, one per row, got shape {s.shape}")
    rows, cols, vals = [], [], []
    for i, labs in enumerate(labels):
        labs = [int(j) for j in labs]
        if any(not 0 <= j < n_labels for j in labs):
            raise InputError(f"MIG: row {i} has a label id outside 0..{n_labels - 1}: {labs}")
        uniq = sorted(set(labs))
        rows += [i] * len(uniq)
        cols += uniq
        vals += [s[i] / len(labs) if norm else s[i]] * len(uniq)
    return sp.csr_matrix((np.asarray(vals, dtype=np.float32), (rows, cols)), shape=(n, n_labels))


def sample_information(labels: Sequence[Sequence[int]], quality: np.ndarray | None, prop: sp.spmatrix,
                       norm: bool = False) -> sp.csr_matrix:
    """``U = V @ P`` (float32, sparse): each row's information spread over the labels."""
    return (sample_vectors(labels, quality, prop.shape[0], norm) @ prop).astype(np.float32).tocsr()


@dataclass(frozen=True)
class InformationModel:
    """A pool-wide label graph and its propagation matrix, reused for every subset and every step."""

    prop: sp.csr_matrix
    stats: dict[str, float]

    @classmethod
    def build(cls, label_vectors: np.ndarray, threshold: float = 0.9, prop_weight: float = 1.0, *,
              where: str = "MIG") -> InformationModel:
        w = label_graph(label_vectors, threshold)
        stats = graph_stats(w)
        warn_if_sparse(stats, threshold, where)
        return cls(propagation_matrix(w, prop_weight), stats)


def information(u_sum: np.ndarray, phi_a: float = PHI_A, phi_b: float = PHI_B) -> float:
    """E = sum over labels of phi(information on the label)."""
    return float(phi(np.asarray(u_sum, dtype=np.float64), phi_a, phi_b).sum())


def mig_information(labels: Sequence[Sequence[int]], label_vectors: np.ndarray, quality: np.ndarray | None = None,
                    *, threshold: float = 0.9, prop_weight: float = 1.0, phi_a: float = PHI_A, phi_b: float = PHI_B,
                    norm: bool = False) -> float:
    """E(D) = sum_l phi(sum_{i in D} u_il): MIG's information score of the rows ``labels`` on the label graph
    of ``label_vectors`` (give the pool-wide graph, so that scores of different subsets are comparable).

    ``labels``: label ids per row (into ``label_vectors``); ``quality``: one score per row (None: 1).

    >>> round(mig_information([[0], [1]], np.eye(2)), 6)  # two unrelated labels, one unit each: 2 * 1 ** 0.8
    2.000002
    """
    _check_params(threshold, prop_weight, phi_a, phi_b)
    model = InformationModel.build(label_vectors, threshold, prop_weight, where="mig_information")
    u = sample_information(labels, quality, model.prop, norm)
    return information(np.asarray(u.sum(axis=0, dtype=np.float64)).ravel(), phi_a, phi_b)
