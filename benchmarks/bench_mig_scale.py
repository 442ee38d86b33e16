"""MIG at paper scale: the authors' gradient rule over a 396k-row pool with thousands of tag labels.

The authors' sampler holds the (rows x labels) information matrix densely in float32 (396k x 5,000 labels:
7.9 GB) and multiplies it by the gradient every step. divbench holds it sparse (a row has nonzeros only on its
labels and their neighbours in the thresholded graph), so a step costs O(nonzeros). This script times the
graph build and the greedy loop on a synthetic pool of that shape, and extrapolates the loop linearly in k
(each step costs the same: one sparse matrix-vector product over the pool).

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_mig_scale.py [--quick]
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from metrics.mig import InformationModel
from selection import mig


def synthetic_pool(n: int, n_labels: int, dim: int, seed: int = 0) -> tuple[list[list[int]], np.ndarray,
                                                                           np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_labels // 5, dim))
    vectors = centres[rng.integers(0, len(centres), n_labels)] + 0.15 * rng.normal(size=(n_labels, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    counts = rng.integers(1, 6, n)  # 1-5 tags per row, as InsTag pools
    flat = rng.integers(0, n_labels, counts.sum())
    labels = [row.tolist() for row in np.split(flat, np.cumsum(counts)[:-1])]
    return labels, vectors, rng.uniform(1, 6, n)


def main() -> None:
    n, n_labels, k = (40_000, 1_000, 500) if "--quick" in sys.argv else (396_000, 5_000, 2_000)
    labels, vectors, quality = synthetic_pool(n, n_labels, 64)
    start = time.perf_counter()
    model = InformationModel.build(vectors, 0.9)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    picks = mig(labels, vectors, quality, k, model=model, progress=False)
    loop_s = time.perf_counter() - start
    assert len(set(picks)) == k
    print(f"pool {n} rows, {n_labels} labels ({int(model.stats['edges'])} edges, mean degree "
          f"{model.stats['mean_degree']:.1f}): graph {build_s:.1f} s; k={k} picks {loop_s:.1f} s "
          f"({1000 * loop_s / k:.1f} ms/step; linear in k: 10k picks ~ {10_000 * loop_s / k / 60:.1f} min, "
          f"50k ~ {50_000 * loop_s / k / 60:.1f} min); peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB "
          f"(the authors' dense float32 matrix alone: {n * n_labels * 4 / 1e9:.1f} GB)")


if __name__ == "__main__":
    main()
