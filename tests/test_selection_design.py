"""The study-design selection features: cluster-restricted random, pool fractions, token matching, overlap cap."""

from __future__ import annotations

import numpy as np
import pytest

from divcore.errors import InputError
from metrics.labels import spherical_kmeans
from selection import PoolInputs, Selection, select
from selection.design import (
    DesignSpec,
    design_subsets,
    fraction_rows,
    jaccard,
    overlap_matrix,
    select_in_fraction,
    token_total,
)


def _pool(n: int = 400, d: int = 8, seed: int = 0) -> PoolInputs:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d)) * 4
    x = centres[rng.integers(0, 8, n)] + rng.normal(size=(n, d))
    return PoolInputs(size=n, embeddings=x, proxy_quality=rng.uniform(0.1, 1, n))


def _clusters(pool: PoolInputs, k: int = 8, seed: int = 0) -> np.ndarray:
    return spherical_kmeans(pool.embeddings, k, seed).ids


@pytest.mark.parametrize("c", [1, 2, 4])
def test_cluster_random_draws_equal_shares_of_c_clusters(c):
    pool = _pool()
    ids = _clusters(pool)
    a = select("cluster_random", pool, 16, 3, c=c, n_clusters=8)
    counts = np.bincount(ids[a.indices], minlength=8)
    assert (counts > 0).sum() == c and set(counts[counts > 0]) == {16 // c}
    assert sorted(np.flatnonzero(counts)) == a.provenance["clusters"]
    assert a.indices == select("cluster_random", pool, 16, 3, c=c, n_clusters=8).indices
    assert set(a.indices) != set(select("cluster_random", pool, 16, 4, c=c, n_clusters=8).indices)
    assert set(np.unique(a.strata[a.strata >= 0])) == set(a.provenance["clusters"])  # swaps stay in those clusters


def test_cluster_random_seeds_of_one_c_take_disjoint_clusters():
    pool = _pool()
    clusters = [set(select("cluster_random", pool, 8, s, c=2, n_clusters=8).provenance["clusters"]) for s in range(4)]
    assert set().union(*clusters) == set(range(8))  # 4 seeds x 2 clusters: every cluster once


def test_cluster_random_refuses_impossible_draws():
    pool = _pool(60)
    with pytest.raises(InputError, match="c must be <= n_clusters"):
        select("cluster_random", pool, 16, 0, c=9, n_clusters=8)
    with pytest.raises(InputError, match="clusters hold"):
        select("cluster_random", pool, 40, 0, c=1, n_clusters=8)  # no cluster of a 60-row pool holds 40 rows


@pytest.mark.parametrize("name", ["farthest", "qdit", "repr_filter", "mig"])
def test_deterministic_selectors_replicate_on_seeded_pool_halves(name):
    pool = _pool()
    params = {"repr_filter": {"threshold": 0.99}, "mig": {"n_clusters": 8}}.get(name, {})
    a = select_in_fraction(name, pool, 12, 0, 0.5, **params)
    half = fraction_rows(pool.size, 0.5, 0)
    assert len(half) == 200 and set(a.indices) <= set(half.tolist())
    assert a.indices == select_in_fraction(name, pool, 12, 0, 0.5, **params).indices
    b = select_in_fraction(name, pool, 12, 1, 0.5, **params)
    assert set(a.indices) != set(b.indices)
    assert a.provenance["pool_fraction"] == 0.5 and a.provenance["fraction_rows"] == 200
    assert (a.strata[half] == 0).all() and (np.delete(a.strata, half) == -1).all()


def test_fraction_equals_selector_on_the_rows_alone():
    pool = _pool()
    rows = fraction_rows(pool.size, 0.5, 7)
    alone = select("farthest", PoolInputs(size=len(rows), embeddings=pool.embeddings[rows]), 10, 7).indices
    assert select_in_fraction("farthest", pool, 10, 7, 0.5).indices == rows[alone].tolist()


def _tokens(n: int = 400, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(20, 400, n)


def test_token_matching_brings_every_subset_into_the_band_by_swapping_low_ranked_picks():
    pool, tokens = _pool(), _tokens()
    sels = [select("random", pool, 16, s) for s in range(6)] + [select("cluster_random", pool, 16, 0, c=2,
                                                                        n_clusters=8)]
    done, target = design_subsets(sels, DesignSpec(tolerance=0.1, max_swaps=8), pool.size, tokens, range(7))
    assert target == np.median([token_total(s.indices, tokens) for s in sels])
    for raw, sel in zip(sels, done, strict=True):
        p = sel.provenance
        assert p["token_matched"] and abs(p["supervised_tokens"] - target) <= 0.1 * target
        assert p["raw_supervised_tokens"] == token_total(raw.indices, tokens)
        kept = 16 - p["token_swaps"]
        assert sel.indices[:kept] == raw.indices[:kept]  # only the lowest-ranked picks were swapped
        assert len(set(sel.indices)) == 16
    ids = _clusters(pool)
    assert set(ids[done[-1].indices]) == set(ids[sels[-1].indices])  # swaps stayed in the chosen clusters


def test_token_matching_that_cannot_reach_the_band_leaves_the_subset_and_says_so():
    pool = _pool()
    tokens = np.full(pool.size, 100)
    tokens[:16] = 1000  # the first subset is all long rows; no swap of 2 picks reaches the others' median
    sels = [Selection(list(range(16)))] + [Selection(list(range(16 * k, 16 * k + 16))) for k in (1, 2)]
    done, target = design_subsets(sels, DesignSpec(tolerance=0.1, max_swaps=2), pool.size, tokens, [0, 1, 2])
    assert target == 1600 and not done[0].provenance["token_matched"] and done[0].indices == list(range(16))
    assert done[0].provenance["supervised_tokens"] == 16000 and done[1].provenance["token_matched"]


def test_duplicate_rows_swap_with_all_their_copies():
    pool, tokens = _pool(), _tokens()
    dup = select("duplicate", pool, 16, 0, unique=4)
    sels = [dup] + [select("random", pool, 16, s) for s in range(1, 5)]
    done, _ = design_subsets(sels, DesignSpec(tolerance=0.05, max_swaps=4), pool.size, tokens, range(5))
    assert len(set(done[0].indices)) == 4 and sorted(np.unique(done[0].indices, return_counts=True)[1]) == [4] * 4


def test_overlap_cap_swaps_shared_rows_and_matrix_is_written():
    pool = _pool()
    a = select("farthest", pool, 20, 0)
    sels = [a, Selection(list(a.indices)), select("random", pool, 20, 5)]
    done, _ = design_subsets(sels, DesignSpec(max_overlap=0.3), pool.size, None, [0, 1, 2])
    assert done[0].indices == a.indices and jaccard(done[0].indices, done[1].indices) <= 0.3
    assert done[1].indices[:5] == a.indices[:5] and done[1].provenance["overlap_swaps"] > 0  # top picks kept
    m = overlap_matrix({f"s{i}": s.indices for i, s in enumerate(done)})
    assert (np.diag(m) == 1).all() and (m.to_numpy()[~np.eye(3, dtype=bool)] <= 0.3).all()
    assert m.loc["s0", "s1"] == pytest.approx(jaccard(done[0].indices, done[1].indices))


def test_overlap_that_the_strata_cannot_lower_is_kept_and_flagged():
    strata = np.full(100, -1)
    strata[:20] = 0  # both subsets come from one 20-row stratum: no free row to swap in
    a, b = Selection(list(range(16)), strata=strata), Selection(list(range(4, 20)), strata=strata)
    done, _ = design_subsets([a, b], DesignSpec(max_overlap=0.3), 100, None, [0, 1])
    assert done[1].indices == b.indices and not done[1].provenance["overlap_capped"]
    assert done[0].provenance["overlap_capped"]


def test_token_matching_keeps_the_overlap_cap():
    pool, tokens = _pool(60), _tokens(60)
    sels = [select("random", pool, 16, s) for s in range(4)]
    done, _ = design_subsets(sels, DesignSpec(tolerance=0.05, max_swaps=16, max_overlap=0.2), pool.size, tokens,
                             range(4))
    m = overlap_matrix({i: s.indices for i, s in enumerate(done)}).to_numpy()
    assert (m[~np.eye(4, dtype=bool)] <= 0.2 + 1e-9).all()


def test_design_config_is_checked():
    assert DesignSpec.from_config({"match_tokens": {"tolerance": 0.1}}, 32).max_swaps == 8
    assert not DesignSpec.from_config({}, 32).active
    for bad in ({"max_overlap": 1.5}, {"match_tokens": {"tolerance": 0}}, {"match_tokens": "yes"},
                {"match_tokens": {"max_swaps": -1}}):
        with pytest.raises(InputError, match="selection"):
            DesignSpec.from_config(bad, 32)
