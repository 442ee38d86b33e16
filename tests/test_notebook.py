"""The figures notebook executes end to end against a fixed runs.csv."""

from __future__ import annotations

import os

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT


@pytest.mark.slow
def test_notebook_executes(tmp_path):
    runs = pd.DataFrame({"subset": ["random", "random", "duplicate_25", "kcenter", "novelselect"],
                         "selector": ["random", "random", "duplicate", "kcenter", "novelselect"],
                         "seed": [0, 1, 0, 0, 0], "novelsum": [0.55, 0.57, 0.31, 0.6, 0.68],
                         "vendi": [9.0, 9.5, 3.1, 10.2, 11.0], "performance": [-1.983, -1.980, -1.989, -1.982, -1.983],
                         "schema": 1})
    runs.to_csv(tmp_path / "runs.csv", index=False)
    nb = nbformat.read(ROOT / "notebooks" / "reproduce_figures.ipynb", as_version=4)
    os.environ["DIVBENCH_RUNS"] = str(tmp_path / "runs.csv")
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        del os.environ["DIVBENCH_RUNS"]
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "| all | novelsum |" in outputs and "0.97 (paper" in outputs and "pearson_p_perm" in outputs
    images = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "display_data"
              and "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the NovelSum scatter with its fit band, and the forest plot
    assert any("ax.fill_between" in c.source for c in nb.cells) and any("figures.forest" in c.source for c in nb.cells)
