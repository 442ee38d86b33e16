"""Evaluators: each benchmark in two halves, cached as two pipeline stages.

* ``generate`` (the model -> files in the generate artifact): needs the model under evaluation, never a judge.
* ``score`` (the generate artifact -> columns of the model's row in runs.csv): reads files only; it asks the judge
  when the evaluator ``needs_judge``.

An evaluator declares the fields of its config node that only its score half reads (``score_only``: the judge's
annotator, prompts, reference answers). The generate stage's key hashes the rest of the node, so re-pointing the
judge re-judges answers without regenerating them. The declaration names the score half's fields rather than the
generate half's so that a field nobody declared enters both keys: a forgotten declaration costs a regeneration,
never a stale answer.

``eval.name`` picks what runs (:func:`evaluation`):

* ``benchmarks``: the enabled evaluators among :data:`SUITE`, each reading ``eval.<name>``; they share one
  generator (``eval.generation``) and one judge (``eval.judge``), whose identity and token totals join the row, and
  the row's ``performance`` is combined across the study's models (``eval.performance``, :mod:`eval.combined`).
* the name of a standalone evaluator (``reference_nll``): that evaluator alone, reading the whole ``eval`` config;
  its own ``performance`` is the row's.

Evaluators live in the project's one registry shape (``divcore.registry``): a name registers once and an unknown
``eval.name`` gets a "did you mean". The built-in ones register in :mod:`eval.benchmarks`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from divcore.errors import InputError
from divcore.params import Param
from divcore.registry import Registry, did_you_mean
from eval.combined import combine_performance
from eval.generation import Generator, check_generation_config, make_generator
from eval.judges import Judge, make_judge
from eval.precision import eval_precision
from finetune.precision import keyed_precision

log = logging.getLogger(__name__)

SUITE = ("alpaca_eval", "mt_bench", "reference_nll")  # eval.name=benchmarks: its members, in row order
SUITE_NAME = "benchmarks"


@dataclass
class EvalModel:
    """The model under evaluation, as the generate halves share it: the generator is built on first use and
    released (its GPU memory freed) before a half that loads the model its own way."""

    path: str
    adapter: str | None
    generation: dict[str, Any]
    name: str  # the generator's name in the answer files (alpaca_eval's ``generator``, FastChat's ``model_id``)
    data: dict[str, Path] = field(default_factory=dict)  # study files a half reads, e.g. the pool's held-out rows
    _generator: Generator | None = None

    def generator(self) -> Generator:
        if self._generator is None:
            self._generator = make_generator(dict(self.generation), self.path, self.adapter)
        return self._generator

    def release(self) -> None:
        generator, self._generator = self._generator, None
        close = getattr(generator, "close", None)
        if close is not None:
            close()


@dataclass
class Scoring:
    """What a score half may use: the judge (None for a judge-free evaluation), the judge caches' root, the eval
    artifact's folder for its own files, and ``usage``, where judged halves add one record per judge call
    (``prompt_tokens``, ``completion_tokens``, ``judge_usd``) for the row's totals."""

    judge: Judge | None
    cache_dir: str
    out_dir: Path
    usage: list[dict[str, Any]] = field(default_factory=list)


GenerateFn = Callable[[EvalModel, dict[str, Any], Path], None]
ScoreFn = Callable[[Path, dict[str, Any], Scoring], dict[str, Any]]


def _none(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class Evaluator:
    """One benchmark. ``node`` below is the config the halves read: ``eval.<name>`` in the suite (``suite_node``
    builds it when the evaluator also reads shared settings), the whole ``eval`` config when standalone."""

    name: str
    generate: GenerateFn
    score: ScoreFn
    needs_judge: bool = False
    uses_generator: bool = False  # its generate half answers prompts with the shared generator
    score_only: frozenset[str] = frozenset()  # fields of eval.<name> that only the score half reads
    columns: Callable[[dict[str, Any]], tuple[str, ...]] = lambda node: ()  # what eval.performance may combine
    performance_column: str | None = None  # standalone: the column its own ``performance`` takes in the suite
    suite_node: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # eval config -> its node in the suite
    check: Callable[[dict[str, Any], Any], None] = _none  # (node, judge config or None): fail before any work
    judge_calls: Callable[[dict[str, Any]], int] = lambda node: 0  # per evaluated model (dry-run plan)
    judge_tokens: Callable[[dict[str, Any], dict[str, Any]], tuple[float, float]] | None = None  # (node, plan:)
    leaderboard: Callable[[dict[str, Any], str], str | None] = _none  # (node, judge model): how it differs
    tables: Callable[[Path, Path], list[dict] | None] = _none  # (generate dir, eval dir): W&B rows, judge's view
    params: dict[str, Param] = field(default_factory=dict)

    @property
    def fn(self) -> GenerateFn:  # the registry names an entry by its function
        return self.generate

    @property
    def standalone(self) -> bool:
        return self.performance_column is not None


EVALUATORS: Registry[Evaluator] = Registry("evaluator")


def register(name: str, **declared: Any) -> Callable[[ScoreFn], ScoreFn]:
    """Register an evaluator: decorate its score half, name its generate half in ``generate=`` and declare the
    rest (:class:`Evaluator`'s fields)."""
    def wrap(score: ScoreFn) -> ScoreFn:
        EVALUATORS.add(name, Evaluator(name, score=score, **declared))
        return score
    return wrap


@dataclass(frozen=True)
class Member:
    evaluator: Evaluator
    node: dict[str, Any]


@dataclass(frozen=True)
class Evaluation:
    """What ``eval`` asks for: the evaluators that run, each with its config node."""

    cfg: dict[str, Any]
    members: tuple[Member, ...]
    combined: bool  # the suite: one judge, performance combined across models; else one standalone evaluator

    @property
    def judged(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.evaluator.needs_judge)

    def generate_key(self) -> dict[str, Any]:
        """What the generate artifact depends on: every candidate member's node but its score-only fields (the
        suite hashes its disabled members' nodes too) and the generator settings; the evaluated model enters
        through the fine-tuning's key, and ``eval.adapter=false`` (the base model instead) by name."""
        ev = keyed_precision(self.cfg, "eval.precision")  # bf16 keyed, fp32 as before the setting existed
        if self.combined:
            key = {"generation": ev["generation"]} | {
                name: _generated_part(EVALUATORS.get(name), ev.get(name) or {}) for name in SUITE}
            key |= {"precision": ev["precision"]} if "precision" in ev else {}
        else:
            key = {ev["name"]: _generated_part(self.members[0].evaluator, ev)}
        return key if ev.get("adapter", True) else key | {"adapter": False}

    def score_key(self) -> dict[str, Any]:
        """What the eval artifact's own config is: all of ``eval`` but the generator (in the generate key) and the
        study-level combination of columns (applied across models, not part of a model's row)."""
        ev = keyed_precision(self.cfg, "eval.precision")
        return {k: v for k, v in ev.items() if k not in ("generation", "performance")}

    def check(self, check_key: bool = True) -> None:
        """Every check that needs no model: the judge (its key unless ``check_key`` is false: a dry run calls no
        judge), each member's settings, and ``eval.performance``."""
        judge = None
        if self.combined:
            from eval.judges import JudgeConfig

            if not self.judged:
                names = [n for n in SUITE if EVALUATORS.get(n).needs_judge]
                raise InputError(f"eval: none of {', '.join(f'{n}.enabled' for n in names)} is true; enable one")
            check_performance(self)
            check_generation_config(self.cfg.get("generation") or {})
            judge = JudgeConfig.from_dict(dict(self.cfg["judge"]), check_key=check_key)
        for m in self.members:
            m.evaluator.check(m.node, judge)

    def generate(self, model_path: str, adapter: str | None, out_dir: Path, generator_name: str,
                 data: dict[str, Path] | None = None) -> None:
        """Every member's generate half into ``out_dir``; ``data``: study files the halves may read
        (:attr:`EvalModel.data`)."""
        generation = dict(self.cfg.get("generation") or {}) | {"precision": eval_precision(self.cfg)}
        model = EvalModel(model_path, adapter, generation, generator_name, dict(data or {}))
        try:
            for m in self.members:
                if not m.evaluator.uses_generator:
                    model.release()  # the generator's GPU memory goes back before this half loads the model
                m.evaluator.generate(model, m.node, out_dir)
        finally:
            model.release()

    def score(self, gen_dir: Path, cache_dir: str, out_dir: Path) -> dict[str, Any]:
        """The model's row: judged members' columns (after the judge's identity), the judge's token totals, then
        the judge-free members' columns."""
        if not self.combined:
            m = self.members[0]
            return m.evaluator.score(gen_dir, m.node, Scoring(None, cache_dir, out_dir))
        judge = make_judge(dict(self.cfg["judge"]), cache_dir)
        scoring = Scoring(judge, cache_dir, out_dir)
        row: dict[str, Any] = {"judge": judge.config.label, "judge_smoke_test": judge.config.smoke_test,
                               "judge_leaderboard_note": self.leaderboard_note(judge.config.model)}
        for m in self.judged:
            row |= m.evaluator.score(gen_dir, m.node, scoring)
        row |= usage_totals(scoring.usage)
        if row["judge_leaderboard_note"]:
            log.warning("%s", row["judge_leaderboard_note"])
        for m in self.members:
            if not m.evaluator.needs_judge:
                own = m.evaluator.score(gen_dir, m.node, Scoring(None, cache_dir, out_dir))
                row |= {m.evaluator.performance_column: own["performance"]} if m.evaluator.standalone else own
        if judge.config.smoke_test:
            log.warning("judge %s is a smoke-test judge: its scores exercise the code path and are not valid "
                        "benchmark numbers", judge.config.model)
        return row

    def leaderboard_note(self, judge_model: str) -> str:
        """Empty when the judge is the published leaderboards' for every judged member; else what differs."""
        differs = [d for m in self.judged if (d := m.evaluator.leaderboard(m.node, judge_model))]
        if not differs:
            return ""
        return (f"judged by {judge_model}, not by the published leaderboards' judges ({'; '.join(differs)}): "
                "compare these scores only with scores from the same judge")

    def tables(self, gen_dir: Path, eval_dir: Path) -> dict[str, list[dict]]:
        """Per judged member: its generations with what the judge saw and said (W&B tables)."""
        return {m.evaluator.name: rows for m in self.members
                if (rows := m.evaluator.tables(gen_dir, eval_dir)) is not None}

    def judge_calls(self) -> dict[str, int]:
        """Judge calls per evaluated model, by judged member."""
        return {m.evaluator.name: m.evaluator.judge_calls(m.node) for m in self.judged}

    def performance(self, runs: pd.DataFrame) -> pd.Series:
        """The correlation target of every model: combined across them by ``eval.performance`` in the suite, the
        standalone evaluator's own otherwise."""
        if not self.combined:
            return runs["performance"]
        perf = self.cfg["performance"]
        return combine_performance(runs, list(perf["columns"]), perf.get("method", "zscore_mean"))

    def performance_source(self) -> str:
        """What the performance column is, e.g. ``neg_reference_nll`` or ``zscore_mean:alpaca_eval_win_rate,...``."""
        if not self.combined:
            return str(self.members[0].evaluator.performance_column)
        perf = self.cfg["performance"]
        return f"{perf.get('method', 'zscore_mean')}:{','.join(perf['columns'])}"


def _generated_part(evaluator: Evaluator, node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in evaluator.score_only}


def evaluation(cfg: dict[str, Any]) -> Evaluation:
    """The evaluation ``cfg`` (the ``eval`` config) asks for; an unknown ``eval.name`` fails here, before any work.
    A config without ``name`` is the suite's (the benchmark helpers and tests pass bare suite configs)."""
    name = cfg.get("name", SUITE_NAME)
    if name == SUITE_NAME:
        enabled = [EVALUATORS.get(n) for n in SUITE if (cfg.get(n) or {}).get("enabled")]
        return Evaluation(cfg, tuple(Member(e, e.suite_node(cfg) if e.suite_node else cfg[e.name]) for e in enabled),
                          combined=True)
    if name not in EVALUATORS:
        standalone = ", ".join(e.name for e in EVALUATORS if e.standalone)
        raise InputError(f"unknown evaluator {name!r}{did_you_mean(name, [SUITE_NAME, *EVALUATORS.names()])}; "
                         f"eval.name takes {SUITE_NAME} (the enabled ones of {', '.join(SUITE)}) or a standalone "
                         f"evaluator ({standalone})")
    evaluator = EVALUATORS.get(name)
    if not evaluator.standalone:
        raise InputError(f"eval.name={name}: {name} runs inside eval.name={SUITE_NAME} (eval.{name}.enabled=true), "
                         f"not alone; standalone evaluators: "
                         f"{', '.join(e.name for e in EVALUATORS if e.standalone)}")
    return Evaluation(cfg, (Member(evaluator, cfg),), combined=False)


def check_performance(ev: Evaluation) -> None:
    """``eval.performance`` must combine score columns that the enabled members produce."""
    from eval.combined import METHODS

    perf = ev.cfg.get("performance") or {}
    if perf.get("method", "zscore_mean") not in METHODS:
        raise InputError(f"eval.performance.method must be one of {METHODS}, got {perf.get('method')!r}")
    produced = {c for m in ev.members for c in m.evaluator.columns(m.node)}
    if not perf.get("columns"):
        raise InputError(f"eval.performance.columns is empty; choose from {sorted(produced)}")
    unknown = [c for c in perf["columns"] if c not in produced]
    if unknown:
        raise InputError(f"eval.performance.columns: {unknown} not produced by the enabled benchmarks; choose "
                         f"from {sorted(produced)}")


def usage_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Tokens and USD over judgments; USD is None when any judgment's cost is unknown (no price table)."""
    usd = [r.get("judge_usd") for r in rows]
    return {"judge_input_tokens": sum(int(r.get("prompt_tokens") or 0) for r in rows),
            "judge_output_tokens": sum(int(r.get("completion_tokens") or 0) for r in rows),
            "judge_usd": None if any(u is None for u in usd) else float(sum(usd))}
