"""Every metric, one configuration each, on one 10,000 x 896 subset with a 50,000-row reference (issue target:
<= 60 s and <= 4 GiB in all on 2 cores). Each metric runs in its own process so its peak memory is its own.

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_all_metrics.py [--quick]
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys
import time

import numpy as np

SIZES = {"full": (10000, 50000, 896), "quick": (2000, 10000, 256)}
PARAMS = {"partition_entropy": {"n_clusters": 100}, "knn_distance": {"k": 10}, "cluster_inertia": {"n_clusters": 10}}


def _data(n_sub: int, n_ref: int, d: int):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, d)).astype(np.float32)
    ref = centres[rng.integers(0, 200, n_ref)] + 0.7 * rng.normal(size=(n_ref, d)).astype(np.float32)
    sub = ref[rng.choice(n_ref, n_sub, replace=False)]
    words = [f"w{i}" for i in range(5000)]
    texts = [" ".join(rng.choice(words, 60)) for _ in range(n_sub)]
    return sub, ref, texts


def _run(name: str, size: str, queue: mp.Queue) -> None:
    import metrics

    sub, ref, texts = _data(*SIZES[size])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    metrics.compute([{"name": name, "params": PARAMS.get(name, {})}],
                    metrics.MetricInputs(embeddings=sub, reference=ref, texts=texts))
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((elapsed, peak / 2**20, (peak - base) / 2**20))


def main() -> None:
    import metrics

    size = "quick" if "--quick" in sys.argv else "full"
    n_sub, n_ref, d = SIZES[size]
    print(f"subset {n_sub} x {d}, reference {n_ref} x {d}")
    print(f"{'metric':<20} {'wall s':>8} {'rows/s':>10} {'peak GiB':>9} {'extra GiB':>10}")
    total = 0.0
    ctx = mp.get_context("spawn")
    for name in metrics.available():
        if name == "novelsum_grid":
            continue
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(name, size, queue))
        proc.start()
        elapsed, peak, extra = queue.get()
        proc.join()
        total += elapsed
        print(f"{name:<20} {elapsed:8.2f} {n_sub / elapsed:10.0f} {peak:9.2f} {extra:10.2f}")
    print(f"{'all metrics':<20} {total:8.2f}   (target <= 60 s, <= 4 GiB each)")


if __name__ == "__main__":
    main()
