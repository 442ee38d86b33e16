"""Run the demo study from a cold cache and print each stage's wall time and the process's peak memory.

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_demo.py [hydra overrides...]
Peak RSS is the process maximum reached by the end of each stage (getrusage), so it never decreases.
"""

from __future__ import annotations

import sys
import tempfile
import time

from hydra import compose, initialize_config_dir

from experiments.cli.study import run
from experiments.engine.config import CONFIG_DIR


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"cache_dir={tmp}/cache", f"results_dir={tmp}/results", f"logger.dir={tmp}/wandb",
                     *sys.argv[1:]]
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("study", overrides=overrides)
        start = time.perf_counter()
        result = run(cfg)
        total = time.perf_counter() - start
    print(f"{'stage':<10} {'wall s':>8} {'peak RSS GiB':>13}")
    for stage, t in result["timings"].items():
        print(f"{stage:<10} {t['wall_s']:8.1f} {t['peak_rss_gib']:13.2f}")
    print(f"{'total':<10} {total:8.1f}   (target <= 1200 s on 2 cores)")


if __name__ == "__main__":
    main()
