"""Shared fixtures: the golden data in ../shared and a tiny randomly initialised SmolLM2-architecture model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_llama import save_tiny_llama

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DIVBENCH_SHARED", ROOT.parent / "shared"))
GOLDEN = SHARED / "golden" / "novelsum_reference"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that builds the tiny model trains or runs it: it belongs to the slow lane even if unmarked. A
    ``slurm`` test runs only on the cluster scripts/test-slurm.sh starts (``DIVBENCH_SLURM=1``)."""
    for item in items:
        if "tiny_model" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
        slurm = item.get_closest_marker("slurm")
        if slurm is None:
            continue
        if os.environ.get("DIVBENCH_SLURM") != "1":
            item.add_marker(pytest.mark.skip(reason="no SLURM cluster: scripts/test-slurm.sh starts one and runs it"))
        elif (wanted := slurm.kwargs.get("accounting")) is not None and wanted != (
                os.environ.get("DIVBENCH_SLURM_ACCOUNTING") == "1"):
            item.add_marker(pytest.mark.skip(reason=f"runs on the cluster with{'' if wanted else 'out'} accounting "
                                                    "only"))


@pytest.fixture(scope="session")
def golden() -> dict:
    if not GOLDEN.exists():
        pytest.fail(f"golden data missing at {GOLDEN}: ../shared must sit beside the project root")
    return {"pool": np.load(GOLDEN / "pool.npy"), "subsets": json.loads((GOLDEN / "subsets.json").read_text()),
            "expected": json.loads((GOLDEN / "expected.json").read_text())}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 32-wide Llama (SmolLM2's architecture) with SmolLM2's real tokenizer and chat template."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_smollm2"), hidden_size=32, intermediate_size=64, heads=4,
                           kv_heads=2)
