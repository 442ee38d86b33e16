"""Selectors: the authors' NovelSelect picks, naive references, seeds, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import selection
from divcore.errors import InputError
from selection import PoolInputs, novelselect, select


def _params(key: str) -> dict:
    p = dict(kv.split("=") for kv in key.split(","))
    return {"k": int(p["k"]), "neighbors": int(p["neighbors"]), "density_power": float(p["density_power"]),
            "distance_power": float(p["distance_power"]), "seed": int(p["seed"])}


def test_novelselect_reproduces_exact_picks_and_authors_set(golden):
    pool = golden["pool"][:1500]
    for key, exact in golden["expected"]["novelselect_exact"].items():
        picks = novelselect(pool, progress=False, **_params(key))
        assert picks == exact, key
        authors = golden["expected"]["novelselect"][key]
        assert len(set(picks) & set(authors)) / len(authors) >= 0.95


def _naive_novelselect(x, k, neighbors, density_power, distance_power, seed):
    from metrics.knn import local_density

    rho = local_density(x, x, neighbors, density_power)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    picks = [int(np.random.RandomState(seed).randint(0, len(x)))]
    for _ in range(1, k):
        sel = np.array(picks)
        v = (1 - unit @ unit[sel].T) * (rho[:, None] + rho[sel][None, :])
        v.sort(axis=1)
        score = (v * np.arange(1, len(sel) + 1) ** -float(distance_power)).sum(axis=1) / len(sel)
        score[sel] = -np.inf
        picks.append(int(np.argmax(score)))
    return picks


@pytest.mark.parametrize("distance_power", [0.0, 1.0, 2.0])
def test_novelselect_incremental_state_equals_naive_recompute(distance_power):
    x = np.random.default_rng(3).normal(size=(200, 6))
    got = novelselect(x, 25, neighbors=5, density_power=0.5, distance_power=distance_power, seed=7,
                      dtype="float64", chunk_rows=37, progress=False)
    assert got == _naive_novelselect(x, 25, 5, 0.5, distance_power, 7)


def test_novelselect_quality_multiplier_changes_picks():
    x = np.random.default_rng(0).normal(size=(100, 5))
    quality = np.random.default_rng(1).uniform(0.1, 1.0, size=100)
    plain = novelselect(x, 10, seed=0, progress=False)
    weighted = novelselect(x, 10, seed=0, quality=quality, progress=False)
    assert plain[0] == weighted[0] and plain != weighted


def test_kcenter_equals_naive_reference():
    x = np.random.default_rng(5).normal(size=(150, 4))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    picks = [int(np.random.RandomState(11).randint(0, 150))]
    for _ in range(19):
        dist = (1 - unit @ unit[picks].T).min(axis=1)
        dist[picks] = -np.inf
        picks.append(int(np.argmax(dist)))
    got = select("kcenter", PoolInputs(size=150, embeddings=x), 20, 11).indices
    assert got == picks


@pytest.mark.parametrize("name, params", [("random", {}), ("kcenter", {}), ("novelselect", {"neighbors": 3})])
def test_selectors_return_distinct_rows_reproducibly(name, params):
    x = np.random.default_rng(0).normal(size=(60, 4))
    pool = PoolInputs(size=60, embeddings=x, fingerprint="abc")
    a = select(name, pool, 12, 1, **params)
    assert len(set(a.indices)) == 12 and a.indices == select(name, pool, 12, 1, **params).indices
    assert a.provenance == {"selector": name, "params": params, "seed": 1, "n": 12, "pool_size": 60,
                            "pool_fingerprint": "abc", "unique_rows": 12}
    b = select(name, pool, 12, 2, **params)
    assert set(b.indices) != set(a.indices)  # the seed is used
    if name != "random":  # greedy selectors: the seed draws only the first pick, the authors' way
        assert [a.indices[0], b.indices[0]] == [np.random.RandomState(s).randint(0, 60) for s in (1, 2)]


def test_duplicate_has_exactly_m_distinct_rows():
    pool = PoolInputs(size=50)
    sel = select("duplicate", pool, 20, 0, unique=5)
    assert len(sel.indices) == 20 and len(set(sel.indices)) == 5
    counts = np.bincount(sel.indices)
    assert set(counts[counts > 0]) == {4}
    assert len(set(select("duplicate", pool, 20, 0, unique_ratio=0.5).indices)) == 10
    assert select("duplicate", pool, 20, 1, unique=5).indices != sel.indices


@pytest.mark.parametrize("call, match", [
    (lambda p: select("random", p, 11, 0), "larger than the pool"),
    (lambda p: select("random", p, 0, 0), "positive integer"),
    (lambda p: select("nope", p, 3, 0), "unknown selector"),
    (lambda p: select("random", p, 3, 0, alpha=1), "no parameter"),
    (lambda p: select("duplicate", p, 5, 0, unique=6), "unique must be"),
    (lambda p: select("duplicate", p, 30, 0, unique=11), "pool has 10"),
    (lambda p: select("kcenter", PoolInputs(size=10), 3, 0), "needs the pool's embeddings"),
    (lambda p: select("novelselect", p, 3, 0, use_quality=True), "no quality"),
])
def test_bad_selection_input(call, match):
    pool = PoolInputs(size=10, embeddings=np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.raises(InputError, match=match):
        call(pool)


def test_nan_embeddings_rejected():
    x = np.random.default_rng(0).normal(size=(10, 3))
    x[4, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        select("kcenter", PoolInputs(size=10, embeddings=x), 3, 0)


def test_registry_lists_selectors():
    assert {"random", "duplicate", "kcenter", "novelselect"} <= set(selection.available())


def test_gram_path_equals_knn_search_path_with_duplicate_rows(golden):
    from metrics.knn import local_density, self_density_from_gram

    pool = golden["pool"][:400]
    pool = np.concatenate([pool, pool[[3, 3, 17]]])  # duplicate rows
    gram, rho, inverse = self_density_from_gram(pool, 10, 0.5)
    assert gram.shape == (400, 400) and list(inverse[-4:]) == [399, 3, 3, 17]
    np.testing.assert_allclose(rho.numpy()[inverse], local_density(pool, pool, 10, 0.5), rtol=1e-5)
    for power in (0.0, 1.0):
        fast = novelselect(pool, 40, distance_power=power, seed=3, progress=False)
        searched = novelselect(pool, 40, distance_power=power, seed=3, progress=False, gram_max_bytes=0)
        assert fast == searched
