"""The stage abstraction: what a pipeline stage is, and the artifacts that own their files.

A :class:`Stage` carries every fact about itself: its name, the stages it consumes (their keys enter its key, their
outputs are its inputs) and those it only reads, its artifact class, its own part of the cache key, its build
function, its cost class, whether it needs a GPU (and for how long), whether it runs once per study or once per
subset. :mod:`experiments.engine.dag` declares the study's stages; :func:`experiments.engine.pipeline.run` runs any
part of them, and the dry run, ``stop_after`` and the key builder walk the same declarations.

An artifact class is the one vocabulary of stored outputs: ``files`` (what it holds, checked after every build),
``write(folder, value)`` (the value a build returned, into the store's temporary folder) and ``read(folder)`` (what
the stages after it receive).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from divcore.io import read_jsonl, write_jsonl
from metrics.signals import PoolSignals

if TYPE_CHECKING:
    from experiments.engine.store import ArtifactStore

CHEAP, COSTLY = "cheap", "costly"  # a damaged artifact: rebuilt with a warning / refused (GPU hours, paid calls)


class PoolRows:
    """The sampled, normalised pool, and the conversations held out of it (``pool.holdout``: the ``heldout``
    attribute of what is written, :class:`PoolSample`) when there are any."""

    FILE, HELDOUT = "pool.jsonl", "heldout.jsonl"
    files = (FILE,)

    @classmethod
    def write(cls, folder: Path, convs: list[dict]) -> None:
        write_jsonl(folder / cls.FILE, convs)
        if getattr(convs, "heldout", None):
            write_jsonl(folder / cls.HELDOUT, convs.heldout)  # type: ignore[attr-defined]

    @classmethod
    def read(cls, folder: Path) -> list[dict]:
        return read_jsonl(folder / cls.FILE)


class PoolSample(list):
    """The pool's conversations (a list) carrying the held-out ones beside them (``heldout``)."""

    def __init__(self, convs: list[dict], heldout: list[dict]) -> None:
        super().__init__(convs)
        self.heldout = heldout


class Embeddings:
    """One row per pool conversation. ``write`` takes the vectors, or a finished ``.npy`` file (moved in, never
    copied: a pool's embeddings can be many GB; ``experiments.embedding.backends`` writes one chunk by chunk)."""

    FILE = "embeddings.npy"
    files = (FILE,)

    @classmethod
    def write(cls, folder: Path, vectors: np.ndarray | Path) -> None:
        if isinstance(vectors, Path):
            if vectors != folder / cls.FILE:
                shutil.move(str(vectors), folder / cls.FILE)
            return
        np.save(folder / cls.FILE, vectors)

    @classmethod
    def read(cls, folder: Path) -> np.ndarray:
        return np.load(folder / cls.FILE)


class Signals:
    """The pool signals (:class:`metrics.signals.PoolSignals`, which saves and loads itself)."""

    files = ("signals.json", "signals.npz")

    @classmethod
    def write(cls, folder: Path, signals: PoolSignals) -> None:
        signals.save(folder)

    @classmethod
    def read(cls, folder: Path) -> PoolSignals:
        return PoolSignals.load(folder)


class Subset:
    """A selection (``selection.Selection``): pool row indices in pick order, and who picked them how.
    ``read`` gives the indices."""

    INDICES, PROVENANCE = "indices.json", "provenance.json"
    files = (INDICES, PROVENANCE)

    @classmethod
    def write(cls, folder: Path, picked: Any) -> None:
        (folder / cls.INDICES).write_text(json.dumps(picked.indices))
        (folder / cls.PROVENANCE).write_text(json.dumps(picked.provenance, indent=2))

    @classmethod
    def read(cls, folder: Path) -> list[int]:
        return json.loads((folder / cls.INDICES).read_text())


class JsonRow:
    """A row of named values in one JSON file, ``FILE``, named by the subclass."""

    FILE: str
    files: tuple[str, ...]

    def __init_subclass__(cls) -> None:
        cls.files = (cls.FILE,)

    @classmethod
    def write(cls, folder: Path, row: dict[str, Any]) -> None:
        (folder / cls.FILE).write_text(json.dumps(row, indent=2))

    @classmethod
    def read(cls, folder: Path) -> dict[str, Any]:
        return json.loads((folder / cls.FILE).read_text())


class MetricsRow(JsonRow):
    """A subset's diversity metrics, one column each."""

    FILE = "metrics.json"


@dataclass(frozen=True)
class Trained:
    """What a fine-tuning produced: the adapter or model folder (with the trainer's ``log_history.json``,
    finetune.sft) and the training statistics (world size, effective batch, ...)."""

    model: Path
    stats: dict[str, Any]


class FinetuneOutput:
    """The fine-tuned adapter or model and ``train.json``. ``write`` moves a model trained elsewhere (a
    distributed training's shared folder) into place; ``read`` gives the model folder."""

    MODEL, TRAIN = "model", "train.json"
    files = (MODEL, TRAIN)

    @classmethod
    def write(cls, folder: Path, trained: Trained) -> None:
        if trained.model != folder / cls.MODEL:
            shutil.move(str(trained.model), folder / cls.MODEL)
        (folder / cls.TRAIN).write_text(json.dumps(trained.stats, indent=2))

    @classmethod
    def read(cls, folder: Path) -> Path:
        return folder / cls.MODEL


class Generations:
    """What the evaluators' generate halves wrote into the folder (each evaluator names its own files,
    eval.benchmarks); ``read`` gives the folder."""

    files: tuple[str, ...] = ()

    @classmethod
    def write(cls, folder: Path, value: None) -> None:
        """Nothing to add: the build wrote the evaluators' files itself."""

    @classmethod
    def read(cls, folder: Path) -> Path:
        return folder


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


@dataclass
class Call:
    """One build of one stage: what its build function (and its ``prepare`` / ``finish``) reads.

    ``inputs``: the outputs of the stages it consumes or reads (their artifact classes' ``read``); ``out``: the
    store's temporary folder the artifact is written into (None for a collective build, which writes into its own
    work folder); ``wandb``: the stage's W&B run or None; ``memo``: shared by every call of one engine run (what is
    worth computing once, e.g. the resolved base model); ``prepared``: what ``prepare`` returned."""

    stage: Stage
    cfg: dict[str, Any]
    entry: dict[str, Any] | None
    specs: dict[str, dict]
    inputs: dict[str, Any]
    store: ArtifactStore
    memo: dict[str, Any]
    out: Path | None = None
    wandb: Any = None
    prepared: Any = None
    collective: bool = False

    @property
    def spec(self) -> dict:
        return self.specs[self.stage.name]

    @property
    def folder(self) -> Path:
        """Where the finished artifact lives (or will)."""
        return self.store.path(self.stage.name, self.spec)


@dataclass(frozen=True)
class Checked:
    """What a stage's early check reads: the config, the run's subset entries, the study-level keys and the
    output of the stage the check waits for (``Check.after``)."""

    cfg: dict[str, Any]
    entries: list[dict[str, Any]]
    specs: dict[str, dict]
    value: Any


@dataclass(frozen=True)
class Check:
    """What a stage needs of an earlier stage's output (e.g. enough pool rows for a k-means), checked as soon as
    that output is there, for every stage the config defines, so that a need that cannot be met fails before the
    costly stages between them run."""

    after: str
    fn: Callable[[Checked], None]


@dataclass(frozen=True)
class Stage:
    """A node of the pipeline DAG. Its cache key is ``{consumed stage: its key, ...} | key(inputs)``; ``key``
    returns None when the run has no such stage (divbench-select has no fine-tuning, a study-level key no
    subset stages), and then neither do the stages that consume it.

    ``build(call)`` computes what ``artifact.write`` stores, under the artifact's lock; ``prepare(call)``, when
    given, runs before the lock (reading and checking outside inputs, so a bad input leaves nothing in the store);
    ``finish(call, value)`` runs after the output is there, built or cached (warnings, clean-up). ``reads``: stages
    whose outputs the build uses without them entering its key (the pool signals, a cache of what the build would
    compute anyway). ``config``: the config group its key reads (its runtime knobs never enter a key,
    experiments.engine.keys). ``gpu_hours(cfg)``: the stage needs a GPU, for about that long (the dry run's plan).
    ``collective``: in a distributed launch every process builds it together, outside the lock, and the main
    process stores the result."""

    name: str
    consumes: tuple[str, ...]
    artifact: type
    key: Callable[[KeyInputs], dict[str, Any] | None]
    build: Callable[[Call], Any]
    cost: str = COSTLY
    per_subset: bool = True  # False: built once per study (pool level), shared by every subset
    reads: tuple[str, ...] = ()
    config: str | None = None
    gpu_hours: Callable[[dict[str, Any]], float] | None = None
    judged: bool = False  # calls the judge: the plan counts its calls and tokens
    collective: bool = False
    prepare: Callable[[Call], Any] | None = None
    finish: Callable[[Call, Any], None] | None = None
    checks: tuple[Check, ...] = ()

    def __post_init__(self) -> None:
        if self.cost not in (CHEAP, COSTLY):
            raise ValueError(f"stage {self.name!r}: cost must be {CHEAP!r} or {COSTLY!r}, got {self.cost!r}")
        if not all(callable(getattr(self.artifact, a, None)) for a in ("write", "read")) or \
                not isinstance(getattr(self.artifact, "files", None), tuple):
            raise ValueError(f"stage {self.name!r}: artifact {self.artifact.__name__} needs write, read and files")

    @property
    def cheap(self) -> bool:
        return self.cost == CHEAP

    @property
    def gpu(self) -> bool:
        return self.gpu_hours is not None


def check_dag(dag: tuple[Stage, ...]) -> tuple[Stage, ...]:
    """``dag`` when every stage consumes, reads and checks only stages listed before it (the order runs and plans
    follow), and no shared stage depends on a per-subset one."""
    seen: dict[str, Stage] = {}
    for stage in dag:
        used = set(stage.consumes) | set(stage.reads) | {c.after for c in stage.checks}
        missing = used - set(seen)
        if missing or stage.name in seen:
            raise ValueError(f"stage {stage.name!r}: consumes {sorted(missing)} not listed before it, or listed twice")
        if not stage.per_subset and any(seen[u].per_subset for u in used if u in seen):
            raise ValueError(f"stage {stage.name!r}: a shared stage cannot use a per-subset one")
        seen[stage.name] = stage
    return dag


def stage_keys(dag: tuple[Stage, ...], inputs: KeyInputs) -> dict[str, dict[str, Any]]:
    """Each stage's key, in DAG order: the keys of what it consumes plus its own config part."""
    specs: dict[str, dict[str, Any]] = {}
    for stage in dag:
        if all(c in specs for c in stage.consumes) and (own := stage.key(inputs)) is not None:
            specs[stage.name] = {c: specs[c] for c in stage.consumes} | own
    return specs


def stages_until(dag: tuple[Stage, ...], until: str | None) -> tuple[Stage, ...]:
    """The stages a run up to ``until`` (inclusive, None: all) builds: a prefix of the DAG's order."""
    names = [s.name for s in dag]
    if until is None:
        return dag
    if until not in names:
        raise ValueError(f"no stage {until!r} in {names}")
    return dag[:names.index(until) + 1]
