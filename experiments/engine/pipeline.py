"""The engine that runs the study DAG (:mod:`experiments.engine.dag`), and the study built on it.

:func:`run` runs any part of the DAG: the study-level stages and, for each subset entry, the per-subset stages, up
to a stage. It is the one place where a stage is timed, locked, verified, tracked in W&B and logged as built or
reused: every command that builds artifacts calls it (``divbench-study``, ``-finetune``, ``-select``, ``-embed``),
and with ``dry_run=true`` it walks the same stages and entries to write the plan instead of building anything.
Each stage reads its inputs from, and writes its output (its artifact class) to, the artifact store
(:mod:`experiments.engine.store`), keyed by the stage's resolved config plus the keys of what it consumed; a
finished artifact is never recomputed.

:func:`run_study` is the study: the selection plan, the engine up to ``stop_after`` (or to the end), then the
runs table and the report.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from divcore.errors import InputError
from divcore.io import atomic_write, check_writable, remove_stale_temps
from divcore.ownership import check_output_dir, owned_files, read_manifest, write_manifest
from eval.evaluators import evaluation
from experiments.data.pools import check_pool_config
from experiments.embedding.backends import check_embed_config
from experiments.engine.dag import (
    DAG,
    STAGES,
    data_column,
    finetune_config,
    replicate_entries,
    replicate_name,
    stage_specs,
    subset_plan,
)
from experiments.engine.design import StudyDesign
from experiments.engine.environment import check_environment, environment_problems
from experiments.engine.plan import plan_table, plan_totals
from experiments.engine.stages import Call, Checked, Stage, stages_until
from experiments.engine.store import LOCK_TIMEOUT_S, ArtifactStore
from experiments.engine.tracking import check_logger_config, wandb_run
from experiments.report.tables import (
    RESULTS_FILES,
    RUNS_SCHEMA,
    aggregate_replicates,
    check_out_dir,
    metric_columns,
    write_report,
)
from finetune.models import resolve_model
from finetune.sft import check_finetune_config
from metrics.registry import check_config

log = logging.getLogger(__name__)
PLAN_CSV = "plan.csv"  # a dry run's plan in results_dir, carried over by the report that follows it

Timings = dict[str, dict[str, float]]


@contextmanager
def timed(stage: str, timings: Timings) -> Iterator[None]:
    """Accumulate wall time per stage (cache reads included) and record the process's peak resident memory."""
    start = time.perf_counter()
    try:
        yield
    finally:
        entry = timings.setdefault(stage, {"wall_s": 0.0, "peak_rss_gib": 0.0})
        entry["wall_s"] += time.perf_counter() - start
        entry["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def count(stage: str, timings: Timings, built_s: float | None) -> None:
    """Count a stage's run: ``executed`` / ``executed_wall_s`` when it did its work (the planner's measured cost,
    ``timings.json``), ``reused`` when it was a cache hit (never an execution of 0 s)."""
    entry = timings.setdefault(stage, {"wall_s": 0.0, "peak_rss_gib": 0.0})
    if built_s is None:
        entry["reused"] = entry.get("reused", 0) + 1
        return
    entry["executed"] = entry.get("executed", 0) + 1
    entry["executed_wall_s"] = entry.get("executed_wall_s", 0.0) + built_s


class Processes:
    """The processes of a distributed launch (``accelerate launch``, torchrun, a SLURM job of several tasks), or
    this one process. Stages are built by the main process first (the others then read them from the store); a
    collective stage is built by all of them together."""

    def __init__(self, cpu: bool = False) -> None:
        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            # On the CPU (finetune.args.use_cpu) accelerate forms the gloo group only when told: otherwise each
            # process sees itself alone, builds the same artifact under its lock and the training's collectives
            # wait forever for the process that waits for that lock.
            self.state = PartialState(cpu=cpu)

    @property
    def distributed(self) -> bool:
        return self.state is not None and self.state.num_processes > 1

    @property
    def main(self) -> bool:
        return self.state is None or self.state.is_main_process

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def main_first(self) -> Any:
        return self.state.main_process_first() if self.state is not None else nullcontext()


@dataclass
class Outcome:
    """What :func:`run` did: each study-level stage's output (``shared``), each entry's outputs (the shared ones
    included, in ``entries``' order), the per-stage timings, the artifacts it built (``(where, stage)``; the rest
    were read from the cache), and, for ``dry_run=true``, the plan instead (nothing built)."""

    shared: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    timings: Timings = field(default_factory=dict)
    built: list[tuple[str, str]] = field(default_factory=list)
    plan: pd.DataFrame | None = None


class Engine:
    """One run of some stages over some entries: the store, the timings, what was built, the environment check
    (once, before the first artifact this run builds) and the values every build may share (``memo``)."""

    def __init__(self, cfg: dict[str, Any], until: str | None, outcome: Outcome) -> None:
        self.cfg, self.until, self.outcome = cfg, until, outcome
        self.store = ArtifactStore(cfg["cache_dir"], cfg.get("cache_lock_timeout_s", LOCK_TIMEOUT_S))
        self.procs = Processes(cpu=bool(((cfg.get("finetune") or {}).get("args") or {}).get("use_cpu")))
        self.logger = (cfg.get("logger") or {}) if self.procs.main else {"enabled": False}
        self.memo: dict[str, Any] = {}
        self._environment_checked = False
        self.n_models = 1  # models this run fine-tunes (run() sets it): the disk estimate

    def obtain(self, stage: Stage, entry: dict[str, Any] | None, specs: dict[str, dict], done: dict[str, Any]) -> Any:
        """The stage's output for ``entry``: read from the store, or built (then stored) when missing."""
        inputs = {n: done[n] for n in (*stage.consumes, *stage.reads) if n in done}
        call = Call(stage, self.cfg, entry, specs, inputs, self.store, self.memo)
        with timed(stage.name, self.outcome.timings):
            if stage.collective and self.procs.distributed:
                built_s = self._build_collectively(call)
            else:
                with self.procs.main_first():
                    built_s = self._build_here(call)
            value = stage.artifact.read(call.folder)
        where = "study" if entry is None else replicate_name(entry)
        count(stage.name, self.outcome.timings, built_s)
        if built_s is None:
            log.info("%s [%s]: reused from cache (%s)", stage.name, where, call.folder.name)
        else:
            self.outcome.built.append((where, stage.name))
            log.info("%s [%s]: built in %.1f s", stage.name, where, built_s)
        if stage.finish is not None and self.procs.main:
            stage.finish(call, value)
        return value

    def _check_environment(self) -> None:
        """What this machine must have (a GPU where configured, a token for gated models), checked before the
        first artifact is built: a run that only reads finished artifacts needs neither."""
        if not self._environment_checked:
            check_environment(self.cfg, self.until, self.n_models)
            self._environment_checked = True

    def _build_here(self, call: Call) -> float | None:
        """Build the artifact under its lock unless it is there (verified); returns the build's seconds, or None
        when it was reused (also when a twin job built it while this one waited for the lock)."""
        stage, spec = call.stage, call.spec
        if self.store.ready(stage.name, spec, cheap=stage.cheap):
            return None
        self._check_environment()
        start = time.perf_counter()
        if stage.prepare is not None:
            call.prepared = stage.prepare(call)  # before the lock: a bad input leaves nothing behind, not even a lock
        with self.store.build(stage.name, spec, cheap=stage.cheap) as tmp:
            if tmp is None:
                return None
            with self._wandb(call) as run:
                call.out, call.wandb = tmp, run
                stage.artifact.write(tmp, stage.build(call))
            check_files(stage, tmp)
        return time.perf_counter() - start

    def _build_collectively(self, call: Call) -> float | None:
        """A collective stage in a distributed launch: every process builds it together outside the lock (one
        training over all GPUs, into a folder they share); the main process then stores it, the first writer
        winning over a twin job."""
        stage, spec = call.stage, call.spec
        self.procs.barrier()
        if self.store.ready(stage.name, spec, cheap=stage.cheap):
            return None
        self._check_environment()
        start, call.collective = time.perf_counter(), True
        value = stage.build(call)
        self.procs.barrier()
        if self.procs.main:
            with self.store.build(stage.name, spec, cheap=stage.cheap) as tmp:
                if tmp is not None:
                    stage.artifact.write(tmp, value)
                    check_files(stage, tmp)
        self.procs.barrier()
        return time.perf_counter() - start

    def _wandb(self, call: Call) -> Any:
        """Each built per-subset stage is its own W&B run, grouped by study."""
        if call.entry is None:
            return nullcontext(None)
        entry, name = call.entry, call.stage.name
        return wandb_run(self.logger, name=f"{replicate_name(entry)}/{name}", job_type=name,
                         config={"study": self.cfg.get("study"), "stage": name, **entry, name: call.spec.get(name)},
                         tags=[entry["selector"], f"seed={entry['seed']}",
                               self.cfg.get("finetune", {}).get("base_model", "no-finetune")])


def check_files(stage: Stage, folder: Path) -> None:
    """A build wrote every file its artifact class names (a bug otherwise, caught before the artifact is stored)."""
    missing = [f for f in stage.artifact.files if not (folder / f).exists()]
    if missing:
        raise RuntimeError(f"stage {stage.name!r} built no {missing} ({stage.artifact.__name__}.files)")


def run(cfg: dict[str, Any], until: str | None = None, entries: Iterable[dict[str, Any]] = (), *,
        dag: tuple[Stage, ...] = DAG) -> Outcome:
    """Run the stages of ``dag`` up to ``until`` (inclusive; None: all of them): the study-level stages once, the
    per-subset stages for each entry of ``entries`` (``subset_plan`` / ``replicate_entries`` entries). A stage is
    skipped where the config defines no such stage (no fine-tuning config: no finetune, generate, eval).

    Every stage the config defines has its early checks run as soon as what they read is there (e.g. the pool
    signals' needs of the pool, before the pool is embedded). With ``dry_run=true`` in ``cfg`` nothing is built:
    the same stages and entries are planned (``Outcome.plan``, ``<results_dir>/plan.csv``)."""
    stages, entries = stages_until(dag, until), list(entries)
    entry_specs = [stage_specs(cfg, e, dag) for e in entries]
    shared_specs = shared_keys(cfg, entry_specs, dag)
    outcome = Outcome()
    if cfg.get("dry_run"):
        for problem in environment_problems(cfg, until, len(entries)):  # said, not fatal: nothing runs
            log.warning("dry run: a real run would stop here: %s", problem)
        outcome.plan = dry_run(cfg, entries, stages, entry_specs)
        return outcome
    engine = Engine(cfg, until, outcome)
    engine.n_models = max(1, len(entries))  # the disk estimate counts the models fine-tuned
    if engine.procs.main:
        remove_stale_temps(cfg["cache_dir"])
    defined = set(shared_specs).union(*entry_specs)
    for stage in (s for s in stages if not s.per_subset and s.name in shared_specs):
        outcome.shared[stage.name] = engine.obtain(stage, None, shared_specs, outcome.shared)
        run_checks(dag, defined, Checked(cfg, entries, shared_specs, outcome.shared[stage.name]), stage.name)
    per_subset = [s for s in stages if s.per_subset]
    with logging_redirect_tqdm():
        for entry, specs in tqdm(list(zip(entries, entry_specs, strict=True)), desc="subsets", unit="subset",
                                 disable=not per_subset or len(entries) < 2):
            done = dict(outcome.shared)
            for stage in (s for s in per_subset if s.name in specs):
                done[stage.name] = engine.obtain(stage, entry, specs, done)
            outcome.outputs.append(done)
    return outcome


def shared_keys(cfg: dict[str, Any], entry_specs: list[dict[str, dict]], dag: tuple[Stage, ...]) -> dict[str, dict]:
    """The study-level stages' keys, the same for every entry (divbench-select's one entry decides which pool
    signals its selector needs)."""
    shared = {s.name for s in dag if not s.per_subset}
    keys = [{k: v for k, v in specs.items() if k in shared} for specs in entry_specs] or [stage_specs(cfg, None, dag)]
    if any(k != keys[0] for k in keys):
        raise ValueError("the entries of one run must share their study-level stages")
    return keys[0]


def run_checks(dag: tuple[Stage, ...], defined: set[str], checked: Checked, after: str) -> None:
    """The early checks that wait for the stage ``after``, of every stage the config defines."""
    for stage in dag:
        for check in stage.checks:
            if check.after == after and stage.name in defined:
                check.fn(checked)


def dry_run(cfg: dict[str, Any], entries: list[dict], stages: tuple[Stage, ...], entry_specs: list[dict[str, dict]]
            ) -> pd.DataFrame:
    """What a run would do and cost, without running anything (no key, no GPU): ``<results_dir>/plan.csv`` with
    one row per (subset, seed, stage), the totals logged. A stage is 'done', 'to run' or 'corrupt' (finished but
    failing verification: rebuilt for cheap stages, refused for costly ones)."""
    store = ArtifactStore(cfg["cache_dir"])
    stages = tuple(s for s in stages if any(s.name in specs for specs in entry_specs))  # e.g. no design: no rows
    status, judged_files = {}, []
    for entry, specs in zip(entries, entry_specs, strict=True):
        for stage in stages:
            defined = stage.name in specs
            status[entry["label"], entry["seed"], entry.get("train_seed"), stage.name] = (
                store.status(stage.name, specs[stage.name]) if defined else "n/a")
            if stage.judged and defined:
                judged_files += [store.path(stage.name, specs[stage.name]) / f for f in stage.artifact.files]
    table = plan_table(cfg, entries, stages, status, judged_files)
    atomic_write(Path(cfg["results_dir"]) / PLAN_CSV, table.to_csv(index=False))
    names = [s.name for s in stages]
    wide = table.pivot(index=["subset", "seed", "train_seed"], columns="stage", values="status")[names]
    log.info("dry run (nothing executed); plan in %s:\n%s", Path(cfg["results_dir"]) / PLAN_CSV, wide.to_string())
    for scope, t in plan_totals(table).items():
        log.info("plan totals (%s): %d judge calls, %.1f GPU hours, %.1f CPU hours (measured on this study's "
                 "chunks, <results_dir>/timings; 0 before any), %.3g judge input tokens, %.3g output tokens, USD %s",
                 scope.replace("_", " "), t["judge_calls"], t["est_gpu_hours"], t["est_cpu_hours"],
                 t["est_judge_input_tokens"], t["est_judge_output_tokens"],
                 "unknown (no eval.judge.price)" if np.isnan(t["est_usd"]) else f"{t['est_usd']:.2f}")
    return table


# ------------------------------------------------------------------ the study -----------------------------------
STUDY_CONFIG = "study_config.json"


CODE_FENCE = "```"


def subset_profile(sub: list[dict]) -> dict[str, float]:
    """Confounds the report controls for: mean characters of the subset's assistant turns (judges and several
    metrics move with length), the share of conversations holding a fenced code block (```) in any turn
    (``code_share``), the share with more than one user turn (``multi_turn_share``) and, when the pool scores
    quality, the subset's mean quality. (Loss-bearing tokens and unique rows are added by ``study_row``.)"""
    chars = [len(m["content"]) for c in sub for m in c["messages"] if m["role"] == "assistant"]
    profile = {"mean_response_chars": float(np.mean(chars)) if chars else float("nan")}
    if sub:
        profile["code_share"] = float(np.mean([any(CODE_FENCE in m["content"] for m in c["messages"]) for c in sub]))
        profile["multi_turn_share"] = float(np.mean([sum(m["role"] == "user" for m in c["messages"]) > 1
                                                     for c in sub]))
    quality = data_column(sub, "quality")
    if quality is not None:
        profile["mean_quality"] = float(np.mean(quality))
    return profile


def study_row(cfg: dict[str, Any], entry: dict[str, Any], done: dict[str, Any], memo: dict[str, Any]
              ) -> dict[str, Any]:
    """One fine-tuned model's row of ``runs.csv``: who it is, its subset's profile, metrics and evaluation."""
    indices = done["subset"]
    sub = [done["pool"][i] for i in indices]
    return {"subset": entry["label"], "selector": entry["selector"], "seed": entry["seed"],
            "train_seed": entry.get("train_seed"), "size": entry["size"], "unique_rows": len(set(indices)),
            "base_model": cfg["finetune"]["base_model"]} | design_columns(entry, done) | subset_profile(sub) | {
                "supervised_tokens": supervised_tokens_of(cfg, entry, sub, memo)} | done["metrics"] | done["eval"]


def design_columns(entry: dict[str, Any], done: dict[str, Any]) -> dict[str, Any]:
    """Under a study design (experiments.engine.design): the subset's pool fraction, whether its supervised tokens
    were matched (else they are a covariate), whether its overlaps are under the cap, and the swaps made."""
    if "design" not in done:
        return {}
    prov = done["design"].rows(entry)[1]
    return {"pool_fraction": entry.get("pool_fraction", 1.0), "token_matched": prov.get("token_matched"),
            "token_swaps": prov.get("token_swaps", 0), "overlap_capped": prov.get("overlap_capped", True),
            "overlap_swaps": prov.get("overlap_swaps", 0)}


def supervised_tokens_of(cfg: dict[str, Any], entry: dict[str, Any], sub: list[dict], memo: dict[str, Any]) -> int:
    """The subset's loss-bearing tokens under the fine-tuning's tokenizer, template and max_length: a report
    covariate computed from the subset (not an artifact, so no cache key); the tokenizer is loaded once."""
    from finetune.sft import supervised_tokens, training_tokenizer  # heavy import, only with a row to write

    ft = finetune_config(cfg, entry)
    if "tokenizer" not in memo:
        base = resolve_model(cfg["finetune"]["base_model"], cfg["cache_dir"])
        memo["tokenizer"] = training_tokenizer(base, ft.get("chat_template"))
    return supervised_tokens(memo["tokenizer"], sub, int(ft["max_length"]))


def performance_source(cfg: dict[str, Any]) -> str:
    """What the performance column is, e.g. ``raw:neg_reference_nll`` or ``zscore_mean:alpaca_eval_win_rate,...``."""
    return evaluation(cfg["eval"]).performance_source()


def check_metric_configs(metric_cfgs: list[dict], report: dict[str, Any] | None = None) -> None:
    for m in metric_cfgs:
        check_config(m["name"], dict(m.get("params") or {}))
    ref = (report or {}).get("reference_metric")
    if ref is not None and ref not in {m["name"] for m in metric_cfgs}:
        raise InputError(f"report.reference_metric={ref!r} is not among metrics.compute "
                         f"{[m['name'] for m in metric_cfgs]}: name one of them, or report.reference_metric=null")


def selected_entries(plan: list[dict], only: Any) -> list[dict]:
    """The plan, or the entries whose label is in ``selection.only`` (one label or a list) for fan-out jobs."""
    if only is None:
        return plan
    wanted = {only} if isinstance(only, str) else set(only)
    unknown = wanted - {e["label"] for e in plan}
    if unknown:
        raise InputError(f"selection.only names unknown subset label(s) {sorted(unknown)}; labels: "
                         f"{sorted({e['label'] for e in plan})}")
    return [e for e in plan if e["label"] in wanted]


def scoped_plan(sel_cfg: dict[str, Any]) -> list[dict]:
    """The subsets this study fine-tunes, evaluates and reports: the whole plan, or the entries ``selection.scope``
    names, each ``<label>`` (every seed of it) or ``<label>:<seed>`` (one). The design stage still selects the whole
    plan (token matching and the overlap cap are over every subset), so a scoped study trains exactly the full
    study's subsets: a replication on another base model over part of them (``experiment=mini_v2_gemma``)."""
    plan = subset_plan(sel_cfg)
    scope = sel_cfg.get("scope")
    if scope is None:
        return plan
    if isinstance(scope, str) or not scope:
        raise InputError(f"selection.scope must be a non-empty list of '<label>' or '<label>:<seed>' names, got "
                         f"{scope!r}; e.g. selection.scope=[random:0,kcenter], or null for every subset")
    names = {e["label"] for e in plan} | {f"{e['label']}:{e['seed']}" for e in plan}
    unknown = [str(name) for name in scope if str(name) not in names]
    if unknown:
        raise InputError(f"selection.scope names no subset of the plan: {unknown}; name a label "
                         f"({sorted({e['label'] for e in plan})}) or a label:seed of it")
    wanted = {str(name) for name in scope}
    return [e for e in plan if e["label"] in wanted or f"{e['label']}:{e['seed']}" in wanted]


def study_entries(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The study's entries this job runs: every (subset, seed) of the scoped plan or of ``selection.only``, once per
    training seed."""
    return replicate_entries(selected_entries(scoped_plan(cfg["selection"]), cfg["selection"].get("only")), cfg)


def check_stop_after(stop_after: Any) -> str | None:
    if stop_after is not None and stop_after not in STAGES:
        raise InputError(f"stop_after={stop_after!r} is not a stage; use one of {list(STAGES)} (or null)")
    return stop_after


def _stopped(stage: str, timings: Timings) -> dict[str, Any]:
    log.info("stop_after=%s: the stages up to %s are done and cached; run again without stop_after to go on",
             stage, stage)
    return {"stopped_after": stage, "paths": {}, "timings": timings, "runs": None}


def _study_inputs(cfg: dict[str, Any]) -> dict[str, Any]:
    """The study's input paths, which its results_dir must neither be, lie in, nor hold."""
    return {"pool.path": cfg["pool"].get("path"), "embed.path": cfg["embed"].get("path")}


def check_study_config(cfg: dict[str, Any]) -> None:
    """Every check that needs no data or model, before any work (and, from the CLI, before Hydra writes)."""
    check_metric_configs(list(cfg["metrics"]["compute"]), cfg.get("report"))
    evaluation(cfg["eval"]).check(check_key=not cfg.get("dry_run"))  # a dry run calls no judge
    study_entries(cfg)  # scope, only and the training seeds (finetune.seeds, subset_train_seeds)
    check_finetune_config(cfg["finetune"])
    check_embed_config(cfg["embed"])
    check_pool_config(cfg["pool"])  # last: a plugin's bad value is named even when the pool is also wrong
    check_writable(cfg["cache_dir"], "cache_dir")
    check_logger_config(cfg.get("logger", {}))
    if cfg.get("logger", {}).get("enabled") and cfg["logger"].get("dir"):
        check_writable(cfg["logger"]["dir"], "logger.dir")
    if not cfg.get("dry_run"):
        check_writable(cfg["results_dir"], "results_dir")
        check_out_dir(Path(cfg["results_dir"]), "results_dir", _study_inputs(cfg))


def run_study(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) the study described by a resolved config dict; returns paths, timings and runs.

    ``stop_after=<stage>`` runs the shared stages (pool, embed, signals) and each selected subset's stages up to that
    stage, then stops: the "prepare once, then fan out" step of a cluster run."""
    check_study_config(cfg)
    stop_after = check_stop_after(cfg.get("stop_after"))
    entries = study_entries(cfg)
    done = run(cfg, until=stop_after, entries=entries)
    if done.plan is not None:
        return {"dry_run": done.plan}
    if stop_after is not None:
        return _stopped(stop_after, done.timings)
    timings = done.timings
    memo: dict[str, Any] = {}
    runs = pd.DataFrame([study_row(cfg, e, out, memo) for e, out in zip(entries, done.outputs, strict=True)])
    runs = runs.assign(schema=RUNS_SCHEMA)
    n_planned = len(replicate_entries(scoped_plan(cfg["selection"]), cfg))
    if len(entries) < n_planned:
        log.info("selection.only: %d of %d subsets done; run without selection.only to gather the report",
                 len(entries), n_planned)
        chunk = write_chunk_timings(cfg, entries, timings)
        return {"paths": {"chunk_timings": chunk} if chunk else {}, "timings": timings, "runs": runs}
    runs["performance"] = evaluation(cfg["eval"]).performance(runs)
    runs = aggregate_replicates(runs.assign(performance_source=performance_source(cfg)))
    runs = runs.astype({c: float for c in runs if runs[c].isna().all()})  # all-missing reads back as float
    # The resolved config beside the results: divbench-select from_study=<results_dir> finds the artifacts by it.
    # Written with the report (inside its folder swap), so a run failing on bad input or a partial
    # (selection.only) job writes no results.
    study_config = json.dumps(cfg, indent=2, default=str)
    extra = {"timings.json": json.dumps(timings, indent=2), STUDY_CONFIG: study_config}
    if "design" in done.shared:  # the subsets' pairwise Jaccard overlap beside the results
        extra[StudyDesign.OVERLAP] = done.shared["design"].overlap.to_csv(float_format="%.4f")
    plan = Path(cfg["results_dir"]) / PLAN_CSV
    if plan.is_file():  # a dry run's plan stays beside the report it planned, to compare with what ran
        extra[PLAN_CSV] = plan.read_text()
    with timed("report", timings):
        paths = write_report(runs, metric_columns(runs), cfg["results_dir"], **cfg.get("report", {}),
                             extra=extra, key="results_dir")
    _log_study(cfg, runs, paths)
    return {"paths": paths, "timings": timings, "runs": runs}


def write_chunk_timings(cfg: dict[str, Any], entries: list[dict], timings: dict[str, Any]) -> Path | None:
    """A resumable chunk's (``selection.only``) measured stage times, kept in ``<results_dir>/timings/`` (beside the
    report, which keeps them): what a chunk cost, and what ``dry_run`` estimates the rest from. Nothing is written
    when nothing was built."""
    if not any(isinstance(t, dict) and t.get("executed") for t in timings.values()):
        return None
    import os
    import platform

    import torch

    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = {"study": cfg["study"], "finished": stamp, "labels": sorted({e["label"] for e in entries}),
              "replicates": len(entries), "base_model": cfg["finetune"]["base_model"], "device": cfg.get("device"),
              "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "platform": platform.platform(), "finetune_precision": cfg["finetune"].get("precision"),
                          "eval_precision": cfg["eval"].get("precision")},
              "timings": timings}
    folder = Path(cfg["results_dir"])
    check_output_dir(folder, "results_dir", legacy=RESULTS_FILES)
    if read_manifest(folder) is None:  # the folder becomes divbench's, so that the report keeps these records
        write_manifest(folder, owned_files(folder, RESULTS_FILES), "divbench-study")
    path = folder / "timings" / f"chunk-{stamp}.json"
    atomic_write(path, json.dumps(record, indent=2))  # a record, like a README: not listed, so every report keeps it
    log.info("chunk timings in %s", path)
    return path


def _log_study(cfg: dict[str, Any], runs: pd.DataFrame, paths: dict[str, Path]) -> None:
    variant = cfg.get("variant")  # a sweep job's overrides (experiments.cli.study.job_name)
    name = f"study-{cfg['study']}" + (f"[{variant}]" if variant else "")
    with wandb_run(cfg["logger"], name=name, job_type="study",
                   config={"study": cfg["study"], "subsets": len(runs)} | ({"variant": variant} if variant else {})
                   ) as run:
        if run is None:
            return
        import wandb

        run.log({"runs": wandb.Table(dataframe=runs)})
        if "table_csv" in paths:  # a noise-floor run (one subset) has no correlation table
            table = pd.read_csv(paths["table_csv"])
            table = table.astype(object).where(table.notna(), None)  # undefined correlations stay missing, not 0
            run.log({"correlation": wandb.Table(dataframe=table)})
        run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in paths.values() if p.suffix == ".png"})
