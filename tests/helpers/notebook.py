"""Execute notebooks/reproduce_figures.ipynb and compare its outputs with the committed ones.

The notebook is committed with its outputs (so GitHub shows the table and figures); a test re-executes it and
fails when the outputs it gets differ from the committed ones. Refresh them after a change to the notebook, the
report code or the committed results with::

    bash scripts/refresh-notebook.sh          # = python3 -m tests.helpers.notebook --write

Text outputs (streams, text/plain, text/markdown, text/html, errors) are compared exactly; a PNG is compared by its
presence and pixel size (within ``SIZE_TOLERANCE``), never by its bytes, which differ with the matplotlib build.
"""

from __future__ import annotations

import argparse
import difflib
import struct
import sys
from base64 import b64decode
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "reproduce_figures.ipynb"
REFRESH = "bash scripts/refresh-notebook.sh"
TEXT_TYPES = ("text/plain", "text/markdown", "text/html")
SIZE_TOLERANCE = 0.05  # a figure's width and height may differ by 5% (fonts, matplotlib versions)
TIMEOUT_S = 600


def execute(nb: nbformat.NotebookNode, timeout: int = TIMEOUT_S) -> nbformat.NotebookNode:
    """Run every cell in place in a fresh kernel whose working directory is notebooks/ (as Jupyter's would be);
    no per-cell timing in the metadata, so a refreshed notebook differs from the last only where outputs do."""
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


def png_size(data: str) -> tuple[int, int]:
    """(width, height) of a base64 PNG, read from its IHDR header."""
    raw = b64decode(data)
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">II", raw[16:24])


def comparable(nb: nbformat.NotebookNode) -> list[list[dict]]:
    """Per code cell, its outputs reduced to what must not change: text verbatim, images as their pixel size."""
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            kind = out["output_type"]
            if kind == "stream":
                outputs.append({"stream": out["name"], "text": out["text"]})
            elif kind == "error":
                outputs.append({"error": out["ename"], "text": out["evalue"]})
            else:
                data = out.get("data", {})
                item = {t: data[t] if isinstance(data[t], str) else "".join(data[t]) for t in TEXT_TYPES if t in data}
                if "image/png" in data:
                    item["image/png"] = png_size(data["image/png"])
                outputs.append(item)
        cells.append(outputs)
    return cells


def _same_size(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return all(abs(x - y) <= SIZE_TOLERANCE * max(x, y) for x, y in zip(a, b, strict=True))


def differences(committed: nbformat.NotebookNode, fresh: nbformat.NotebookNode) -> list[str]:
    """What differs between two executions' outputs, one line (or unified diff) per difference; empty if none."""
    old, new = comparable(committed), comparable(fresh)
    if len(old) != len(new):
        return [f"{len(old)} code cells committed, {len(new)} executed"]
    found = []
    for i, (a, b) in enumerate(zip(old, new, strict=True), start=1):
        if len(a) != len(b):
            found.append(f"code cell {i}: {len(a)} outputs committed, {len(b)} now")
            continue
        for j, (x, y) in enumerate(zip(a, b, strict=True), start=1):
            where = f"code cell {i}, output {j}"
            if x.keys() != y.keys():
                found.append(f"{where}: committed has {sorted(x)}, now {sorted(y)}")
                continue
            for key in x:
                if key == "image/png":
                    if not _same_size(x[key], y[key]):
                        found.append(f"{where}: image {x[key][0]}x{x[key][1]} px committed, now "
                                     f"{y[key][0]}x{y[key][1]}")
                elif x[key] != y[key]:
                    diff = difflib.unified_diff(str(x[key]).splitlines(), str(y[key]).splitlines(), "committed",
                                                "executed", n=1, lineterm="")
                    found.append(f"{where} ({key}):\n" + "\n".join(list(diff)[:40]))
    return found


def refresh(path: Path = NOTEBOOK) -> nbformat.NotebookNode:
    """Re-execute the notebook and write it back with its new outputs."""
    nb = execute(nbformat.read(path, as_version=4))
    nb.metadata.get("language_info", {}).pop("version", None)  # the Python patch level of whoever refreshed it
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Execute notebooks/reproduce_figures.ipynb; --write stores its "
                                                 "outputs, otherwise compare them with the committed ones.")
    parser.add_argument("--write", action="store_true", help="write the executed notebook back (refresh)")
    args = parser.parse_args(argv)
    if args.write:
        refresh()
        print(f"refreshed {NOTEBOOK.relative_to(ROOT)}: review with git diff, then commit it")
        return 0
    committed = nbformat.read(NOTEBOOK, as_version=4)
    found = differences(committed, execute(nbformat.read(NOTEBOOK, as_version=4)))
    print("\n".join(found) if found else "the committed outputs are up to date")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
