"""divbench-measure on the golden embeddings, in the authors' on-disk formats."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from divcore.errors import InputError
from experiments.data.embedding_sets import load_matrix
from experiments.report.measure import measure
from tests.helpers import compose


def test_measure_reproduces_golden_from_authors_format(tmp_path, golden):
    pool = golden["pool"]
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for i, chunk in enumerate(np.array_split(pool, 3)):  # numbered JSON files, concatenated in numeric order
        (ref_dir / f"{i}.json").write_text(json.dumps(chunk.tolist()))
    sub_dir = tmp_path / "subsets"
    sub_dir.mkdir()
    for name, idx in golden["subsets"].items():
        np.save(sub_dir / f"{name}.npy", pool[idx])
    np.testing.assert_array_equal(load_matrix(ref_dir), pool)
    cfg = compose("measure", overrides=[f"subsets={sub_dir}", f"reference={ref_dir}", f"out={tmp_path}/out",
                                        "metrics=default", "metrics.compute=[{name: novelsum_grid}, "
                                        "{name: distsum_cosine}]"], resolve=False)
    from omegaconf import OmegaConf

    measure(OmegaConf.to_container(cfg, resolve=True))
    table = pd.read_csv(tmp_path / "out" / "measure.csv").set_index("subset")
    grid = {f"novelsum_grid[{key}]" for key in next(iter(golden["expected"]["novelsum"].values()))}
    assert len(grid) == 18 and grid <= set(table.columns) and "distsum_cosine" in table.columns
    for name, expected in golden["expected"]["novelsum"].items():
        for key, value in expected.items():
            assert table.loc[name, f"novelsum_grid[{key}]"] == pytest.approx(value, rel=1e-5)
        assert table.loc[name, "distsum_cosine"] == pytest.approx(golden["expected"]["cos_distance"][name], rel=1e-5)


def test_bad_embedding_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_matrix(tmp_path / "none.npy")
    (tmp_path / "bad.json").write_text("[[1, 2], [3]]")
    with pytest.raises(InputError, match="equal-length"):
        load_matrix(tmp_path / "bad.json")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(InputError, match="unsupported"):
        load_matrix(tmp_path / "x.txt")
