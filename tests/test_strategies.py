"""k-means, farthest, QDIT, Repr Filter and MIG selectors, and MIG's information score."""

from __future__ import annotations

import numpy as np
import pytest

from divcore.errors import InputError
from metrics.labels import kmeans_labels
from metrics.mig import label_graph, mig_information, phi, propagation_matrix, sample_information
from selection import PoolInputs, mig, qdit, select
from selection.signals import length_proxy


def _pool(n: int = 120, d: int = 6, **kw) -> PoolInputs:
    rng = np.random.default_rng(0)
    return PoolInputs(size=n, embeddings=rng.normal(size=(n, d)), proxy_quality=rng.uniform(0.1, 1, n), **kw)


@pytest.mark.parametrize("name, params", [("kmeans", {"n_clusters": 5}), ("farthest", {}), ("qdit", {}),
                                          ("repr_filter", {"threshold": 0.95}), ("mig", {"n_clusters": 8}),
                                          ("mig", {"n_clusters": 8, "gain": "exact"})])
def test_new_selectors_distinct_and_reproducible(name, params):
    pool = _pool()
    a = select(name, pool, 15, 3, **params)
    assert len(set(a.indices)) == 15 and a.indices == select(name, pool, 15, 3, **params).indices


def test_kmeans_equal_shares():
    pool = _pool(200)
    labels = np.array([lab[0] for lab in kmeans_labels(pool.embeddings, 4, 1).labels])
    picks = select("kmeans", pool, 20, 1, n_clusters=4).indices
    assert (np.bincount(labels, minlength=4) >= 5).all()  # every cluster can give its share
    assert np.bincount(labels[picks], minlength=4).tolist() == [5, 5, 5, 5]
    x = np.vstack([np.tile([1.0, 0.0], (3, 1)), np.random.default_rng(0).normal(size=(60, 2)) + [0, 9]])
    small = PoolInputs(size=63, embeddings=x + 1e-3 * np.random.default_rng(1).normal(size=x.shape))
    assert len(set(select("kmeans", small, 40, 0, n_clusters=2).indices)) == 40  # a small cluster's share moves


def test_farthest_picks_largest_distance_from_centroid():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [1.0, 0.05], [-1.0, 0.2], [0.0, 1.0]])
    assert select("farthest", PoolInputs(size=5, embeddings=x), 2, 0).indices == [3, 4]


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
def test_qdit_lazy_greedy_equals_plain_greedy(alpha):
    pool = _pool(60)
    unit = pool.embeddings / np.linalg.norm(pool.embeddings, axis=1, keepdims=True)
    sims, q = unit @ unit.T, pool.proxy_quality
    q = (q - q.min()) / (q.max() - q.min())
    cover, picks = np.zeros(60), []
    for _ in range(10):
        gains = (1 - alpha) * np.clip(sims - cover[:, None], 0, None).sum(axis=0) / 60 + alpha * q
        gains[picks] = -np.inf
        picks.append(int(np.argmax(gains)))
        cover = np.maximum(cover, sims[:, picks[-1]])
    assert select("qdit", pool, 10, 0, alpha=alpha).indices == picks
    assert qdit(pool.embeddings, pool.proxy_quality, 10, alpha=alpha, progress=False) == picks


def test_qdit_alpha_weights_quality():
    pool = _pool(60)
    top = np.argsort(-pool.proxy_quality, kind="stable")[:5].tolist()
    assert qdit(pool.embeddings, pool.proxy_quality, 5, alpha=1.0, progress=False) == top
    with pytest.raises(InputError, match="quality_scale"):
        qdit(pool.embeddings, pool.proxy_quality, 5, quality_scale="zscore")


def test_repr_filter_respects_threshold_and_quality_order():
    x = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.7, 0.7]])
    pool = PoolInputs(size=4, embeddings=x, quality=np.array([0.9, 0.8, 0.7, 0.6]))
    assert select("repr_filter", pool, 3, 0, threshold=0.9).indices == [0, 2, 3]
    with pytest.raises(InputError, match="only 3 rows pass"):  # DEITA would return 3 rows; divbench raises
        select("repr_filter", pool, 4, 0, threshold=0.9)


def test_repr_filter_ties_in_deita_pandas_order():
    pd = pytest.importorskip("pandas")
    from selection.strategies import deita_order

    rng = np.random.default_rng(5)
    for n in (10, 40, 300):  # numpy's quicksort is an insertion sort below 17 rows, introsort above
        score = rng.integers(0, 4, size=n).astype(float)
        pandas_order = pd.DataFrame({"s": score}).sort_values(by="s", ascending=False).index.to_numpy()
        assert deita_order(score).tolist() == pandas_order.tolist()


def test_mig_exact_gain_equals_brute_force_marginal_gain():
    vectors = np.array([[1.0, 0.0], [0.95, 0.3], [0.0, 1.0]])
    labels = [[0], [1], [2], [0, 2], [1, 2]]
    quality = np.array([1.0, 0.5, 0.8, 0.9, 0.7])
    pool = PoolInputs(size=5, embeddings=np.eye(5), quality=quality)
    picks = mig(labels, vectors, quality, 3, gain="exact", progress=False)
    expected: list[int] = []
    for _ in range(3):
        base = mig_information([labels[i] for i in expected], vectors, quality[expected])
        gains = [-np.inf if i in expected else
                 mig_information([labels[j] for j in expected + [i]], vectors, quality[expected + [i]]) - base
                 for i in range(5)]
        expected.append(int(np.argmax(gains)))
    assert picks == expected
    assert select("mig", pool, 3, 0, quality_source="data", n_clusters=5, gain="exact").indices == \
        mig([[i] for i in range(5)], np.eye(5), quality, 3, gain="exact", progress=False)  # eye: one cluster each


def test_mig_gradient_gain_is_the_authors_rule_and_norm_divides():
    vectors = np.array([[1.0, 0.0], [0.95, np.sqrt(1 - 0.95**2)], [0.0, 1.0]])
    labels, quality = [[0], [1, 2], [2], [0, 1]], np.array([1.0, 0.6, 0.9, 0.5])
    for norm in (False, True):
        p = propagation_matrix(label_graph(vectors, 0.9)).toarray()
        v = np.zeros((4, 3))
        for i, labs in enumerate(labels):
            v[i, labs] = quality[i] / (len(labs) if norm else 1)
        u, x, expected = v @ p, np.zeros(3), []
        for _ in range(4):
            scores = u @ (0.8 * (x + 1e-6) ** -0.2)
            scores[expected] = -np.inf
            expected.append(int(np.argmax(scores)))
            x += u[expected[-1]]
        assert mig(labels, vectors, quality, 4, norm=norm, progress=False) == expected


def test_mig_information_hand_value():
    # two unrelated labels (similarity 0 < T): P = I; one sample per label with quality 1 -> 2 * phi(1)
    vectors = np.eye(2)
    assert mig_information([[0], [1]], vectors) == pytest.approx(2 * (1 + 1e-6) ** 0.8)
    p = propagation_matrix(label_graph(np.array([[1.0, 0.0], [0.95, np.sqrt(1 - 0.95**2)]]), 0.9)).toarray()
    assert p.sum(axis=0) == pytest.approx([1.0, 1.0]) and p[0, 1] == pytest.approx(0.95 / 1.95)
    eye = propagation_matrix(label_graph(np.eye(2), 0.9))
    assert sample_information([[0, 1]], None, eye).toarray().tolist() == [[1.0, 1.0]]  # norm off: no division
    assert sample_information([[0, 1]], None, eye, norm=True).toarray().tolist() == [[0.5, 0.5]]
    assert phi(np.zeros(1))[0] == pytest.approx(1e-6 ** 0.8)
    assert mig_information([[0, 1]], np.eye(2), np.array([2.0]), norm=True) == pytest.approx(2 * (1 + 1e-6) ** 0.8)


def test_quality_proxy_and_missing_signals():
    convs = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a b c"}]},
             {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    assert length_proxy(convs).tolist() == pytest.approx([1.0, np.log(2) / np.log(4)])
    pool = PoolInputs(size=10, embeddings=np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.raises(InputError, match="no 'quality' column"):
        select("qdit", pool, 3, 0, quality_source="data")
    with pytest.raises(InputError, match="no 'tags' column"):
        select("mig", pool, 3, 0, label_source="tags", quality_source="auto")
