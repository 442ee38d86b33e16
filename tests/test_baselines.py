"""Baseline metrics: hand-computed values, well-kept libraries, invariances and the registry."""

from __future__ import annotations

import numpy as np
import pytest

import metrics
from divcore.errors import InputError
from metrics import MetricInputs, baselines


def _cyclic_text(n_types: int, n_tokens: int = 400) -> list[str]:
    """``n_tokens`` words cycling through ``n_types`` alphabetic types (lexicalrichness drops digits, so no w0..w9).

    Hand value of vocd-D: each type occurs m = n_tokens / n_types times, so a k-token sample without replacement
    holds n_types * (1 - C(n_tokens - m, k) / C(n_tokens, k)) types on average; least squares of
    TTR(k) = (D/k)[(1 + 2k/D)^0.5 - 1] to that expected TTR over k = 35..50 (scipy curve_fit) gives D = 24.054 for
    40 types and 1.5385 for 10. The sampled estimate is within 2% of it.
    """
    words = [a + b for a in "abcdefgh" for b in "abcdefgh"][:n_types]
    return [" ".join(words[i % n_types] for i in range(n_tokens))]


def test_lexical_hand_values():
    assert baselines.ttr(["the cat", "The dog"]) == pytest.approx(3 / 4)
    for n_types, expected in ((40, 24.054), (10, 1.5385)):
        assert baselines.vocd_d(_cyclic_text(n_types), iterations=3, within_sample=100) == pytest.approx(
            expected, rel=0.02)
    with pytest.raises(InputError, match="more than ntokens"):
        baselines.vocd_d(["a b c"])


def test_distance_hand_values():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    # pairwise distances 5, 4, 3, each counted twice over 6 ordered pairs
    assert baselines.distsum_l2(x, block_size=2) == pytest.approx(4.0)
    e = np.eye(3)
    assert baselines.knn_distance(e, k=1) == pytest.approx(1.0)
    assert baselines.knn_distance(np.vstack([e, e]), k=1) == pytest.approx(0.0)  # each row's duplicate
    assert baselines.facility_location(e[:2], e) == pytest.approx(2.0)  # rows 0 and 1 covered, row 2 at 0
    assert baselines.log_determinant(e, ridge=0.0) == pytest.approx(0.0)
    assert baselines.radius(np.array([[0.0, 0.0], [2.0, 4.0]])) == pytest.approx(np.sqrt(1 * 2))


def test_vendi_matches_package_and_bounds():
    from vendi_score import vendi

    x = np.random.default_rng(0).normal(size=(30, 5))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert baselines.vendi(x) == pytest.approx(vendi.score_dual(unit, normalize=False), rel=1e-6)
    assert baselines.vendi(np.eye(4)) == pytest.approx(4.0)
    assert baselines.vendi(np.ones((4, 3))) == pytest.approx(1.0)


def test_inertia_matches_sklearn_and_entropy_hand_value():
    from sklearn.cluster import KMeans

    x = np.random.default_rng(1).normal(size=(60, 4)).astype(np.float32)
    expected = KMeans(5, n_init=3, random_state=0).fit(x.astype(np.float64)).inertia_
    assert baselines.cluster_inertia(x, 5) == pytest.approx(expected)
    ref = np.repeat(np.eye(4), 10, axis=0) + 0.01 * np.random.default_rng(2).normal(size=(40, 4))
    sub = np.eye(4)[[0, 0, 1, 2]]
    # shares 1/2, 1/4, 1/4 (seed 0: a k-means start with one seed row per cluster)
    assert baselines.partition_entropy(sub, ref, n_clusters=4, seed=0) == pytest.approx(1.5)


@pytest.mark.parametrize("name", ["distsum_cosine", "knn_distance", "vendi", "facility_location",
                                  "log_determinant"])
def test_cosine_metrics_ignore_row_scale_and_order(name):
    # partition_entropy is not here: the authors' k-means runs on raw rows (L2), so row scale matters
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(120, 6))
    sub = ref[:20]
    params = {"k": 3} if name == "knn_distance" else {}
    base = metrics.compute([{"name": name, "params": params}], MetricInputs(sub, ref))[name]
    scaled = sub * rng.uniform(0.5, 2, size=(20, 1))
    perm = rng.permutation(20)
    for variant in (scaled, sub[perm]):
        assert metrics.compute([{"name": name, "params": params}], MetricInputs(variant, ref))[name] == \
            pytest.approx(base, rel=1e-5)


def test_registry_runs_every_metric_and_checks_inputs():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(150, 6))
    texts = [" ".join(f"w{rng.integers(0, 30)}" for _ in range(40)) for _ in range(20)]
    configs = [{"name": n} for n in metrics.available() if n not in ("partition_entropy", "mig_information")]
    configs.append({"name": "partition_entropy", "params": {"n_clusters": 10}})
    configs.append({"name": "mig_information", "params": {"n_clusters": 16}})
    row = metrics.compute(configs, MetricInputs(ref[:20], ref, texts))
    assert len(row) >= 12 and all(np.isfinite(v) for v in row.values())
    with pytest.raises(InputError, match="needs the subset's texts"):
        metrics.compute([{"name": "ttr"}], MetricInputs(ref[:20], ref))


def test_log_determinant_dual_form_matches_direct():
    x = np.random.default_rng(5).normal(size=(12, 4))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    direct = np.linalg.slogdet(unit @ unit.T + 0.1 * np.eye(12))[1]
    assert baselines.log_determinant(x, ridge=0.1) == pytest.approx(direct, rel=1e-6)  # float32 input
