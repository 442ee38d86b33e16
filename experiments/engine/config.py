"""Where the Hydra configs live and the resolvers they use; imported before any config is composed."""

from __future__ import annotations

import functools
import logging
import subprocess
from pathlib import Path

from omegaconf import OmegaConf

from experiments.data.benchmark_files import resolve_data

log = logging.getLogger("divbench")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# A wheel (``pip install .``, non-editable) carries the top-level configs/ here as package data (setup.py).
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
# The source tree (a clone, an editable install): configs/ beside pyproject.toml.
SOURCE_TREE = (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "configs").is_dir()
CONFIG_DIR = str(PROJECT_ROOT / "configs" if SOURCE_TREE else PACKAGED_CONFIGS)


def output_root() -> Path:
    """Where ``${divbench_root:}`` puts cache, results and outputs: the clone in a source tree; the working
    directory for an installed wheel (never site-packages)."""
    return PROJECT_ROOT if SOURCE_TREE else Path.cwd()


def committed(root: Path, rel: str) -> bool:
    """Whether ``rel`` (under ``root``) is a file tracked by the git repository ``root`` is in (False outside one, or
    without git)."""
    try:
        found = subprocess.run(["git", "-C", str(root), "ls-files", "--error-unmatch", rel], capture_output=True,
                               timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return found.returncode == 0


@functools.cache
def results_folder(root: str, study: str) -> str:
    """A study's default results folder: ``<root>/results/<study>``, unless the clone's git tracks results there
    (the committed example results, e.g. results/demo: a user's run must not replace them); then
    ``<root>/results/local/<study>`` (ignored by git). ``results_dir=results/<study>`` still names the committed
    folder, to regenerate it on purpose."""
    default = Path(root) / "results" / study
    if not committed(Path(root), f"results/{study}/runs.csv"):
        return str(default)
    local = Path(root) / "results" / "local" / study
    log.info("%s holds the committed example results: this run writes %s (results_dir=%s replaces them)", default,
             local, default)
    return str(local)


OmegaConf.register_new_resolver("divbench_root", lambda: str(output_root()), replace=True)
# ${divbench_results:<study>}: the study's default results folder (results_folder)
OmegaConf.register_new_resolver("divbench_results", lambda study: results_folder(str(output_root()), study),
                                replace=True)
# ${divbench_data:<shared_dir>,<relative path>}: $DIVBENCH_DATA, then <shared_dir>/data, then the user data dir.
OmegaConf.register_new_resolver("divbench_data", lambda shared, rel: resolve_data(rel, shared), replace=True)
# ${divbench_labels:${selection.subsets}}: the subsets' labels, comma-joined (a sweep over selection.only names each
# once, where the subsets are listed: configs/selection/).
OmegaConf.register_new_resolver(
    "divbench_labels", lambda subsets: ",".join(dict.fromkeys(s.get("label", s["selector"]) for s in subsets)),
    replace=True)
