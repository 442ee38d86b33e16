"""The stage abstraction: what a pipeline stage is, and the typed artifacts that own their file names.

A :class:`Stage` names the stages it consumes, its artifact class and how its own part of the cache key is read
from the config; :mod:`experiments.engine.pipeline` lists the study's stages as a small DAG of them, which ``dry_run``,
``stop_after`` and the key builder walk. An artifact class is the one place its files are named: a stage writes
into the store's temporary folder and reads the finished folder through it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from divcore.io import read_jsonl, write_jsonl


class PoolRows:
    """The sampled, normalised pool."""

    FILE = "pool.jsonl"

    @classmethod
    def write(cls, folder: Path, convs: list[dict]) -> None:
        write_jsonl(folder / cls.FILE, convs)

    @classmethod
    def read(cls, folder: Path) -> list[dict]:
        return read_jsonl(folder / cls.FILE)


class Embeddings:
    """One row per pool conversation (``experiments.embedding.backends`` writes the matrix under this name chunk
    by chunk)."""

    FILE = "embeddings.npy"

    @classmethod
    def write(cls, folder: Path, vectors: np.ndarray) -> None:
        np.save(folder / cls.FILE, vectors)

    @classmethod
    def read(cls, folder: Path) -> np.ndarray:
        return np.load(folder / cls.FILE)


class Subset:
    """A selection: pool row indices in pick order, and who picked them how."""

    INDICES, PROVENANCE = "indices.json", "provenance.json"

    @classmethod
    def write(cls, folder: Path, indices: list[int], provenance: dict[str, Any]) -> None:
        (folder / cls.INDICES).write_text(json.dumps(indices))
        (folder / cls.PROVENANCE).write_text(json.dumps(provenance, indent=2))

    @classmethod
    def read(cls, folder: Path) -> list[int]:
        return json.loads((folder / cls.INDICES).read_text())


class JsonRow:
    """A row of named values in one JSON file, ``FILE``, named by the subclass."""

    FILE: str

    @classmethod
    def write(cls, folder: Path, row: dict[str, Any]) -> None:
        (folder / cls.FILE).write_text(json.dumps(row, indent=2))

    @classmethod
    def read(cls, folder: Path) -> dict[str, Any]:
        return json.loads((folder / cls.FILE).read_text())


class MetricsRow(JsonRow):
    """A subset's diversity metrics, one column each."""

    FILE = "metrics.json"


class FinetuneOutput:
    """The fine-tuned adapter or model (with the trainer's ``log_history.json``, finetune.sft) and the training
    statistics (world size, effective batch, ...)."""

    MODEL, TRAIN = "model", "train.json"

    @classmethod
    def write_stats(cls, folder: Path, stats: dict[str, Any]) -> None:
        (folder / cls.TRAIN).write_text(json.dumps(stats, indent=2))

    @classmethod
    def model(cls, folder: Path) -> Path:
        return folder / cls.MODEL


class Generations:
    """What the evaluators' generate halves wrote: each evaluator names its own files (eval.benchmarks)."""


class EvalRow(JsonRow):
    """A model's evaluation row (the evaluators' columns); judged evaluators put their verdicts beside it."""

    FILE = "eval.json"


@dataclass(frozen=True)
class KeyInputs:
    """What a stage's key is read from: the config without runtime knobs (``result``, experiments.engine.keys), the
    same with local files by content (``keyed``, experiments.engine.fingerprint), and the subset entry
    (None: study level)."""

    result: dict[str, Any]
    keyed: dict[str, Any]
    entry: dict[str, Any] | None


@dataclass(frozen=True)
class Stage:
    """A node of the pipeline DAG. Its cache key is ``{consumed stage: its key, ...} | key(inputs)``; ``key``
    returns None when the run has no such stage (divbench-select has no fine-tuning, a study-level key no
    subset stages), and then neither do the stages that consume it."""

    name: str
    consumes: tuple[str, ...]
    artifact: type
    key: Callable[[KeyInputs], dict[str, Any] | None]
    per_subset: bool = True  # False: built once per study (pool level), shared by every subset


def check_dag(dag: tuple[Stage, ...]) -> tuple[Stage, ...]:
    """``dag`` when every stage consumes only stages listed before it (the order runs and plans follow)."""
    seen: set[str] = set()
    for stage in dag:
        missing = set(stage.consumes) - seen
        if missing or stage.name in seen:
            raise ValueError(f"stage {stage.name!r}: consumes {sorted(missing)} not listed before it, or listed twice")
        seen.add(stage.name)
    return dag


def stage_keys(dag: tuple[Stage, ...], inputs: KeyInputs) -> dict[str, dict[str, Any]]:
    """Each stage's key, in DAG order: the keys of what it consumes plus its own config part."""
    specs: dict[str, dict[str, Any]] = {}
    for stage in dag:
        if all(c in specs for c in stage.consumes) and (own := stage.key(inputs)) is not None:
            specs[stage.name] = {c: specs[c] for c in stage.consumes} | own
    return specs
