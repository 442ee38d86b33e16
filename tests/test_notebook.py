"""The figures notebook is committed with its outputs, they reproduce the committed paper table, and a fresh
execution gives the same outputs (else: ``bash scripts/refresh-notebook.sh``)."""

from __future__ import annotations

import base64
import copy
import io
import re

import nbformat
import pytest
from matplotlib.figure import Figure

from tests.conftest import ROOT
from tests.helpers.notebook import NOTEBOOK, REFRESH, comparable, differences, execute, png_size

ABSOLUTE_PATH = re.compile(r"(?<![\w.~])(/(home|root|tmp|work|Users|var|private|mnt|opt)/|[A-Z]:\\\\)")


@pytest.fixture(scope="module")
def committed() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _png(width_in: float, height_in: float) -> str:
    buf = io.BytesIO()
    Figure(figsize=(width_in, height_in), dpi=100).savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode()


def test_committed_notebook_has_its_outputs(committed):
    """Every code cell ran once, in order, without an error or a warning on stderr, and the outputs show the
    paper table exactly as results/mini/paper_table.md has it, reproduced, and the four figures."""
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), f"not executed in order: {REFRESH}"
    outputs = _outputs(committed)
    assert not [o for o in outputs if o.output_type == "error" or o.get("name") == "stderr"]
    markdown = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    stale = f"the committed outputs do not match results/mini/: refresh them with `{REFRESH}`"
    assert (ROOT / "results" / "mini" / "paper_table.md").read_text() in markdown, stale
    text = "".join(o.get("text", "") for o in outputs)
    assert text.count("reproduced exactly") == 2 and "DIFFERS" not in text, stale
    assert text.count("same pixel size as results/mini/") == 4 and ": False" not in text, stale
    images = [png_size(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4 and all(w > 400 and h > 300 for w, h in images)


def test_committed_notebook_is_machine_independent(committed):
    """No absolute path, timing or interpreter patch level in what is committed: a refresh elsewhere changes
    only what the computation changes."""
    texts = [str(v) for o in _outputs(committed) for k, v in {**o.get("data", {}), "text": o.get("text", "")}.items()
             if k != "image/png"]
    assert not [t for t in texts if ABSOLUTE_PATH.search(t)]
    assert not any(ABSOLUTE_PATH.search(c.source) for c in committed.cells)
    assert not [c for c in committed.cells if "execution" in c.metadata]
    assert "version" not in committed.metadata.get("language_info", {})


def test_differences_name_each_changed_output(committed):
    """The staleness check finds a changed number, a changed image size and a missing output, and ignores a
    re-encoded image of the same size."""
    assert differences(committed, copy.deepcopy(committed)) == []
    changed = copy.deepcopy(committed)
    code = [c for c in changed.cells if c.cell_type == "code"]
    markdown_cell = next(i for i, c in enumerate(code) if any("text/markdown" in o.get("data", {}) for o in c.outputs))
    out = next(o for o in code[markdown_cell].outputs if "text/markdown" in o.get("data", {}))
    out.data["text/markdown"] = out.data["text/markdown"].replace("0.695", "0.701", 1)
    image_cell, image = next((i, o) for i, c in enumerate(code) for o in c.outputs if "image/png" in o.get("data", {}))
    width, height = png_size(image.data["image/png"])
    image.data["image/png"] = _png(width / 100 * 0.8, height / 100)
    code[-1].outputs = []
    found = differences(committed, changed)
    assert len(found) == 3, found
    assert f"code cell {markdown_cell + 1}, output 1 (text/markdown)" in found[0] and "+| NovelSum" in found[0]
    assert f"code cell {image_cell + 1}" in found[1] and f"{width}x{height} px committed" in found[1]
    assert f"code cell {len(code)}: 1 outputs committed, 0 now" == found[2]
    same_size = copy.deepcopy(committed)
    img = next(o for o in _outputs(same_size) if "image/png" in o.get("data", {}))
    img.data["image/png"] = _png(width / 100, height / 100)  # other pixels, same size
    assert differences(committed, same_size) == []
    assert len(comparable(committed)) == len(code)


@pytest.mark.slow
def test_notebook_outputs_are_fresh(committed, monkeypatch):
    """Re-executing the notebook (a copy; the committed file is not touched) gives the committed outputs."""
    monkeypatch.delenv("DIVBENCH_RESULTS", raising=False)
    fresh = execute(copy.deepcopy(committed))
    found = differences(committed, fresh)
    assert not found, ("notebooks/reproduce_figures.ipynb's committed outputs are stale; refresh them with "
                       f"`{REFRESH}` and commit the notebook. Differences:\n" + "\n".join(found))
