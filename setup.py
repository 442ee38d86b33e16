"""Ships the top-level ``configs/`` inside the wheel as ``experiments/engine/configs`` (package data), so that a
non-editable install (``pip install .``, a built wheel) composes the same Hydra configs as the source tree;
:data:`experiments.engine.config.CONFIG_DIR` finds either. Everything else is declared in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONFIGS = Path(__file__).resolve().parent / "configs"
PACKAGED = Path("experiments", "engine", "configs")  # experiments.engine.config.PACKAGED_CONFIGS


class BuildWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads configs/ in place
            return
        target = Path(self.build_lib) / PACKAGED
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(CONFIGS, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithConfigs})
