"""Study-level constraints on a set of subsets: random pool fractions, supervised-token matching, an overlap cap.

A study compares subsets, so what differs between them besides diversity must be held fixed or measured:

* **Pool fractions** (:func:`restrict_pool`). A deterministic selector (farthest, QDIT, Repr Filter, MIG) picks the
  same rows on every run; run on a seeded random fraction of the pool (``pool_fraction: 0.5``: the seed chooses the
  half), it becomes a family of replicable draws. The selector sees the fraction's rows only (its embeddings,
  quality, tags and pool signals restricted to them: pool-wide signals such as k-means ids and kNN distances keep
  their whole-pool values) and its picks are mapped back to pool rows.
* **Token matching** (:func:`match_tokens`). Supervised tokens (loss-bearing assistant tokens under the fine-tune's
  tokenizer, template and max_length, one count per pool row, computed by the caller) are the amount of training
  signal, which alone correlated 0.70 with performance in the mini study. A subset's total
  ``T(S) = sum_{i in S} t_i`` (with multiplicity) is brought into ``[(1 - tol) * target, (1 + tol) * target]``, target
  the study median of the unmatched totals, by swapping the lowest-ranked pick (the last in pick order; every copy
  of a repeated row) for an unselected row of the same stratum (:class:`selection.registry.Selection`'s
  ``strata``), one pick at a time, up the ranking, at most ``max_swaps`` picks. A swap takes a row drawn at random
  (seeded) among those that land the total inside the band, else the row that brings it closest to the target.
  Where ``max_swaps`` swaps cannot reach the band the subset stays as its selector made it and its total is a
  pre-registered covariate (``token_matched: false``).
* **Overlap cap** (:func:`cap_overlap`). Subsets that share most rows are one data point counted twice. Pairwise
  Jaccard ``J(A, B) = |A & B| / |A | B|`` over distinct rows is capped: in plan order, a subset whose overlap with an
  earlier one exceeds the cap has its lowest-ranked shared picks swapped for unselected rows of their stratum that
  no earlier subset holds (where the stratum has none left the pair stays over the cap, ``overlap_capped: false``,
  with a warning). Token matching then only takes rows that keep every pair under the cap.

:func:`design_subsets` applies the three to a study's selections in plan order; :func:`overlap_matrix` is the
Jaccard matrix written beside the results (``overlap.csv``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from divcore.errors import InputError
from metrics.signals import PoolSignals
from selection.registry import PoolInputs, Selection, select

log = logging.getLogger(__name__)


def fraction_rows(size: int, fraction: float, seed: int) -> np.ndarray:
    """The pool rows of the seeded random fraction, ascending: ``round(fraction * size)`` rows drawn without
    replacement by ``numpy.random.default_rng(seed)``."""
    if not 0 < float(fraction) <= 1:
        raise InputError(f"pool_fraction must be in (0, 1], got {fraction!r}")
    m = max(1, round(float(fraction) * size))
    return np.sort(np.random.default_rng(seed).permutation(size)[:m])


def _restrict_signals(signals: PoolSignals, rows: np.ndarray) -> PoolSignals:
    """The pool signals of ``rows``: per-row values subset, fits (centroids) kept."""
    take = (lambda a: None if a is None else np.asarray(a)[rows])
    fits = {kind: {key: replace(fit, ids=np.asarray(fit.ids)[rows]) for key, fit in getattr(signals, kind).items()}
            for kind in ("kmeans", "partitions")}
    return replace(signals, size=len(rows), knn_sq=take(signals.knn_sq), kmeans=fits["kmeans"],
                   partitions=fits["partitions"],
                   tag_ids=None if signals.tag_ids is None else [signals.tag_ids[i] for i in rows],
                   quality=take(signals.quality), proxy_quality=take(signals.proxy_quality))


def restrict_pool(pool: PoolInputs, rows: np.ndarray) -> PoolInputs:
    """What a selector reads about the pool, restricted to ``rows`` (its row i is pool row ``rows[i]``)."""
    take = (lambda a: None if a is None else np.asarray(a)[rows])
    return replace(pool, size=len(rows), embeddings=take(pool.embeddings), quality=take(pool.quality),
                   tags=None if pool.tags is None else [pool.tags[i] for i in rows],
                   proxy_quality=take(pool.proxy_quality), fingerprint=f"{pool.fingerprint}[{len(rows)} rows]",
                   signals=None if pool.signals is None else _restrict_signals(pool.signals, rows))


def lift_selection(sel: Selection, rows: np.ndarray, pool_size: int, fraction: float) -> Selection:
    """A selection made on ``restrict_pool(pool, rows)`` as pool rows; rows outside the fraction never stratum."""
    strata = np.full(pool_size, -1, dtype=np.int64)
    strata[rows] = 0 if sel.strata is None else np.asarray(sel.strata)
    provenance = sel.provenance | {"pool_fraction": float(fraction), "fraction_rows": int(len(rows)),
                                   "pool_size": pool_size}
    return Selection([int(rows[i]) for i in sel.indices], provenance, strata)


def select_in_fraction(name: str, pool: PoolInputs, n: int, seed: int, fraction: float, **params: Any) -> Selection:
    """Selector ``name`` run on the seeded random ``fraction`` of the pool (the seed chooses the rows and is the
    selector's seed too); its picks as pool rows, swaps confined to the fraction."""
    rows = fraction_rows(pool.size, fraction, seed)
    sel = select(name, restrict_pool(pool, rows), n, seed, **params)
    return lift_selection(sel, rows, pool.size, fraction)


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """``|A & B| / |A | B|`` over the distinct rows of two subsets."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa or sb else 0.0


def overlap_matrix(subsets: dict[str, Sequence[int]]) -> pd.DataFrame:
    """Pairwise Jaccard of the subsets' distinct rows, labelled rows and columns (``overlap.csv``)."""
    names = list(subsets)
    sets = [set(subsets[k]) for k in names]
    m = np.array([[len(a & b) / len(a | b) if a | b else 0.0 for b in sets] for a in sets])
    return pd.DataFrame(m, index=pd.Index(names, name="subset"), columns=names)


@dataclass
class _Subset:
    """A subset being adjusted: its picks in rank order (pool rows, repeats allowed) and the overlap bookkeeping
    against the finished earlier subsets (``member[j, row]``: row in earlier subset j)."""

    picks: list[int]
    strata: np.ndarray
    member: np.ndarray  # (earlier subsets, pool rows) bool
    earlier_sizes: np.ndarray
    cap: float | None
    swapped: set[int] = field(default_factory=set)  # picks already swapped in (never swapped out again)

    def unique(self) -> list[int]:
        return list(dict.fromkeys(self.picks))

    def counts(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for r in self.picks:
            out[r] = out.get(r, 0) + 1
        return out

    def shared(self) -> np.ndarray:
        """Rows shared with each earlier subset."""
        return self.member[:, self.unique()].sum(axis=1) if len(self.member) else np.zeros(0, dtype=int)

    def overlap_ok(self, shared: np.ndarray) -> np.ndarray:
        """Whether each earlier pair stays under the cap with ``shared`` rows in common (distinct size unchanged)."""
        if self.cap is None or not len(shared):
            return np.ones(len(shared), dtype=bool)
        union = len(set(self.picks)) + self.earlier_sizes - shared
        return shared <= self.cap * union + 1e-9

    def candidates(self, out: int, keep_cap: bool = True) -> np.ndarray:
        """Unselected rows of ``out``'s stratum; with ``keep_cap``, only those whose swap for ``out`` keeps every
        pair under the cap."""
        stratum = self.strata[out]
        if stratum < 0:
            return np.zeros(0, dtype=np.int64)
        cand = np.flatnonzero(self.strata == stratum)
        cand = cand[~np.isin(cand, self.picks)]
        if keep_cap and len(self.member) and len(cand) and self.cap is not None:
            shared = self.shared()[:, None] - self.member[:, [out]] + self.member[:, cand]
            cand = cand[np.all(self.overlap_ok_matrix(shared), axis=0)]
        return cand

    def overlap_ok_matrix(self, shared: np.ndarray) -> np.ndarray:
        union = len(set(self.picks)) + self.earlier_sizes[:, None] - shared
        return shared <= self.cap * union + 1e-9

    def swap(self, out: int, into: int) -> None:
        self.picks = [into if r == out else r for r in self.picks]
        self.swapped.add(into)

    def lowest_ranked(self, among: set[int] | None = None) -> list[int]:
        """Distinct picks from the lowest-ranked up, skipping rows swapped in (optionally only ``among``)."""
        order = [r for r in reversed(self.unique()) if r not in self.swapped]
        return [r for r in order if among is None or r in among]


def cap_overlap(state: _Subset, rng: np.random.Generator) -> tuple[int, list[int]]:
    """Swap the lowest-ranked picks shared with an over-cap earlier subset until every pair is under the cap, as
    far as the strata allow. Returns (swaps made, the earlier subsets still over the cap: its stratum had no
    unselected row left that no earlier subset holds, e.g. two draws from one small cluster)."""
    swaps, stuck = 0, []
    while True:
        shared = state.shared()
        bad = [j for j in np.flatnonzero(~state.overlap_ok(shared)) if j not in stuck]
        if not bad:
            return swaps, stuck
        j = int(bad[0])
        cand = np.zeros(0, dtype=np.int64)
        for out in state.lowest_ranked(set(np.flatnonzero(state.member[j]).tolist())):
            cand = state.candidates(out, keep_cap=False)
            cand = cand[~state.member[:, cand].any(axis=0)] if len(cand) else cand  # no row an earlier one holds
            if len(cand):
                break
        if not len(cand):
            stuck.append(j)
            continue
        state.swap(out, int(rng.choice(cand)))
        swaps += 1


def token_total(picks: Sequence[int], tokens: np.ndarray) -> int:
    """``T(S) = sum_{i in S} t_i`` over the picks, repeats counted (each copy is trained on)."""
    return int(np.asarray(tokens)[list(picks)].sum())


def match_tokens(state: _Subset, tokens: np.ndarray, target: float, tolerance: float, max_swaps: int,
                 rng: np.random.Generator) -> tuple[bool, int]:
    """Bring the subset's supervised tokens into the band around ``target`` (module docstring). Returns (matched,
    swaps); on failure the subset is left as it came in."""
    lo, hi = (1 - tolerance) * target, (1 + tolerance) * target
    before, swapped_before = list(state.picks), set(state.swapped)
    swaps = 0
    for out in state.lowest_ranked():
        total = token_total(state.picks, tokens)
        if lo <= total <= hi:
            return True, swaps
        if swaps == max_swaps:
            break
        cand = state.candidates(out)
        if not len(cand):
            continue
        copies = state.counts()[out]
        new = total + copies * (tokens[cand].astype(np.int64) - int(tokens[out]))
        inside = cand[(new >= lo) & (new <= hi)]
        if len(inside):
            pick = int(rng.choice(inside))
        else:
            best = int(np.argmin(np.abs(new - target)))
            if abs(new[best] - target) >= abs(total - target):
                continue  # no row of this pick's stratum helps: move up the ranking
            pick = int(cand[best])
        state.swap(out, pick)
        swaps += 1
    if lo <= token_total(state.picks, tokens) <= hi:
        return True, swaps
    state.picks, state.swapped = before, swapped_before
    return False, 0


@dataclass(frozen=True)
class DesignSpec:
    """``selection.match_tokens`` (None: no matching) and ``selection.max_overlap`` (None: no cap)."""

    tolerance: float | None = None
    max_swaps: int | None = None
    max_overlap: float | None = None

    @classmethod
    def from_config(cls, sel_cfg: dict[str, Any], size: int) -> DesignSpec:
        match = sel_cfg.get("match_tokens")
        cap = sel_cfg.get("max_overlap")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 < cap <= 1):
            raise InputError(f"selection.max_overlap must be a Jaccard in (0, 1] or null, got {cap!r}")
        if match is None or match is False:
            return cls(max_overlap=None if cap is None else float(cap))
        if not isinstance(match, dict):
            raise InputError("selection.match_tokens must be a mapping (tolerance, max_swaps, model, chat_template, "
                             f"max_length) or null, got {match!r}")
        tol = match.get("tolerance", 0.1)
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
            raise InputError(f"selection.match_tokens.tolerance must be in (0, 1), got {tol!r}")
        swaps = match.get("max_swaps")
        swaps = max(1, size // 4) if swaps is None else swaps
        if isinstance(swaps, bool) or not isinstance(swaps, int) or swaps < 0:
            raise InputError(f"selection.match_tokens.max_swaps must be an integer >= 0, got {swaps!r}")
        return cls(float(tol), int(swaps), None if cap is None else float(cap))

    @property
    def active(self) -> bool:
        return self.tolerance is not None or self.max_overlap is not None


def design_subsets(selections: Sequence[Selection], spec: DesignSpec, pool_size: int,
                   tokens: np.ndarray | None, seeds: Sequence[int]) -> tuple[list[Selection], float | None]:
    """The study's selections (plan order) under ``spec``: overlap-capped, then token-matched, each subset against
    the finished earlier ones. ``seeds``: each subset's seed (its swaps' random draws). Returns the adjusted
    selections (provenance gains ``supervised_tokens``, ``raw_supervised_tokens``, ``token_matched``,
    ``token_swaps``, ``overlap_swaps``) and the token target (None without matching)."""
    if spec.tolerance is not None and tokens is None:
        raise InputError("selection.match_tokens needs the pool's supervised-token counts")
    tokens = None if tokens is None else np.asarray(tokens, dtype=np.int64)
    target = None
    if spec.tolerance is not None:
        target = float(np.median([token_total(s.indices, tokens) for s in selections]))
    done: list[Selection] = []
    member = np.zeros((0, pool_size), dtype=bool)
    for sel, seed in zip(selections, seeds, strict=True):
        rng = np.random.default_rng([int(seed), 0x70C])
        strata = np.zeros(pool_size, dtype=np.int64) if sel.strata is None else np.asarray(sel.strata)
        state = _Subset(list(sel.indices), strata, member, member.sum(axis=1), spec.max_overlap)
        overlap_swaps, stuck = cap_overlap(state, rng) if spec.max_overlap is not None else (0, [])
        extra: dict[str, Any] = {"overlap_swaps": overlap_swaps, "overlap_capped": not stuck}
        if stuck:
            log.warning("overlap cap: subset %d still shares more than %.2f (Jaccard) with subset(s) %s: their "
                        "strata have no free row left; kept, see overlap.csv", len(done), spec.max_overlap, stuck)
        if tokens is not None:
            extra["raw_supervised_tokens"] = token_total(sel.indices, tokens)
        if target is not None:
            matched, swaps = match_tokens(state, tokens, target, spec.tolerance, spec.max_swaps, rng)
            extra |= {"token_matched": matched, "token_swaps": swaps, "token_target": target}
        if tokens is not None:
            extra["supervised_tokens"] = token_total(state.picks, tokens)
        done.append(Selection(state.picks, sel.provenance | extra, sel.strata))
        row = np.zeros((1, pool_size), dtype=bool)
        row[0, state.picks] = True
        member = np.vstack([member, row])
    return done, target
