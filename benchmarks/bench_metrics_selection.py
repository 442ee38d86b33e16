"""NovelSum and NovelSelect throughput on synthetic embeddings (2-core targets from issues 3 and 4).

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_metrics_selection.py [--quick]
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from metrics import novelsum
from selection import novelselect


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, d)).astype(np.float32)
    return centres[rng.integers(0, 64, n)] + 0.5 * rng.normal(size=(n, d)).astype(np.float32)


def main() -> None:
    quick = "--quick" in sys.argv
    n_sub, d, n_ref = (1000, 1024, 5000) if quick else (4000, 4096, 20000)
    ref = _clustered(n_ref, d, 0)
    sub = ref[np.random.default_rng(1).choice(n_ref, n_sub, replace=False)]
    t = time.perf_counter()
    value = novelsum(sub, ref, neighbors=10, density_power=0.5, distance_power=1.0)
    ns = time.perf_counter() - t
    print(f"NovelSum N={n_sub} D={d} reference={n_ref}: {ns:.1f} s (value {value:.4f}; target <= 20 s; "
          "authors' code: 703 s on this machine class)")

    n, k, d = (3000, 100, 896) if quick else (10000, 300, 896)
    pool = _clustered(n, d, 2)
    t = time.perf_counter()
    picks = novelselect(pool, k, seed=42, progress=False)
    sel = time.perf_counter() - t
    print(f"NovelSelect k={k} of N={n} D={d}: {sel:.2f} s ({len(set(picks))} distinct picks); "
          f"vs the authors' 65-178 s: {65 / sel:.0f}x-{178 / sel:.0f}x faster (target >= 20x)")
    t = time.perf_counter()
    same = novelselect(pool, k, seed=42, progress=False, gram_max_bytes=0) == picks
    print(f"  without the Gram matrix (faiss kNN + one matvec per step, the path for pools too large for it): "
          f"{time.perf_counter() - t:.2f} s, same picks: {same}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
