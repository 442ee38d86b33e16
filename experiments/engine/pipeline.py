"""The study pipeline: pool -> embeddings -> pool signals -> subsets -> metrics; subsets -> fine-tune -> generate
-> evaluate; then the report.

The stages are a small DAG (:data:`DAG`, :class:`experiments.engine.stages.Stage`) that the run, ``dry_run`` and
``stop_after`` walk. Each stage reads its inputs from and writes its output (an artifact class of
:mod:`experiments.engine.stages`, which names its files) to the artifact store (``experiments.engine.store``),
keyed by the stage's resolved config plus the keys of what it consumed; a finished artifact is never recomputed.
Evaluation runs through the evaluators (:mod:`eval.evaluators`): their generate halves in ``generate``, their
score halves in ``eval``.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import metrics
import selection
from divcore.errors import InputError
from divcore.io import atomic_write, check_writable, remove_stale_temps
from eval.evaluators import Evaluation, evaluation
from experiments.data.pools import (
    check_pool_config,
    embedding_text,
    filter_prompt_length,
    load_conversations,
    sample_pool,
)
from experiments.embedding.backends import (
    DEFAULT_CHUNK,
    check_embed_config,
    check_precomputed,
    embed_texts,
    finish_embedding,
    precomputed_embeddings,
)
from experiments.engine.environment import check_environment
from experiments.engine.fingerprint import content_keys
from experiments.engine.keys import result_config, result_part
from experiments.engine.plan import plan_table, plan_totals
from experiments.engine.stages import (
    Embeddings,
    EvalRow,
    FinetuneOutput,
    Generations,
    KeyInputs,
    MetricsRow,
    PoolRows,
    Stage,
    Subset,
    check_dag,
    stage_keys,
)
from experiments.engine.store import LOCK_TIMEOUT_S, ArtifactStore
from experiments.engine.tracking import log_to_run, wandb_run
from experiments.report.tables import RUNS_SCHEMA, aggregate_replicates, check_out_dir, metric_columns, write_report
from finetune.models import finetuned, resolve_model
from finetune.sft import check_finetune_config
from metrics.registry import check_config, metric_needs
from metrics.signals import PoolSignals, SignalNeeds, check_needs, pool_signals
from selection.registry import check_params, selector_needs
from selection.signals import length_proxy

log = logging.getLogger(__name__)


@contextmanager
def timed(stage: str, timings: dict[str, dict[str, float]]) -> Iterator[None]:
    """Accumulate wall time per stage and record the process's peak resident memory after it."""
    start = time.perf_counter()
    try:
        yield
    finally:
        entry = timings.setdefault(stage, {"wall_s": 0.0, "peak_rss_gib": 0.0})
        entry["wall_s"] += time.perf_counter() - start
        entry["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@contextmanager
def executed(stage: str, timings: dict[str, dict[str, float]]) -> Iterator[None]:
    """Count the runs of a stage that did its work (not a cache hit) and their wall time: the planner's
    measured per-stage cost (``timings.json``)."""
    start = time.perf_counter()
    yield
    entry = timings.setdefault(stage, {"wall_s": 0.0, "peak_rss_gib": 0.0})
    entry["executed"] = entry.get("executed", 0) + 1
    entry["executed_wall_s"] = entry.get("executed_wall_s", 0.0) + time.perf_counter() - start


def subset_plan(sel_cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand the selection config into one entry per (subset, seed), validated before any heavy work."""
    size = sel_cfg.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InputError(f"selection.size must be a positive integer, got {size!r}")
    plan = []
    for item in sel_cfg["subsets"]:
        spec = selection.get_selector(item["selector"])
        params = dict(item.get("params") or {})
        check_params(spec, params)
        for seed in item.get("seeds", sel_cfg["seeds"]):
            plan.append({"label": item.get("label", item["selector"]), "selector": item["selector"],
                         "params": params, "seed": int(seed), "size": int(sel_cfg["size"])})
    labels = [(p["label"], p["seed"]) for p in plan]
    if len(set(labels)) != len(labels):
        twice = sorted({f"{label} (seed {seed})" for label, seed in labels if labels.count((label, seed)) > 1})
        raise InputError(f"selection.subsets: {', '.join(twice)} named twice; give each subset a distinct label "
                         "(selection.subsets.<i>.label=...)")
    return plan


STUDY_CONFIG = "study_config.json"


def train_seeds(ft_cfg: dict[str, Any]) -> list[int]:
    """The training replicates of every subset: ``finetune.seeds``, or the one ``finetune.args.seed``."""
    seeds = ft_cfg.get("seeds")
    if seeds is None:
        return [int(ft_cfg["args"]["seed"])]
    if isinstance(seeds, (int, str)) or not seeds or len(set(seeds)) != len(seeds) or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds):
        raise InputError(f"finetune.seeds must be a non-empty list of distinct integers (training replicates), "
                         f"got {seeds!r}; e.g. finetune.seeds=[1,2,3], or null for one run with finetune.args.seed")
    return [int(v) for v in seeds]


def finetune_config(cfg: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuning config of one training replicate: the replicate's seed drives the trainer (weights
    init, data order) and nothing else, so replicates of a subset differ only by training noise."""
    ft = {k: v for k, v in cfg["finetune"].items() if k != "seeds"}
    seed = entry.get("train_seed")
    if seed is None:
        return ft
    return ft | {"args": ft["args"] | {"seed": int(seed), "data_seed": int(seed)}}


def replicate_entries(entries: list[dict[str, Any]], cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Each (subset, seed) entry once per training seed; subset and metrics artifacts are shared by them."""
    replicated = cfg["finetune"].get("seeds") is not None
    return [e | {"train_seed": t, "replicated": replicated} for e in entries for t in train_seeds(cfg["finetune"])]


def keyed_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config with every local file or folder it names (pool, model and adapter folders, judge data)
    replaced by its content fingerprint (experiments.engine.fingerprint): cache keys follow content, not paths."""
    hashes = ArtifactStore(cfg["cache_dir"]).hashes  # saved with the next artifact built, not before
    return cfg | {g: content_keys(cfg[g], hashes) for g in ("pool", "embed", "finetune", "eval") if g in cfg}


def _pool_key(k: KeyInputs) -> dict[str, Any]:
    return {"pool": k.keyed["pool"]}


def _embed_key(k: KeyInputs) -> dict[str, Any]:
    return {"embed": content_keys(embed_spec(k.result), ArtifactStore(k.result["cache_dir"]).hashes)}


def _signals_key(k: KeyInputs) -> dict[str, Any]:
    return {"signals": signal_needs(k.keyed, k.entry).key()}


def _subset_key(k: KeyInputs) -> dict[str, Any] | None:
    if k.entry is None:
        return None
    return {"subset": result_part({f: k.entry[f] for f in ("selector", "params", "seed", "size")})}


def _metrics_key(k: KeyInputs) -> dict[str, Any]:
    return {"metrics": list(k.keyed["metrics"]["compute"])}


def _finetune_key(k: KeyInputs) -> dict[str, Any] | None:
    """None for divbench-select (no fine-tuning config: selection and metrics only)."""
    return {"finetune": finetune_config(k.keyed, k.entry)} if "finetune" in k.keyed else None


def _generate_key(k: KeyInputs) -> dict[str, Any] | None:
    return evaluation(k.keyed["eval"]).generate_key() if "eval" in k.keyed else None


def _eval_key(k: KeyInputs) -> dict[str, Any]:
    return {"eval": evaluation(k.keyed["eval"]).score_key()}


# The study as a DAG of stages, in the order they run; a new stage is one line here (its key part beside the
# others, its runner in run_study / SubsetRunner.steps).
DAG = check_dag((
    Stage("pool", (), PoolRows, _pool_key, per_subset=False),
    Stage("embed", ("pool",), Embeddings, _embed_key, per_subset=False),
    Stage("signals", ("embed",), PoolSignals, _signals_key, per_subset=False),
    Stage("subset", ("embed",), Subset, _subset_key),
    Stage("metrics", ("subset",), MetricsRow, _metrics_key),
    Stage("finetune", ("subset",), FinetuneOutput, _finetune_key),
    Stage("generate", ("finetune",), Generations, _generate_key),
    Stage("eval", ("generate",), EvalRow, _eval_key),
))
STAGES = tuple(stage.name for stage in DAG)
SHARED_STAGES = tuple(stage.name for stage in DAG if not stage.per_subset)
SUBSET_STAGES = tuple(stage.name for stage in DAG if stage.per_subset)


def stage_specs(cfg: dict[str, Any], entry: dict[str, Any] | None = None) -> dict[str, dict]:
    """Each stage's cache key: its own resolved config (local inputs by content, runtime knobs left out) plus the
    keys of what it consumes (the DAG's edges). No stage output is read, so a dry run can tell what is done
    without loading anything. Without ``entry``: the study-level (shared) stages only."""
    result = result_config(cfg)  # runtime knobs (experiments.engine.keys) are never hashed
    return stage_keys(DAG, KeyInputs(result=result, keyed=keyed_config(result), entry=entry))


def signal_needs(cfg: dict[str, Any], entry: dict[str, Any] | None = None) -> SignalNeeds:
    """The pool signals the configured metrics and selectors read: the study's whole selection plan (so every
    ``selection.only`` job shares one signals artifact), or divbench-select's one ``entry``."""
    entries = subset_plan(cfg["selection"]) if "selection" in cfg else [entry] if entry is not None else []
    return metric_needs((cfg.get("metrics") or {}).get("compute") or []) | selector_needs(entries)


def embed_spec(cfg: dict[str, Any]) -> dict[str, Any]:
    """What the embeddings depend on (``cfg``: the result part, experiments.engine.keys); precomputed vectors are
    keyed by their files' content, not their path."""
    spec = dict(cfg["embed"])
    if spec["backend"] == "precomputed":
        check_precomputed(cfg["pool"], spec)
        content = ArtifactStore(cfg["cache_dir"]).hashes.fingerprint(Path(spec["path"]).expanduser())
        spec = {"backend": "precomputed", "dim": spec.get("dim"), "content": content}
    return spec


def pool_stage(store: ArtifactStore, spec: dict, cfg: dict[str, Any]) -> list[dict]:
    """The pool of ``cfg`` (the pool config), cached under ``spec`` (its content-keyed form: local files enter it
    by content, so the path to read is taken from ``cfg``)."""
    if not store.ready("pool", spec):
        # read and checked before the lock is taken: a bad pool file leaves nothing in the cache, not even a lock
        convs = load_conversations(cfg.get("path"), cfg["format"], cfg["on_invalid"], cfg.get("sources"))
        convs = sample_pool(filter_prompt_length(convs, cfg.get("max_prompt_chars")), cfg.get("size"),
                            int(cfg["seed"]))
        with store.build("pool", spec) as tmp:
            if tmp is not None:  # else a twin job built it while this one waited for the lock
                PoolRows.write(tmp, convs)
    return PoolRows.read(store.path("pool", spec))


def embed_stage(store: ArtifactStore, spec: dict, convs: list[dict], cfg: dict[str, Any], cache_dir: str,
                pool_path: str | None = None) -> np.ndarray:
    """The pool's embeddings by ``cfg`` (the embed config); ``pool_path``: the pool's source, which precomputed
    vectors are matched against file by file."""
    if not store.ready("embed", spec):
        with store.build("embed", spec) as tmp:
            if tmp is not None:  # else a twin job built it while this one waited for the lock
                if cfg["backend"] == "precomputed":
                    vecs = precomputed_embeddings(cfg["path"], len(convs), pool_path, cfg.get("dim"))
                    Embeddings.write(tmp, vecs)
                else:
                    _embed_resumably(store, spec, convs, cfg, cache_dir, tmp)
    return Embeddings.read(store.path("embed", spec))


def _embed_resumably(store: ArtifactStore, spec: dict, convs: list[dict], cfg: dict[str, Any], cache_dir: str,
                     dest: Path) -> None:
    """Embed into a resumable work file named by the artifact's key (a killed run picks it up again), then move
    it into ``dest``. Runs under the artifact's lock, so twin sweep jobs wait instead of sharing the file."""
    work = Path(cache_dir) / "partial" / "embed" / store.path("embed", spec).name
    runtime = cfg.get("runtime") or {}
    embed_texts([embedding_text(c) for c in convs], resolve_model(cfg["model"], cache_dir), cfg["backend"],
                max_length=int(cfg["max_length"]), batch_size=int(cfg["batch_size"]), device=cfg["device"],
                chunk_size=int(runtime.get("chunk_size") or DEFAULT_CHUNK), work_dir=work, vllm=runtime.get("vllm"))
    finish_embedding(work, dest)


def signals_stage(store: ArtifactStore, spec: dict, convs: list[dict], emb: np.ndarray,
                  device: str = "cpu") -> PoolSignals:
    """The pool signals (metrics.signals) of ``emb`` for the needs in ``spec`` (``stage_specs(...)["signals"]``),
    built once per (embeddings, needs) and read by every subset's selector and metrics."""
    if not store.ready("signals", spec):
        check_signal_needs(spec, convs)  # before the lock: a need the pool cannot meet leaves nothing behind
        with store.build("signals", spec) as tmp:
            if tmp is not None:  # else a twin job built it while this one waited for the lock
                pool_signals(emb, SignalNeeds.from_key(spec["signals"]), tags=data_column(convs, "tags"),
                             quality=data_column(convs, "quality"), proxy_quality=length_proxy(convs),
                             device=device).save(tmp)
    return PoolSignals.load(store.path("signals", spec))


def check_signal_needs(spec: dict, convs: list[dict]) -> None:
    """What the signals in ``spec`` need of the pool (enough rows for every k-means, tags for tag labels), checked on
    the pool alone, so that a bad need is refused before the embeddings are computed."""
    check_needs(SignalNeeds.from_key(spec["signals"]), len(convs), has_tags=data_column(convs, "tags") is not None)


def data_column(convs: list[dict], key: str) -> Any:
    """A per-row column the pool carries for every conversation (quality scores, tags), else None."""
    if not all(key in c for c in convs):
        return None
    values = [c[key] for c in convs]
    return np.asarray(values, dtype=np.float64) if key == "quality" else values


class SubsetRunner:
    """Runs the DAG's per-subset stages (subset, metrics, finetune, generate, eval), each skipped when its
    artifact exists, each that does run logged as its own W&B run grouped by study."""

    def __init__(self, cfg: dict[str, Any], store: ArtifactStore, convs: list[dict], emb: np.ndarray,
                 timings: dict[str, dict[str, float]], signals: PoolSignals | None = None) -> None:
        self.cfg, self.store, self.convs, self.emb, self.timings = cfg, store, convs, emb, timings
        self.signals = signals  # the pool signals stage's output: selectors and metrics read pool-wide work there
        self._base_model: str | None = None
        self._selected: dict[tuple[int, ...], str] = {}  # sorted row indices -> the first subset that selected them
        self._pool: selection.PoolInputs | None = None
        self._tokenizer: Any = None

    def pool_inputs(self) -> selection.PoolInputs:
        """What selectors read about the pool; built once per study, the first time a selector runs."""
        if self._pool is None:
            quality, proxy = ((self.signals.quality, self.signals.proxy_quality) if self.signals is not None
                              else (data_column(self.convs, "quality"), length_proxy(self.convs)))
            self._pool = selection.PoolInputs(size=self.emb.shape[0], embeddings=self.emb, quality=quality,
                                              tags=data_column(self.convs, "tags"), proxy_quality=proxy,
                                              fingerprint=self.store.path("embed", stage_specs(self.cfg)["embed"]).name,
                                              signals=self.signals)
        return self._pool

    @property
    def base_model(self) -> str:
        if self._base_model is None:  # resolved (and converted) only when a model is needed
            self._base_model = resolve_model(self.cfg["finetune"]["base_model"], self.cfg["cache_dir"])
        return self._base_model

    @contextmanager
    def stage(self, name: str, entry: dict[str, Any], spec: dict) -> Iterator[tuple[Path | None, Any]]:
        """Yield (temporary artifact dir, W&B run) when the stage must run, (None, None) when it is cached."""
        with timed(name, self.timings):
            if self.store.ready(name, spec):
                yield None, None
                return
            with self.store.build(name, spec) as tmp:
                if tmp is None:  # a twin job finished it while this one waited for the lock
                    yield None, None
                    return
                with executed(name, self.timings), wandb_run(
                        self.cfg["logger"], name=f"{replicate_name(entry)}/{name}", job_type=name,
                        config={"study": self.cfg["study"], "stage": name, **entry, name: spec.get(name)},
                        tags=[entry["selector"], f"seed={entry['seed']}",
                              self.cfg.get("finetune", {}).get("base_model", "no-finetune")]) as run:
                    yield tmp, run

    def checkpoint_dir(self, specs: dict, force: bool = False) -> Path | None:
        """Where the trainer checkpoints a subset's fine-tuning so a killed run resumes (finetune.resume)."""
        if not (force or self.cfg["finetune"].get("resume")):
            return None
        return Path(self.cfg["cache_dir"]) / "checkpoints" / self.store.path("finetune", specs["finetune"]).name

    def finetune(self, entry: dict[str, Any], specs: dict, sub: list[dict]) -> None:
        with self.stage("finetune", entry, specs["finetune"]) as (tmp, run):
            if tmp:
                from finetune.sft import train_sft  # heavy import (TRL), only when training is due

                ft_cfg = finetune_config(self.cfg, entry)
                if run is not None:  # TRL streams its loss curves into this stage's W&B run
                    ft_cfg = ft_cfg | {"args": ft_cfg["args"] | {"report_to": ["wandb"]}}
                ckpt = self.checkpoint_dir(specs)
                train = train_sft(sub, self.base_model, FinetuneOutput.model(tmp), ft_cfg, checkpoint_dir=ckpt)
                FinetuneOutput.write_stats(tmp, train)
        self.drop_checkpoints(self.checkpoint_dir(specs))

    def drop_checkpoints(self, ckpt: Path | None) -> None:
        """The finished model is in the store, so its resume points are spent (kept with keep_checkpoints)."""
        if ckpt is not None and ckpt.exists() and not self.cfg["finetune"].get("keep_checkpoints"):
            shutil.rmtree(ckpt)

    def evaluated_model(self, specs: dict) -> tuple[str, str | None]:
        """(model, adapter) to evaluate: the fine-tuned one, or the base model when eval.adapter is false."""
        if not self.cfg["eval"].get("adapter", True):
            return self.base_model, None
        return finetuned(FinetuneOutput.model(self.store.path("finetune", specs["finetune"])), self.base_model)

    def subset_rows(self, entry: dict[str, Any], specs: dict) -> tuple[list[int], list[dict]]:
        """Select (or load) the subset: its pool row indices and conversations."""
        with self.stage("subset", entry, specs["subset"]) as (tmp, _):
            if tmp:
                result = selection.select(entry["selector"], self.pool_inputs(), entry["size"], entry["seed"],
                                          **entry["params"])
                Subset.write(tmp, result.indices, result.provenance)
        indices = Subset.read(self.store.path("subset", specs["subset"]))
        self.warn_if_selected_before(entry, indices)
        return indices, [self.convs[i] for i in indices]

    def warn_if_selected_before(self, entry: dict[str, Any], indices: list[int]) -> None:
        """Two subset entries that select the same rows are one subset counted twice in every correlation (e.g. a
        deterministic selector listed with two seeds): say so, naming both."""
        name = f"{entry['label']} (seed {entry['seed']})"
        first = self._selected.setdefault(tuple(sorted(indices)), name)
        if first != name:
            log.warning("subsets %s and %s select the same rows, so the report counts one subset twice; give one of "
                        "them other parameters, or list a deterministic selector once", first, name)

    def metrics_row(self, entry: dict[str, Any], specs: dict, indices: list[int], sub: list[dict]) -> dict[str, Any]:
        """The subset's diversity metrics (density / coverage reference: the whole pool), computed or cached."""
        with self.stage("metrics", entry, specs["metrics"]) as (tmp, run):
            if tmp:
                inputs = metrics.MetricInputs(embeddings=self.emb[indices], reference=self.emb,
                                              texts=[embedding_text(c) for c in sub],
                                              quality=data_column(sub, "quality"), tags=data_column(sub, "tags"),
                                              reference_tags=self.pool_inputs().tags, signals=self.signals,
                                              rows=np.asarray(indices))
                row = metrics.compute(self.cfg["metrics"]["compute"], inputs)
                MetricsRow.write(tmp, row)
                if run is not None:
                    run.log(row)
        return MetricsRow.read(self.store.path("metrics", specs["metrics"]))

    def generations(self, entry: dict[str, Any], specs: dict) -> Path:
        """The evaluators' generate halves on the evaluated model, run or cached; returns the artifact's folder."""
        with self.stage("generate", entry, specs["generate"]) as (tmp, _):
            if tmp:
                model_path, adapter = self.evaluated_model(specs)
                self.evaluation.generate(model_path, adapter, tmp,
                                         generator_name=f"{self.cfg['study']}-{replicate_name(entry)}")
        return self.store.path("generate", specs["generate"])

    def eval_row(self, entry: dict[str, Any], specs: dict, gen_dir: Path, metrics_row: dict[str, Any]
                 ) -> dict[str, Any]:
        """The evaluators' score halves on the generations (judging where they need it), run or cached."""
        with self.stage("eval", entry, specs["eval"]) as (tmp, run):
            if tmp:
                result = self.evaluation.score(gen_dir, self.cfg["cache_dir"], tmp)
                EvalRow.write(tmp, result)
                if run is not None:
                    run.log(metrics_row | {k: v for k, v in result.items() if isinstance(v, (int, float))})
                    log_to_run(run, self.evaluation.tables(gen_dir, tmp))
        result = EvalRow.read(self.store.path("eval", specs["eval"]))
        log.info("%s evaluated: %s", replicate_name(entry),
                 {k: v for k, v in result.items() if k in ("performance", "alpaca_eval_win_rate", "mt_bench_score")})
        return result

    @property
    def evaluation(self) -> Evaluation:
        return evaluation(self.cfg["eval"])

    def steps(self) -> dict[str, Callable[[dict[str, Any], dict, dict[str, Any]], Any]]:
        """Each per-subset stage's runner: (entry, specs, outputs of the stages before it) -> its output."""
        return {"subset": lambda e, specs, done: self.subset_rows(e, specs),
                "metrics": lambda e, specs, done: self.metrics_row(e, specs, *done["subset"]),
                "finetune": lambda e, specs, done: self.finetune(e, specs, done["subset"][1]),
                "generate": lambda e, specs, done: self.generations(e, specs),
                "eval": lambda e, specs, done: self.eval_row(e, specs, done["generate"], done["metrics"])}

    def run(self, entry: dict[str, Any], stop_after: str | None = None) -> dict[str, Any] | None:
        """Run the per-subset stages in DAG order, or those up to ``stop_after`` (then None: there is no row yet)."""
        specs, steps, done = stage_specs(self.cfg, entry), self.steps(), {}
        for name in SUBSET_STAGES:
            done[name] = steps[name](entry, specs, done)
            if name == stop_after:
                return None
        indices, sub = done["subset"]
        return {"subset": entry["label"], "selector": entry["selector"], "seed": entry["seed"],
                "train_seed": entry.get("train_seed"), "size": entry["size"], "unique_rows": len(set(indices)),
                "base_model": self.cfg["finetune"]["base_model"]} | subset_profile(sub) | {
                    "supervised_tokens": self.supervised_tokens(entry, sub)} | done["metrics"] | done["eval"]

    def supervised_tokens(self, entry: dict[str, Any], sub: list[dict]) -> int:
        """The subset's loss-bearing tokens under the fine-tuning's tokenizer, template and max_length: a report
        covariate computed from the subset (not an artifact, so no cache key)."""
        from finetune.sft import supervised_tokens, training_tokenizer  # heavy import, only with a row to write

        ft = finetune_config(self.cfg, entry)
        if self._tokenizer is None:
            self._tokenizer = training_tokenizer(self.base_model, ft.get("chat_template"))
        return supervised_tokens(self._tokenizer, sub, int(ft["max_length"]))


def replicate_name(entry: dict[str, Any]) -> str:
    """``<label>-s<selection seed>``, plus ``-t<training seed>`` for a training replicate."""
    name = f"{entry['label']}-s{entry['seed']}"
    return f"{name}-t{entry['train_seed']}" if entry.get("replicated") else name


CODE_FENCE = "```"


def subset_profile(sub: list[dict]) -> dict[str, float]:
    """Confounds the report controls for: mean characters of the subset's assistant turns (judges and several
    metrics move with length), the share of conversations holding a fenced code block (```) in any turn
    (``code_share``), the share with more than one user turn (``multi_turn_share``) and, when the pool scores
    quality, the subset's mean quality. (Loss-bearing tokens and unique rows are added by the runner.)"""
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


def dry_run(cfg: dict[str, Any], plan: list[dict]) -> pd.DataFrame:
    """What a run would do and cost, without running anything (no key, no GPU): ``<results_dir>/plan.csv`` with
    one row per (subset, seed, stage), the totals logged. A stage is 'done', 'to run' or 'corrupt' (finished but
    failing verification: rebuilt for cheap stages, refused for costly ones)."""
    store = ArtifactStore(cfg["cache_dir"])
    status, eval_files = {}, []
    for entry in plan:
        specs = stage_specs(cfg, entry)
        eval_files.append(store.path("eval", specs["eval"]) / EvalRow.FILE)
        for stage in DAG:
            status[entry["label"], entry["seed"], entry.get("train_seed"), stage.name] = (
                store.status(stage.name, specs[stage.name]) if stage.name in specs else "n/a")
    table = plan_table(cfg, plan, STAGES, status, eval_files, SHARED_STAGES)
    atomic_write(Path(cfg["results_dir"]) / "plan.csv", table.to_csv(index=False))
    wide = table.pivot(index=["subset", "seed", "train_seed"], columns="stage", values="status")[list(STAGES)]
    log.info("dry run (nothing executed); plan in %s:\n%s", Path(cfg["results_dir"]) / "plan.csv", wide.to_string())
    for scope, t in plan_totals(table).items():
        log.info("plan totals (%s): %d judge calls, %.1f GPU hours, %.3g judge input tokens, %.3g output tokens, "
                 "USD %s", scope.replace("_", " "), t["judge_calls"], t["est_gpu_hours"], t["est_judge_input_tokens"],
                 t["est_judge_output_tokens"], "unknown (no eval.judge.price)" if np.isnan(t["est_usd"])
                 else f"{t['est_usd']:.2f}")
    return table


def _pool_step(store: ArtifactStore, specs: dict, cfg: dict[str, Any], done: dict[str, Any]) -> list[dict]:
    convs = pool_stage(store, specs["pool"], cfg["pool"])
    if any("messages" not in c for c in convs):
        raise InputError("the pool holds plain-text rows (no turns), which cannot be fine-tuned on: give the study "
                         "conversations, or use divbench-select / divbench-measure on plain text")
    return convs


def _embed_step(store: ArtifactStore, specs: dict, cfg: dict[str, Any], done: dict[str, Any]) -> np.ndarray:
    check_signal_needs(specs["signals"], done["pool"])  # what the signals need of the pool, before embedding it
    return embed_stage(store, specs["embed"], done["pool"], cfg["embed"], cfg["cache_dir"], cfg["pool"].get("path"))


def _signals_step(store: ArtifactStore, specs: dict, cfg: dict[str, Any], done: dict[str, Any]) -> PoolSignals:
    return signals_stage(store, specs["signals"], done["pool"], done["embed"], cfg.get("device", "cpu"))


# the study-level stages' runners: (store, specs, config, outputs of the stages before) -> output
SHARED_STEPS: dict[str, Callable[[ArtifactStore, dict, dict[str, Any], dict[str, Any]], Any]] = {
    "pool": _pool_step, "embed": _embed_step, "signals": _signals_step}


def check_stop_after(stop_after: Any) -> str | None:
    if stop_after is not None and stop_after not in STAGES:
        raise InputError(f"stop_after={stop_after!r} is not a stage; use one of {list(STAGES)} (or null)")
    return stop_after


def _stopped(stage: str, timings: dict[str, dict[str, float]]) -> dict[str, Any]:
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
    selected_entries(subset_plan(cfg["selection"]), cfg["selection"].get("only"))
    check_finetune_config(cfg["finetune"])
    check_embed_config(cfg["embed"])
    check_pool_config(cfg["pool"])  # last: a plugin's bad value is named even when the pool is also wrong
    check_writable(cfg["cache_dir"], "cache_dir")
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
    plan = subset_plan(cfg["selection"])
    entries = replicate_entries(selected_entries(plan, cfg["selection"].get("only")), cfg)
    if cfg.get("dry_run"):
        return {"dry_run": dry_run(cfg, entries)}
    check_environment(cfg, stop_after)
    remove_stale_temps(cfg["cache_dir"])
    store = ArtifactStore(cfg["cache_dir"], cfg.get("cache_lock_timeout_s", LOCK_TIMEOUT_S))
    timings: dict[str, dict[str, float]] = {}
    specs, shared = stage_specs(cfg), {}
    for name in SHARED_STAGES:
        with timed(name, timings):
            shared[name] = SHARED_STEPS[name](store, specs, cfg, shared)
        if name == stop_after:
            return _stopped(name, timings)
    runner = SubsetRunner(cfg, store, shared["pool"], shared["embed"], timings, shared["signals"])
    rows = [runner.run(entry, stop_after) for entry in entries]
    if stop_after is not None:
        return _stopped(stop_after, timings)
    runs = pd.DataFrame(rows).assign(schema=RUNS_SCHEMA)
    if len(entries) < len(replicate_entries(plan, cfg)):
        log.info("selection.only: %d of %d subsets done; run without selection.only to gather the report",
                 len(entries), len(plan))
        return {"paths": {}, "timings": timings, "runs": runs}
    runs["performance"] = evaluation(cfg["eval"]).performance(runs)
    runs = aggregate_replicates(runs.assign(performance_source=performance_source(cfg)))
    runs = runs.astype({c: float for c in runs if runs[c].isna().all()})  # all-missing reads back as float
    # The resolved config beside the results: divbench-select from_study=<results_dir> finds the artifacts by it.
    # Written with the report (inside its folder swap), so a run failing on bad input or a partial
    # (selection.only) job writes no results.
    study_config = json.dumps(cfg, indent=2, default=str)
    with timed("report", timings):
        paths = write_report(runs, metric_columns(runs), cfg["results_dir"], **cfg.get("report", {}),
                             extra={"timings.json": json.dumps(timings, indent=2), STUDY_CONFIG: study_config},
                             key="results_dir")
    _log_study(cfg, runs, paths)
    return {"paths": paths, "timings": timings, "runs": runs}


def _log_study(cfg: dict[str, Any], runs: pd.DataFrame, paths: dict[str, Path]) -> None:
    with wandb_run(cfg["logger"], name=f"study-{cfg['study']}", job_type="study",
                   config={"study": cfg["study"], "subsets": len(runs)}) as run:
        if run is None:
            return
        import wandb

        run.log({"runs": wandb.Table(dataframe=runs)})
        if "table_csv" in paths:  # a noise-floor run (one subset) has no correlation table
            table = pd.read_csv(paths["table_csv"])
            table = table.astype(object).where(table.notna(), None)  # undefined correlations stay missing, not 0
            run.log({"correlation": wandb.Table(dataframe=table)})
        run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in paths.values() if p.suffix == ".png"})
