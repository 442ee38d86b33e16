"""The study's stages: pool -> embeddings -> pool signals -> subsets -> metrics; subsets -> fine-tune -> generate
-> evaluate (the report follows, :mod:`experiments.engine.pipeline`).

Each stage is one :class:`~experiments.engine.stages.Stage` declaration in :data:`DAG` with its build function,
its artifact class and its key part, all beside each other here; the engine (``experiments.engine.pipeline.run``),
the dry run, ``stop_after`` and the cache keys read nothing else. A stage's cache key is its own resolved config
(local inputs by content, runtime knobs left out) plus the keys of what it consumes; a finished artifact is never
recomputed. Evaluation runs through the evaluators (:mod:`eval.evaluators`): their generate halves in ``generate``,
their score halves in ``eval``.

Adding a stage: a ``Stage(...)`` line in :data:`DAG` with its key part and build function here, its artifact class
(:mod:`experiments.engine.stages`) and its config group (``configs/``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

import metrics
import selection
from divcore.errors import InputError
from eval.evaluators import evaluation
from experiments.data.pools import embedding_text, filter_prompt_length, load_conversations, split_holdout
from experiments.embedding.backends import (
    DEFAULT_CHUNK,
    check_precomputed,
    embed_texts,
    finish_embedding,
    precomputed_embeddings,
)
from experiments.engine.design import StudyDesign, design_key, make_design, select_entry, subset_fields
from experiments.engine.fingerprint import content_keys
from experiments.engine.keys import result_config, result_part
from experiments.engine.stages import (
    CHEAP,
    Call,
    Check,
    Checked,
    Embeddings,
    EvalRow,
    FinetuneOutput,
    Generations,
    KeyInputs,
    MetricsRow,
    PoolRows,
    PoolSample,
    Signals,
    Stage,
    Subset,
    Trained,
    check_dag,
    stage_keys,
)
from experiments.engine.store import ArtifactStore
from experiments.engine.tracking import log_to_run
from finetune.models import finetuned, resolve_model
from metrics.registry import metric_needs
from metrics.signals import PoolSignals, SignalNeeds, check_needs, pool_signals
from selection.registry import check_params, selector_needs
from selection.signals import length_proxy

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ subset entries and per-entry config --------
def subset_plan(sel_cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand the selection config into one entry per (subset, seed), validated before any heavy work."""
    size = sel_cfg.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InputError(f"selection.size must be a positive integer, got {size!r}")
    plan = []
    for i, item in enumerate(sel_cfg["subsets"]):
        spec = selection.get_selector(item["selector"])
        params = dict(item.get("params") or {})
        check_params(spec, params)
        extra = _entry_options(item, f"selection.subsets.{i}")
        for seed in item.get("seeds", sel_cfg["seeds"]):
            plan.append({"label": item.get("label", item["selector"]), "selector": item["selector"],
                         "params": params, "seed": int(seed), "size": int(sel_cfg["size"])} | extra)
    labels = [(p["label"], p["seed"]) for p in plan]
    if len(set(labels)) != len(labels):
        twice = sorted({f"{label} (seed {seed})" for label, seed in labels if labels.count((label, seed)) > 1})
        raise InputError(f"selection.subsets: {', '.join(twice)} named twice; give each subset a distinct label "
                         "(selection.subsets.<i>.label=...)")
    return plan


def _entry_options(item: dict[str, Any], where: str) -> dict[str, Any]:
    """A subset item's optional keys: ``pool_fraction`` (select on the seeded random fraction of the pool, the seed
    choosing it: a deterministic selector made replicable) and ``train_seeds`` (this item's training replicates,
    in place of ``finetune.seeds``: a second seed on part of the study). Absent keys stay absent, so the entries
    (and cache keys) of studies that use neither are unchanged."""
    out: dict[str, Any] = {}
    fraction = item.get("pool_fraction")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise InputError(f"{where}.pool_fraction must be in (0, 1] (0.5: a seeded random half), got {fraction!r}")
        out["pool_fraction"] = float(fraction)
    if item.get("train_seeds") is not None:
        out["train_seeds"] = train_seeds({"seeds": item["train_seeds"]}, f"{where}.train_seeds")
    return out


def train_seeds(ft_cfg: dict[str, Any], where: str = "finetune.seeds") -> list[int]:
    """The training replicates of every subset: ``finetune.seeds``, or the one ``finetune.args.seed``."""
    seeds = ft_cfg.get("seeds")
    if seeds is None:
        return [int(ft_cfg["args"]["seed"])]
    if isinstance(seeds, (int, str)) or not seeds or len(set(seeds)) != len(seeds) or \
            not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds):
        raise InputError(f"{where} must be a non-empty list of distinct integers (training replicates), "
                         f"got {seeds!r}; e.g. {where}=[1,2,3], or null for one run with finetune.args.seed")
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
    """Each (subset, seed) entry once per training seed; subset and metrics artifacts are shared by them.
    ``selection.subset_train_seeds=false`` sets aside the items' own ``train_seeds``: every subset trains once per
    ``finetune.seeds`` (a replication without the study's noise-floor replicates)."""
    own = (cfg.get("selection") or {}).get("subset_train_seeds", True)
    if not isinstance(own, bool):
        raise InputError(f"selection.subset_train_seeds must be true or false, got {own!r}")
    if not own:
        entries = [{k: v for k, v in e.items() if k != "train_seeds"} for e in entries]
    replicated = cfg["finetune"].get("seeds") is not None or any("train_seeds" in e for e in entries)
    return [e | {"train_seed": t, "replicated": replicated} for e in entries
            for t in e.get("train_seeds") or train_seeds(cfg["finetune"])]


def replicate_name(entry: dict[str, Any]) -> str:
    """``<label>-s<selection seed>``, plus ``-t<training seed>`` for a training replicate."""
    name = f"{entry['label']}-s{entry['seed']}"
    return f"{name}-t{entry['train_seed']}" if entry.get("replicated") else name


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


def data_column(convs: list[dict], key: str) -> Any:
    """A per-row column the pool carries for every conversation (quality scores, tags), else None."""
    if not all(key in c for c in convs):
        return None
    values = [c[key] for c in convs]
    return np.asarray(values, dtype=np.float64) if key == "quality" else values


def rows_of(call: Call) -> list[dict]:
    """The subset's pool rows, in pick order."""
    return [call.inputs["pool"][i] for i in call.inputs["subset"]]


# ------------------------------------------------------------------ pool ----------------------------------------
def _pool_key(k: KeyInputs) -> dict[str, Any]:
    return {"pool": k.keyed["pool"]}


def read_pool(call: Call) -> list[dict]:
    """The pool of the pool config, read and checked before the artifact's lock is taken: a bad pool file leaves
    nothing in the cache, not even a lock (the key has local files by content, so the path is read from the
    config)."""
    cfg = call.cfg["pool"]
    convs = load_conversations(cfg.get("path"), cfg["format"], cfg["on_invalid"], cfg.get("sources"))
    pool, heldout = split_holdout(filter_prompt_length(convs, cfg.get("max_prompt_chars")), cfg.get("size"),
                                  cfg.get("holdout"), int(cfg["seed"]))
    return PoolSample(pool, heldout) if heldout else pool


# ------------------------------------------------------------------ embed ---------------------------------------
def _embed_key(k: KeyInputs) -> dict[str, Any]:
    return {"embed": content_keys(embed_spec(k.result), ArtifactStore(k.result["cache_dir"]).hashes)}


def embed_pool_rows(call: Call) -> np.ndarray | Path:
    """The pool's embeddings by the embed config, every option passed (runtime knobs included: chunk size, vLLM's
    engine arguments); precomputed vectors are matched against the pool's source file by file. Text encoders
    write a resumable work file named by the artifact's key (a killed run picks it up again); it runs under the
    artifact's lock, so twin sweep jobs wait instead of sharing the file."""
    cfg, convs = call.cfg["embed"], call.inputs["pool"]
    if cfg["backend"] == "precomputed":
        return precomputed_embeddings(cfg["path"], len(convs), call.cfg["pool"].get("path"), cfg.get("dim"))
    work = Path(call.cfg["cache_dir"]) / "partial" / "embed" / call.folder.name
    runtime = cfg.get("runtime") or {}
    embed_texts([embedding_text(c) for c in convs], resolve_model(cfg["model"], call.cfg["cache_dir"]),
                cfg["backend"], max_length=int(cfg["max_length"]), batch_size=int(cfg.get("batch_size") or 1),
                device=cfg["device"], chunk_size=int(runtime.get("chunk_size") or DEFAULT_CHUNK), work_dir=work,
                vllm=runtime.get("vllm"))
    finish_embedding(work, call.out)
    return call.out / Embeddings.FILE


def embed_gpu_hours(cfg: dict[str, Any]) -> float:
    """Embedding the pool: its rows times the tokens embedded per row, at ``plan.embed_tokens_per_gpu_s``."""
    p = cfg["plan"]
    rows = cfg["pool"].get("size") or p["pool_rows"]
    tokens = rows * min(p["example_tokens"], cfg["embed"].get("max_length") or 256)
    return tokens / p["embed_tokens_per_gpu_s"] / 3600


# ------------------------------------------------------------------ signals -------------------------------------
def _signals_key(k: KeyInputs) -> dict[str, Any]:
    return {"signals": signal_needs(k.keyed, k.entry).key()}


def check_signal_needs(c: Checked) -> None:
    """What the signals need of the pool (enough rows for every k-means, tags for tag labels), checked on the pool
    alone, so that a bad need is refused before the embeddings are computed."""
    check_needs(SignalNeeds.from_key(c.specs["signals"]["signals"]), len(c.value),
                has_tags=data_column(c.value, "tags") is not None)


def pool_signals_of(call: Call) -> PoolSignals:
    """The pool signals (metrics.signals) for the needs in the key, read by every subset's selector and metrics."""
    convs = call.inputs["pool"]
    return pool_signals(call.inputs["embed"], SignalNeeds.from_key(call.spec["signals"]),
                        tags=data_column(convs, "tags"), quality=data_column(convs, "quality"),
                        proxy_quality=length_proxy(convs), device=call.cfg.get("device", "cpu"))


# ------------------------------------------------------------------ subset --------------------------------------
# ------------------------------------------------------------------ design --------------------------------------
def _design_key(k: KeyInputs) -> dict[str, Any] | None:
    """The study design's key part (experiments.engine.design); None (no such stage) without a design."""
    if "selection" not in k.result:
        return None
    return design_key(k.result["selection"], subset_plan(k.result["selection"]))


def design_of(call: Call) -> StudyDesign:
    """Every entry of the plan selected, overlap-capped and token-matched together (experiments.engine.design)."""
    return make_design(subset_plan(call.cfg["selection"]), call.cfg["selection"], pool_inputs(call),
                       call.inputs["pool"], call.cfg["cache_dir"])


# ------------------------------------------------------------------ subset --------------------------------------
def _subset_key(k: KeyInputs) -> dict[str, Any] | None:
    """The entry's selection; under a study design (selection.match_tokens / max_overlap) also the design's key,
    since its rows then depend on the whole plan."""
    if k.entry is None:
        return None
    return {"subset": result_part(subset_fields(k.entry))} | (_design_key(k) or {})


def check_subset_size(c: Checked) -> None:
    """A selector that picks distinct rows cannot pick more rows than the pool has: refused before embedding."""
    for entry in c.entries:
        if selection.get_selector(entry["selector"]).distinct and entry["size"] > len(c.value):
            raise InputError(f"size={entry['size']} is larger than the pool ({len(c.value)} rows): lower size or use "
                             "a larger pool")


def pool_inputs(call: Call) -> selection.PoolInputs:
    """What selectors read about the pool; built once per engine run, the first time a selector runs."""
    if "pool_inputs" not in call.memo:
        convs, emb, signals = call.inputs["pool"], call.inputs["embed"], call.inputs["signals"]
        call.memo["pool_inputs"] = selection.PoolInputs(
            size=emb.shape[0], embeddings=emb, quality=signals.quality, tags=data_column(convs, "tags"),
            proxy_quality=signals.proxy_quality, fingerprint=call.store.path("embed", call.specs["embed"]).name,
            signals=signals)
    return call.memo["pool_inputs"]


def select_rows(call: Call) -> selection.Selection:
    """The entry's selection: from the study design when there is one, else selected here (on its pool fraction
    when it names one)."""
    if "design" in call.specs:
        return selection.Selection(*call.inputs["design"].rows(call.entry))
    return select_entry(pool_inputs(call), call.entry)


def warn_if_selected_before(call: Call, indices: list[int]) -> None:
    """Two subset entries that select the same rows are one subset counted twice in every correlation (e.g. a
    deterministic selector listed with two seeds): say so, naming both."""
    name = f"{call.entry['label']} (seed {call.entry['seed']})"
    first = call.memo.setdefault("selected", {}).setdefault(tuple(sorted(indices)), name)
    if first != name:
        log.warning("subsets %s and %s select the same rows, so the report counts one subset twice; give one of "
                    "them other parameters, or list a deterministic selector once", first, name)


# ------------------------------------------------------------------ metrics -------------------------------------
def _metrics_key(k: KeyInputs) -> dict[str, Any]:
    return {"metrics": list(k.keyed["metrics"]["compute"])}


def subset_metrics(call: Call) -> dict[str, Any]:
    """The subset's diversity metrics (density / coverage reference: the whole pool)."""
    indices, sub, emb = call.inputs["subset"], rows_of(call), call.inputs["embed"]
    inputs = metrics.MetricInputs(embeddings=emb[indices], reference=emb, texts=[embedding_text(c) for c in sub],
                                  quality=data_column(sub, "quality"), tags=data_column(sub, "tags"),
                                  reference_tags=data_column(call.inputs["pool"], "tags"),
                                  signals=call.inputs["signals"], rows=np.asarray(indices))
    row = metrics.compute(call.cfg["metrics"]["compute"], inputs)
    if call.wandb is not None:
        call.wandb.log(row)
    return row


# ------------------------------------------------------------------ finetune ------------------------------------
def _finetune_key(k: KeyInputs) -> dict[str, Any] | None:
    """None for divbench-select (no fine-tuning config: selection and metrics only)."""
    return {"finetune": finetune_config(k.keyed, k.entry)} if "finetune" in k.keyed else None


def check_turns(c: Checked) -> None:
    """Fine-tuning needs conversations: a pool of plain-text rows is refused before anything is embedded."""
    if any("messages" not in conv for conv in c.value):
        raise InputError("the pool holds plain-text rows (no turns), which cannot be fine-tuned on: give the study "
                         "conversations, or use divbench-select / divbench-measure on plain text")


def base_model(call: Call) -> str:
    """The base model, resolved (and converted) once per run, only when a model is needed."""
    if "base_model" not in call.memo:
        call.memo["base_model"] = resolve_model(call.cfg["finetune"]["base_model"], call.cfg["cache_dir"])
    return call.memo["base_model"]


def checkpoint_dir(call: Call) -> Path:
    """Where the trainer checkpoints a subset's fine-tuning so a killed run resumes (finetune.resume)."""
    return Path(call.cfg["cache_dir"]) / "checkpoints" / call.folder.name


def train(call: Call) -> Trained:
    """Fine-tune the base model on the subset's rows, into the artifact folder; a collective (distributed) build
    trains into the checkpoint folder all processes share, which the main process then moves into place."""
    from finetune.sft import train_sft  # heavy import (TRL), only when training is due

    ft_cfg = finetune_config(call.cfg, call.entry)
    if call.wandb is not None:  # TRL streams its loss curves into this stage's W&B run
        ft_cfg = ft_cfg | {"args": ft_cfg["args"] | {"report_to": ["wandb"]}}
    resume = call.collective or call.cfg["finetune"].get("resume")
    ckpt = checkpoint_dir(call) if resume else None
    model = ckpt / "final" if call.out is None else call.out / FinetuneOutput.MODEL
    return Trained(model, train_sft(rows_of(call), base_model(call), model, ft_cfg, checkpoint_dir=ckpt))


def drop_checkpoints(call: Call, model: Path) -> None:
    """The finished model is in the store, so its resume points are spent (kept with keep_checkpoints)."""
    ckpt = checkpoint_dir(call)
    if ckpt.exists() and not call.cfg["finetune"].get("keep_checkpoints"):
        shutil.rmtree(ckpt)


def finetune_gpu_hours(cfg: dict[str, Any]) -> float:
    """Fine-tuning one subset: its rows times the tokens per row times epochs, at ``finetune_tokens_per_gpu_s``."""
    p = cfg["plan"]
    epochs = float((cfg["finetune"].get("args") or {}).get("num_train_epochs", 1))
    tokens = cfg["selection"]["size"] * min(p["example_tokens"], cfg["finetune"].get("max_length") or 2048)
    return tokens * epochs / p["finetune_tokens_per_gpu_s"] / 3600


# ------------------------------------------------------------------ generate ------------------------------------
def _generate_key(k: KeyInputs) -> dict[str, Any] | None:
    return evaluation(k.keyed["eval"]).generate_key() if "eval" in k.keyed else None


def evaluated_model(call: Call) -> tuple[str, str | None]:
    """(model, adapter) to evaluate: the fine-tuned one, or the base model when eval.adapter is false."""
    if not call.cfg["eval"].get("adapter", True):
        return base_model(call), None
    return finetuned(call.inputs["finetune"], base_model(call))


def generate(call: Call) -> None:
    """The evaluators' generate halves on the evaluated model, writing their own files into the artifact."""
    model_path, adapter = evaluated_model(call)
    evaluation(call.cfg["eval"]).generate(model_path, adapter, call.out,
                                          generator_name=f"{call.cfg['study']}-{replicate_name(call.entry)}",
                                          data=study_files(call))


def study_files(call: Call) -> dict[str, Path]:
    """Study files an evaluator may read: the pool's held-out conversations (``pool.holdout``)."""
    heldout = call.store.path("pool", call.specs["pool"]) / PoolRows.HELDOUT
    return {"heldout": heldout} if heldout.exists() else {}


def generate_gpu_hours(cfg: dict[str, Any]) -> float:
    """One generated answer per judge call, at ``plan.generate_tokens_per_gpu_s``."""
    p = cfg["plan"]
    tokens = sum(evaluation(cfg["eval"]).judge_calls().values()) * p["answer_tokens"]
    return tokens / p["generate_tokens_per_gpu_s"] / 3600


# ------------------------------------------------------------------ eval ----------------------------------------
def _eval_key(k: KeyInputs) -> dict[str, Any]:
    return {"eval": evaluation(k.keyed["eval"]).score_key()}


def score(call: Call) -> dict[str, Any]:
    """The evaluators' score halves on the generations (judging where they need it)."""
    ev, gen_dir = evaluation(call.cfg["eval"]), call.inputs["generate"]
    result = ev.score(gen_dir, call.cfg["cache_dir"], call.out)
    if call.wandb is not None:
        call.wandb.log(call.inputs["metrics"] | {k: v for k, v in result.items() if isinstance(v, (int, float))})
        log_to_run(call.wandb, ev.tables(gen_dir, call.out))
    return result


def log_scores(call: Call, result: dict[str, Any]) -> None:
    log.info("%s evaluated: %s", replicate_name(call.entry),
             {k: v for k, v in result.items() if k in ("performance", "alpaca_eval_win_rate", "mt_bench_score")})


# The study as a DAG of stages, in the order they run. A new stage is one declaration here.
DAG = check_dag((
    Stage("pool", (), PoolRows, _pool_key, build=lambda call: call.prepared, prepare=read_pool, cost=CHEAP,
          per_subset=False, config="pool"),
    Stage("embed", ("pool",), Embeddings, _embed_key, build=embed_pool_rows, per_subset=False, config="embed",
          gpu_hours=embed_gpu_hours),
    Stage("signals", ("embed",), Signals, _signals_key, build=pool_signals_of, per_subset=False, reads=("pool",),
          checks=(Check("pool", check_signal_needs),)),
    Stage("design", ("signals",), StudyDesign, _design_key, build=design_of, cost=CHEAP, per_subset=False,
          reads=("pool", "embed")),
    Stage("subset", ("embed",), Subset, _subset_key, build=select_rows, cost=CHEAP,
          reads=("pool", "signals", "design"), finish=warn_if_selected_before,
          checks=(Check("pool", check_subset_size),)),
    Stage("metrics", ("subset",), MetricsRow, _metrics_key, build=subset_metrics, cost=CHEAP,
          reads=("pool", "embed", "signals"), config="metrics"),
    Stage("finetune", ("subset",), FinetuneOutput, _finetune_key, build=train, reads=("pool",), config="finetune",
          gpu_hours=finetune_gpu_hours, collective=True, finish=drop_checkpoints, checks=(Check("pool", check_turns),)),
    Stage("generate", ("finetune",), Generations, _generate_key, build=generate, config="eval",
          gpu_hours=generate_gpu_hours),
    Stage("eval", ("generate",), EvalRow, _eval_key, build=score, reads=("metrics",), config="eval", judged=True,
          finish=log_scores),
))
STAGES = tuple(stage.name for stage in DAG)


def config_groups(dag: tuple[Stage, ...]) -> tuple[str, ...]:
    """The config groups the stages' keys read (``Stage.config``), once each."""
    return tuple(dict.fromkeys(stage.config for stage in dag if stage.config))


def keyed_config(cfg: dict[str, Any], groups: tuple[str, ...]) -> dict[str, Any]:
    """The config with every local file or folder its stage groups name (pool, model and adapter folders, judge
    data) replaced by its content fingerprint (experiments.engine.fingerprint): cache keys follow content, not
    paths."""
    hashes = ArtifactStore(cfg["cache_dir"]).hashes  # saved with the next artifact built, not before
    return cfg | {g: content_keys(cfg[g], hashes) for g in groups if g in cfg}


def stage_specs(cfg: dict[str, Any], entry: dict[str, Any] | None = None, dag: tuple[Stage, ...] = DAG
                ) -> dict[str, dict]:
    """Each stage's cache key: its own resolved config (local inputs by content, runtime knobs left out) plus the
    keys of what it consumes (the DAG's edges). No stage output is read, so a dry run can tell what is done
    without loading anything. Without ``entry``: the study-level (shared) stages only."""
    groups = config_groups(dag)
    result = result_config(cfg, groups)  # runtime knobs (experiments.engine.keys) are never hashed
    return stage_keys(dag, KeyInputs(result=result, keyed=keyed_config(result, groups), entry=entry))
