"""The study design stage: every subset of the plan selected together, so that study-level constraints hold.

Token matching (``selection.match_tokens``) brings each subset's supervised tokens near the study median of the
unmatched totals, and the overlap cap (``selection.max_overlap``) bounds every pair's Jaccard overlap; both need all
subsets (:mod:`selection.design`). This stage selects every entry of the plan (``selection.only`` or not, so that
chunked runs share one design), applies both in plan order and caches the result once per study: each subset stage
then reads its rows from it. Without either key the stage does not exist and subsets are selected one by one as
before (their cache keys unchanged).

The artifact (:class:`StudyDesign`): ``design.json`` (per entry: label, seed, indices, provenance; the token target),
``overlap.csv`` (pairwise Jaccard, copied beside the results) and ``supervised_tokens.npy`` (one count per pool row).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import selection
from divcore.io import atomic_write
from experiments.data.tokens import supervised_tokens
from selection.design import DesignSpec, design_subsets, overlap_matrix, select_in_fraction

log = logging.getLogger(__name__)

SUBSET_FIELDS = ("selector", "params", "seed", "size")


def subset_fields(entry: dict[str, Any]) -> dict[str, Any]:
    """What defines an entry's selection: selector, parameters, seed, size, and its pool fraction when set."""
    out = {f: entry[f] for f in SUBSET_FIELDS}
    return out | ({"pool_fraction": entry["pool_fraction"]} if entry.get("pool_fraction") is not None else {})


def design_spec(sel_cfg: dict[str, Any]) -> DesignSpec:
    return DesignSpec.from_config(sel_cfg, int(sel_cfg["size"]))


def design_key(sel_cfg: dict[str, Any], plan: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The design stage's own key part (None when the study sets neither ``match_tokens`` nor ``max_overlap``):
    the whole plan's subset definitions and the two settings."""
    if not design_spec(sel_cfg).active:
        return None
    return {"design": {"plan": [subset_fields(e) | {"label": e["label"]} for e in plan],
                       "match_tokens": sel_cfg.get("match_tokens"), "max_overlap": sel_cfg.get("max_overlap")}}


def entry_label(entry: dict[str, Any]) -> str:
    return f"{entry['label']}-s{entry['seed']}"


def select_entry(pool: selection.PoolInputs, entry: dict[str, Any]) -> selection.Selection:
    """One plan entry's selection, on its seeded pool fraction when it names one."""
    if entry.get("pool_fraction") is not None:
        return select_in_fraction(entry["selector"], pool, entry["size"], entry["seed"], entry["pool_fraction"],
                                  **entry["params"])
    return selection.select(entry["selector"], pool, entry["size"], entry["seed"], **entry["params"])


class StudyDesign:
    """The design artifact (module docstring): one artifact-class vocabulary (``files``, ``write``, ``read``)."""

    FILE, OVERLAP, TOKENS = "design.json", "overlap.csv", "supervised_tokens.npy"
    files = (FILE, OVERLAP)

    def __init__(self, subsets: dict[tuple[str, int], tuple[list[int], dict[str, Any]]], target: float | None,
                 overlap: pd.DataFrame, tokens: np.ndarray | None = None) -> None:
        self.subsets, self.target, self.overlap, self.tokens = subsets, target, overlap, tokens

    def rows(self, entry: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
        return self.subsets[entry["label"], int(entry["seed"])]

    @classmethod
    def write(cls, folder: Path, design: StudyDesign) -> None:
        entries = [{"label": label, "seed": seed, "indices": idx, "provenance": prov}
                   for (label, seed), (idx, prov) in design.subsets.items()]
        atomic_write(folder / cls.FILE, json.dumps({"token_target": design.target, "subsets": entries}, indent=1,
                                                   default=_jsonable))
        atomic_write(folder / cls.OVERLAP, design.overlap.to_csv(float_format="%.4f"))
        if design.tokens is not None:
            np.save(folder / cls.TOKENS, design.tokens)

    @classmethod
    def read(cls, folder: Path) -> StudyDesign:
        data = json.loads((folder / cls.FILE).read_text())
        subsets = {(e["label"], int(e["seed"])): (e["indices"], e["provenance"]) for e in data["subsets"]}
        tokens = np.load(folder / cls.TOKENS) if (folder / cls.TOKENS).exists() else None
        return cls(subsets, data["token_target"], pd.read_csv(folder / cls.OVERLAP, index_col=0), tokens)


def make_design(plan: list[dict[str, Any]], sel_cfg: dict[str, Any], pool: selection.PoolInputs,
                convs: list[dict], cache_dir: str) -> StudyDesign:
    """Select every plan entry and apply the design (overlap cap, token matching)."""
    spec = design_spec(sel_cfg)
    tokens = None
    match = sel_cfg.get("match_tokens") or None
    if match is not None:
        tokens = supervised_tokens(convs, match["model"], int(match["max_length"]), cache_dir,
                                   match.get("chat_template"))
    raw = [select_entry(pool, e) for e in plan]
    done, target = design_subsets(raw, spec, pool.size, tokens, [e["seed"] for e in plan])
    overlap = overlap_matrix({entry_label(e): s.indices for e, s in zip(plan, done, strict=True)})
    _log_design(done, target, overlap)
    return StudyDesign({(e["label"], int(e["seed"])): (s.indices, s.provenance) for e, s in zip(plan, done,
                                                                                                   strict=True)},
                       target, overlap, tokens)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _log_design(done: list[selection.Selection], target: float | None, overlap: pd.DataFrame) -> None:
    off = overlap.to_numpy()[~np.eye(len(overlap), dtype=bool)]
    log.info("study design: %d subsets, max pairwise Jaccard %.3f", len(done), off.max() if len(off) else 0.0)
    if target is not None:
        unmatched = [s.provenance.get("selector") for s in done if not s.provenance["token_matched"]]
        log.info("token target %.0f supervised tokens; %d of %d subsets matched%s", target,
                 len(done) - len(unmatched), len(done),
                 f" (covariate for: {', '.join(map(str, unmatched))})" if unmatched else "")
