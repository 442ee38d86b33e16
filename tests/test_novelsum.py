"""NovelSum and DistSum: the authors' golden outputs, hand-computed values, invariances and bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from divcore.errors import InputError
from metrics import distsum_cosine, grid_key, novelsum, novelsum_grid


def test_reference_mode_reproduces_authors_grid(golden):
    pool = golden["pool"]
    for name, idx in golden["subsets"].items():
        got = novelsum_grid(pool[idx], pool)
        expected = golden["expected"]["novelsum"][name]
        assert len(expected) == 18 and set(got) == set(expected)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-5), (name, key)


def test_single_config_matches_grid_and_golden(golden):
    pool, idx = golden["pool"], golden["subsets"]["two_clusters"]
    expected = golden["expected"]["novelsum"]["two_clusters"][grid_key(10, 0.5, 1)]
    assert novelsum(pool[idx], pool, neighbors=10, density_power=0.5, distance_power=1.0) == pytest.approx(
        expected, rel=1e-5)


def test_distsum_reproduces_authors_cos_distance(golden):
    pool = golden["pool"]
    for name, idx in golden["subsets"].items():
        assert distsum_cosine(pool[idx]) == pytest.approx(golden["expected"]["cos_distance"][name], rel=1e-5)


def test_hand_computed_values():
    # Three orthogonal unit vectors: each row of the cosine-distance matrix is [0, 1, 1].
    x = np.eye(3)
    # A = 0: plain mean 2/3. A = 1: sorted [0, 1, 1], weights [1, 1/2, 1/3] -> (1/2 + 1/3) / (11/6) = 5/11.
    assert novelsum(x, neighbors=1, density_power=0, distance_power=0) == pytest.approx(2 / 3)
    assert novelsum(x, neighbors=1, density_power=0, distance_power=1) == pytest.approx(5 / 11)
    # Density with K=1 on the pool itself: nearest other squared L2 distance is 2 -> rho = 1 / 2 ** B.
    assert novelsum(x, neighbors=1, density_power=1, distance_power=0) == pytest.approx(2 / 3 / 2, rel=1e-6)
    # Paper mode excludes the self-distance: every remaining distance is 1.
    assert novelsum(x, neighbors=1, density_power=0, distance_power=1, mode="paper") == pytest.approx(1.0)
    # DistSum of two orthogonal vectors: pairs (0, 1, 1, 0) -> 1/2.
    assert distsum_cosine(np.eye(2)) == pytest.approx(0.5)


def test_invariances(golden):
    pool, idx = golden["pool"], golden["subsets"]["random"]
    sub = pool[idx]
    base = novelsum(sub, pool, density_power=0)
    scale = np.random.default_rng(0).uniform(0.5, 3.0, size=(len(sub), 1)).astype(np.float32)
    assert novelsum(sub * scale, pool, density_power=0) == pytest.approx(base, rel=1e-5)
    assert distsum_cosine(sub * scale) == pytest.approx(distsum_cosine(sub), rel=1e-5)
    perm = np.random.default_rng(1).permutation(len(sub))
    assert novelsum(sub[perm], pool) == pytest.approx(novelsum(sub, pool), rel=1e-6)
    doubled = np.concatenate([sub, sub])
    assert distsum_cosine(doubled) == pytest.approx(distsum_cosine(sub), rel=1e-2)
    assert novelsum(doubled, pool) < novelsum(sub, pool)


def test_paper_mode_differs_only_by_documented_choices(golden):
    pool, idx = golden["pool"], golden["subsets"]["random"]
    sub = pool[idx]
    # With no density and no proximity weighting, the paper mode is the mean over off-diagonal pairs.
    n = len(sub)
    assert novelsum(sub, pool, density_power=0, distance_power=0, mode="paper") == pytest.approx(
        distsum_cosine(sub) * n / (n - 1), rel=1e-5)


def test_exact_neighbours_keep_a_real_neighbour_for_outside_queries():
    from metrics.knn import knn_sq_distances

    ref = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    outside = np.array([[0.5, 0.0]], dtype=np.float32)
    assert knn_sq_distances(outside, ref, 1, mode="exact")[0, 0] == pytest.approx(0.25)
    assert knn_sq_distances(outside, ref, 1, mode="reference")[0, 0] == pytest.approx(0.25)  # drops one of two
    inside = ref[:1]
    assert knn_sq_distances(inside, ref, 1, mode="exact")[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("bad, match", [
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN or inf"),
    (np.array([[0.0, 0.0], [0.0, 1.0]]), "all-zero rows"),
    (np.ones((1, 3)), "at least 2"),
    (np.ones(3), "2-D"),
])
def test_bad_embeddings(bad, match):
    with pytest.raises(InputError, match=match):
        novelsum(bad, np.eye(3)[:, :bad.shape[-1]] if bad.ndim == 2 else None)


def test_bad_parameters():
    x = np.eye(4)
    with pytest.raises(InputError, match="dimension"):
        novelsum(x, np.eye(5))
    with pytest.raises(InputError, match="distinct rows"):
        novelsum(x, neighbors=10)
    with pytest.raises(InputError, match="neighbors"):
        novelsum(x, neighbors=0)
    with pytest.raises(InputError, match="mode"):
        novelsum(x, neighbors=1, mode="other")
    with pytest.raises(InputError, match="density_power"):
        novelsum(x, neighbors=1, density_power=-1)


def test_grid_shares_work_and_covers_product():
    x = np.random.default_rng(0).normal(size=(50, 8))
    got = novelsum_grid(x, neighbors=[3, 5], density_powers=[0, 1], distance_powers=[0, 2])
    assert set(got) == {grid_key(k, b, a) for k, b, a in itertools.product([3, 5], [0, 1], [0, 2])}
    assert got[grid_key(3, 0, 0)] == got[grid_key(5, 0, 0)]  # density off: K does not matter
    for mode in ("reference", "paper"):
        g = novelsum_grid(x, neighbors=[5], density_powers=[0.5], distance_powers=[1], mode=mode, block_size=7)
        assert g[grid_key(5, 0.5, 1)] == pytest.approx(novelsum(x, neighbors=5, mode=mode), rel=1e-6)


def test_paper_mode_is_the_papers_formula_with_distance_ranks():
    # v_i = sum_{j != i} w_ij rho_j^B d_ij / sum_{j != i} w_ij, w_ij = rank_i(j)^-A, ranks by increasing d_ij
    # (ties by row index), rho as in reference mode; brute force on a pool with a duplicated row (a tie)
    from metrics.knn import local_density

    rng = np.random.default_rng(11)
    ref = rng.normal(size=(80, 5)).astype(np.float32)
    x = np.vstack([ref[:12], ref[3:4]])
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    d = 1 - unit @ unit.T
    for b, a in [(0.0, 1.0), (0.5, 1.0), (0.5, 2.0), (0.25, 0.0)]:
        rho = local_density(x, ref, 5, b)
        v = []
        for i in range(len(x)):
            others = sorted((j for j in range(len(x)) if j != i), key=lambda j: (np.float32(d[i, j]), j))
            w = np.arange(1, len(others) + 1, dtype=float) ** -a
            v.append(sum(wk * rho[j] * d[i, j] for wk, j in zip(w, others, strict=True)) / w.sum())
        got = novelsum(x, ref, neighbors=5, density_power=b, distance_power=a, mode="paper")
        assert got == pytest.approx(np.mean(v), rel=1e-5), (b, a)
