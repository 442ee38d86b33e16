"""Where the Hydra configs live and the resolvers they use; imported before any config is composed."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from experiments.data.benchmark_files import resolve_data

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = str(PROJECT_ROOT / "configs")
OmegaConf.register_new_resolver("divbench_root", lambda: str(PROJECT_ROOT), replace=True)
# ${divbench_data:<shared_dir>,<relative path>}: $DIVBENCH_DATA, then <shared_dir>/data, then the user data dir.
OmegaConf.register_new_resolver("divbench_data", lambda shared, rel: resolve_data(rel, shared), replace=True)
