"""Every preset of every config group composes, resolves and passes the checks a study makes before any work
(a dry run: pure config, nothing loaded). A renamed key or a broken preset fails here in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from divcore.errors import InputError
from experiments.engine.config import CONFIG_DIR
from experiments.engine.pipeline import run_study
from tests.helpers import compose

GROUPS = ["pool", "embed", "selection", "metrics", "finetune", "eval", "eval/judge", "logger", "experiment", "debug",
          "paths", "report"]


def _presets(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


PRESETS = [(g, name) for g in GROUPS for name in _presets(g)]
# presets that need a companion override: a mandatory (???) key; a judge goes with a judged eval, endpoint judges
# with eval=paper (the smoke eval's judge_prefill is for local judges only, and says so before any work); a metric
# set without novelsum names another paired-comparison reference (or none)
REQUIRED = {("pool", "file"): ["pool.path={tmp}/pool.jsonl"], ("eval/judge", "openai_gpt4_turbo"): ["eval=paper"],
            ("eval/judge", "openai_gpt41"): ["eval=paper"],
            ("eval/judge", "vllm_server"): ["eval=paper"],
            ("eval/judge", "local_smollm2"): ["eval=demo"],  # the demo's judged option (its default asks no judge)
            # vectors on disk, keyed by their content: any existing file stands in for a dry run (nothing is loaded)
            ("embed", "precomputed"): ["pool=file", "pool.path={tmp}/pool.jsonl", f"embed.path={__file__}"],
            ("metrics", "embedding_only"): ["report.reference_metric=null"]}


def test_every_group_directory_is_covered():
    groups = {str(p.parent.relative_to(CONFIG_DIR)) for p in Path(CONFIG_DIR).glob("*/**/*.yaml")}
    not_study = {"accelerate", "hydra", "hydra/launcher", "hydra/job_logging", "hydra/hydra_logging"}  # Hydra's
    assert groups - not_study == set(GROUPS)


@pytest.mark.parametrize("group, name", PRESETS, ids=[f"{g}={n}" for g, n in PRESETS])
def test_preset_composes_resolves_and_passes_checks(group, name, tmp_path, monkeypatch):
    (tmp_path / "pool.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}]}\n')  # inputs must exist
    resolved = compose("study", [f"{group}={name}", f"cache_dir={tmp_path}/cache", f"results_dir={tmp_path}/results",
                                 *(o.format(tmp=tmp_path) for o in REQUIRED.get((group, name), []))])
    judge = (resolved["eval"].get("judge") or {})
    if judge.get("api_key_env"):  # a hosted judge's key is checked before any work; give it a placeholder
        monkeypatch.setenv(judge["api_key_env"], "sk-placeholder")
    plan = run_study(resolved | {"dry_run": True})["dry_run"]
    pool = plan.loc[plan["stage"] == "pool", "status"]
    assert len(pool) > 0 and set(pool) == {"to run"}, f"{group}={name}: the dry run lists no stage"
    assert (Path(resolved["results_dir"]) / "plan.csv").exists()


@pytest.mark.parametrize("launcher", _presets("hydra/launcher"))
def test_launcher_presets_compose(launcher):
    cfg = compose("study", [f"hydra/launcher={launcher}"], resolve=False, hydra=True)
    assert cfg.hydra.launcher._target_


@pytest.mark.parametrize("config, overrides, expected", [
    ("measure", ["subsets={tmp}"], {"subsets": "{tmp}"}),
    ("report", ["runs={tmp}/runs.csv"], {"runs": "{tmp}/runs.csv"}),
    ("select", ["pool.path=/data/text/", "size=10", "out={tmp}/out"], {"size": 10, "out": "{tmp}/out"}),
    ("embed_pool", ["pool.path=/data/text/", "out={tmp}/emb"], {"out": "{tmp}/emb"}),
])
def test_measure_and_report_configs_compose(config, overrides, expected, tmp_path):
    """Each secondary config resolves with no missing value and carries the overrides it was given."""
    cfg = compose(config, [o.format(tmp=tmp_path) for o in overrides])
    for key, value in expected.items():
        assert cfg[key] == (value.format(tmp=tmp_path) if isinstance(value, str) else value)
    if "pool" in cfg:
        assert cfg["pool"]["path"] == "/data/text/"


@pytest.mark.parametrize("override, message", [
    ("selection.subsets.1.params.unique_ratio=0", "selector 'duplicate' parameter unique_ratio must be"),
    ("metrics.compute.0.params.neighbors=0", "metric 'novelsum' hyperparameter neighbors must be an integer >= 1"),
    ("eval=tiny eval.name=reference_nl", r"unknown evaluator 'reference_nl' \(did you mean 'reference_nll'\?\)"),
])
def test_bad_plugin_value_fails_before_the_pool_is_read(override, message, tmp_path):
    """The pool file does not exist: reaching the pool stage would fail differently."""
    cfg = compose("study", ["pool=file", f"pool.path={tmp_path}/missing.jsonl", f"cache_dir={tmp_path}/cache",
                             f"results_dir={tmp_path}/results", "selection=demo", "metrics=default",
                             *override.split()])
    with pytest.raises(InputError, match=message):
        run_study(cfg)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("config", ["judge", "study"])
def test_benchmark_data_found_through_divbench_data(config, tmp_path, monkeypatch):
    """$DIVBENCH_DATA is searched first by every config that reads benchmark files (divbench-judge too)."""
    for relative in ("mt_bench/question.jsonl", "alpaca_eval/gpt4_1106_preview.json"):
        (tmp_path / "data" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / relative).write_text("[]")
    monkeypatch.setenv("DIVBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("DIVBENCH_SHARED", str(tmp_path / "empty"))
    cfg = compose(config, ["eval=smoke_judge"] if config == "study" else ["benchmark=mt_bench", "out=o"])
    assert cfg["eval"]["mt_bench"]["data_dir"] == str(tmp_path / "data" / "mt_bench")
    assert cfg["eval"]["alpaca_eval"]["reference_path"] == str(tmp_path / "data" / "alpaca_eval" /
                                                               "gpt4_1106_preview.json")


PRIMARY = {"study": [], "select": ["pool.path=/p", "out=/o"], "embed_pool": ["pool.path=/p", "out=/o"],
           "measure": ["subsets=/s"], "report": ["runs=/r.csv"], "judge": ["benchmark=mt_bench", "out=/o"]}


@pytest.mark.parametrize("config", PRIMARY)
def test_every_primary_config_shares_hydra_settings(config):
    """One configs/hydra/default.yaml: the project's job logging, the before-run check, no chdir, run folders
    under outputs/<study or command>/."""
    cfg = compose(config, PRIMARY[config], resolve=False, hydra=True)
    assert cfg.hydra.runtime.choices["hydra/job_logging"] == "divbench"
    assert cfg.hydra.runtime.choices["hydra/hydra_logging"] == "divbench"
    assert cfg.hydra.callbacks.before_run._target_ == "experiments.cli.command.BeforeRun"
    assert cfg.hydra.job.chdir is False and "/outputs/" in cfg.hydra.run.dir


def test_report_settings_are_one_group_for_study_and_report():
    """divbench-report's statistics and a study's report block are the same file (configs/report/); only the seed
    follows each command (the study's seed, divbench-report's seed=)."""
    assert compose("study", [], resolve=False, hydra=True).hydra.runtime.choices["report"] == "default"
    assert compose("report", ["runs=/r.csv"], resolve=False, hydra=True).hydra.runtime.choices["report@_global_"] \
        == "default"
    study = compose("study", [])["report"]
    report = compose("report", ["runs=/r.csv"])
    assert {k: report[k] for k in study if k != "seed"} == {k: v for k, v in study.items() if k != "seed"}
    assert study["seed"] == compose("study", [])["seed"] and report["seed"] == 42
    assert compose("study", ["seed=7"])["report"]["seed"] == 7


def test_paper_presets_share_one_design_and_sweep_every_subset_label():
    """paper_llama3 and paper_qwen25 differ only in the base model (study name, fine-tuning preset, embedding
    model); their sweep is every label of selection/paper.yaml, listed there only."""
    import yaml
    from omegaconf import OmegaConf

    for model in ("paper_llama3", "paper_qwen25"):  # a model preset says only what differs
        assert set(yaml.safe_load((Path(CONFIG_DIR) / "experiment" / f"{model}.yaml").read_text())) <= \
            {"defaults", "study", "embed"}
    listed = [p.name for p in Path(CONFIG_DIR).rglob("*.yaml") if "duplicate_75" in p.read_text()]
    assert listed == ["paper.yaml"]  # selection/paper.yaml
    presets = {m: compose("study", [f"experiment={m}"], resolve=False, hydra=True)
               for m in ("paper_llama3", "paper_qwen25")}
    plain = {m: OmegaConf.to_container(c, resolve=False) for m, c in presets.items()}
    labels = [s["label"] for s in compose("study", ["experiment=paper_llama3"])["selection"]["subsets"]]
    for cfg in presets.values():
        assert cfg.hydra.sweeper.params["selection.only"].split(",") == labels and len(labels) == 12
    differ = {k for k in plain["paper_llama3"] if k != "hydra" and plain["paper_llama3"][k] != plain["paper_qwen25"][k]}
    assert differ == {"study", "finetune", "embed"}
    assert plain["paper_qwen25"]["embed"] == plain["paper_llama3"]["embed"] | {"model": "Qwen/Qwen2.5-7B"}


def test_judge_reads_the_study_evaluation_members():
    """divbench-judge composes eval=paper's members (judge, MT-Bench, AlpacaEval settings) instead of copies."""
    judge = compose("judge", ["benchmark=mt_bench", "out=/o", "seed=42"])["eval"]
    paper = compose("study", ["eval=paper"])["eval"]
    assert judge["judge"] == paper["judge"]
    for member in ("mt_bench", "alpaca_eval"):
        assert judge[member] == paper[member]


def test_mini_metric_sets_are_metrics_options():
    for study in ("mini", "mini_v2"):
        assert compose("study", [f"experiment={study}"])["metrics"] == compose("study", [f"metrics={study}"])["metrics"]
