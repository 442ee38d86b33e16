"""The whole study through Hydra on a tiny model and a small real pool; resumption; CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from experiments.cli.study import run
from tests.helpers import KEY_ENV, CliResult, compose, run_cli
from tests.judge_server import JudgeServer


def _tiny_overrides(tmp: Path, model: str, judge_url: str | None = None) -> list[str]:
    """The ``debug=tiny`` study on ``model``; judged (AlpacaEval + MT-Bench against the judge at ``judge_url``) or,
    without a judge, debug=tiny's judge-free reference-NLL evaluation."""
    base = ["debug=tiny", f"cache_dir={tmp}/cache", f"results_dir={tmp}/results", f"logger.dir={tmp}/wandb",
            f"embed.model={model}", f"finetune.base_model={model}", "finetune.args.disable_tqdm=true"]
    if judge_url is None:
        return base
    return base + ["eval=smoke_judge", "eval/judge=vllm_server", f"eval.judge.base_url={judge_url}",
                   f"eval.judge.api_key_env={KEY_ENV}", "eval.judge.model=test-judge", "eval.judge.max_retries=2",
                   "eval.judge.backoff_s=0", "eval.alpaca_eval.n_examples=3", "eval.alpaca_eval.max_new_tokens=6",
                   "eval.mt_bench.n_questions=2", "eval.mt_bench.max_new_tokens=6", "eval.mt_bench.judge_prefill=",
                   "eval.mt_bench.judge_max_tokens=16", "eval.reference_nll.n_examples=2",
                   "eval.reference_nll.max_length=96", "eval.generation.batch_size=4",
                   "eval.performance.method=zscore_mean",  # the demo correlates neg_reference_nll; test the z-score
                   "eval.performance.columns=[alpaca_eval_win_rate,mt_bench_score]",
                   "eval.generation.temperature=1.0"]  # an untrained model's greedy answer is blank


SECRET = "sk-divbench-never-log-me-1234"  # the judge key (in KEY_ENV) that no file or log may hold


def _varied_judge(body: dict) -> str:
    """A judge whose verdict depends on what it is shown, so benchmark scores differ across models."""
    return f"The answer is fine. Rating: [[{1 + len(body['messages'][-1]['content']) % 10}]]"


def _varied_logprobs(body: dict) -> list[tuple[str, float]]:
    return [("m", -(len(body["messages"][-1]["content"]) % 7) / 3), ("M", -1.0)]


def _compose(overrides: list[str]):
    return compose("study", overrides=overrides, resolve=False)


def _artifacts(cache: Path) -> dict[str, float]:
    return {str(p.relative_to(cache)): p.stat().st_mtime for p in cache.glob("*/*/_complete.json")}


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resume(tmp_path, tiny_model, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with JudgeServer(_varied_judge, logprobs=_varied_logprobs) as server:
        _judged_study(tmp_path, tiny_model, server, caplog)
    assert server.headers and all(h.get("authorization") == f"Bearer {SECRET}" for h in server.headers)
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked and SECRET not in caplog.text  # the key reached the endpoint and nothing else


def _judged_study(tmp_path: Path, tiny_model: str, server: JudgeServer, caplog) -> None:
    caplog.set_level("DEBUG")
    overrides = _tiny_overrides(tmp_path, tiny_model, server.base_url)
    result = run(_compose(overrides))
    res = tmp_path / "results"
    runs = pd.read_csv(res / "runs.csv")
    assert len(runs) == 6 and set(runs["selector"]) == {"random", "duplicate", "kcenter", "novelselect"}
    assert list(runs.loc[runs["subset"] == "duplicate_25", "unique_rows"]) == [1]
    assert runs["performance"].notna().all() and runs["novelsum"].notna().all()
    assert runs["alpaca_eval_win_rate"].between(0, 100).all() and runs["mt_bench_score"].between(1, 10).all()
    assert (runs["alpaca_eval_n"] + runs["alpaca_eval_n_failed"] == 3).all() and (runs["mt_bench_n"] == 4).all()
    assert runs["neg_reference_nll"].notna().all() and not runs["judge_smoke_test"].any()
    z = [(runs[c] - runs[c].mean()) / runs[c].std(ddof=0) for c in ("alpaca_eval_win_rate", "mt_bench_score")]
    np.testing.assert_allclose(runs["performance"], (z[0] + z[1]) / 2)
    table = pd.read_csv(res / "table.csv")
    configured = {m["name"] for m in _compose(overrides).metrics.compute}
    assert set(table["metric"]) == configured and {"novelsum", "distsum_cosine", "vendi"} <= configured
    assert table[["pearson_r", "spearman_rho"]].abs().max().max() <= 1.0
    md = (res / "table.md").read_text()
    assert md.startswith("> **Note:** Scores judged by test-judge, not by the published leaderboards' judges")
    assert "\n| base_model | metric |" in md
    assert runs["judge_usd"].eq(0).all() and (runs["judge_input_tokens"] > 0).all()  # vllm_server: price 0
    assert (res / "scatter_novelsum.png").exists() and (res / "scatter_distsum_cosine.png").exists()
    assert set(result["timings"]) == {"pool", "embed", "signals", "subset", "metrics", "finetune", "generate", "eval",
                                      "report"}
    assert len(list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))) == 6 * 5 + 1  # (subset, stage) + study

    before = _artifacts(tmp_path / "cache")
    assert len([k for k in before if k.startswith("finetune/")]) == 6
    rerun = run(_compose(overrides))
    assert _artifacts(tmp_path / "cache") == before  # nothing recomputed
    pd.testing.assert_frame_equal(rerun["runs"], runs)

    asked = len(server.requests)
    run(_compose(overrides + ["eval.judge.model=another-judge"]))  # re-pointing the judge redoes only judging
    after = _artifacts(tmp_path / "cache")
    new = {k.split("/")[0] for k in set(after) - set(before)}
    assert new == {"eval"} and all(after[k] == v for k, v in before.items())
    assert len(server.requests) - asked == asked  # the new judge re-annotates everything, reusing nothing
    _export_study(tmp_path, runs)


def _export_study(tmp_path: Path, runs: pd.DataFrame) -> None:
    """divbench-select from_study=: every subset of the finished study as files and a dataset with its scores."""
    import datasets

    from experiments.engine.subsets import run_select

    cached = _artifacts(tmp_path / "cache")
    out = tmp_path / "export"
    run_select({"from_study": str(tmp_path / "results"), "out": str(out), "map": True})
    assert _artifacts(tmp_path / "cache") == cached  # read back from the study's cache, nothing recomputed
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(f"{r.subset}-s{r.seed}"
                                                                         for r in runs.itertuples())
    ns = out / "novelselect-s0"
    ds = datasets.load_from_disk(str(ns / "hf"))
    assert ds.num_rows == 4 and ds["messages"][0][0]["role"] == "user"
    card = (ns / "hf" / "README.md").read_text()
    row = runs[runs["subset"] == "novelselect"].iloc[0]
    assert "## Fine-tuned model" in card and "`performance`" in card and f"{row['mt_bench_score']:.6g}" in card
    assert json.loads((ns / "scores.json").read_text())["performance"] == pytest.approx(row["performance"])
    assert json.loads((ns / "metrics.json").read_text())["novelsum"] == pytest.approx(row["novelsum"])
    assert (ns / "novelselect_4_dense_0.5_dist_1.0_indices.json").exists()
    assert pd.read_parquet(out / "pool.parquet")["novelselect-s0"].sum() == 4


def _cli(*args: str, tmp: Path) -> CliResult:
    return run_cli("study", f"cache_dir={tmp}/c", f"results_dir={tmp}/r", "logger=none", f"hydra.run.dir={tmp}/o",
                   *args, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["selection.sizee=3"], "selection.sizee"),
    (["metrics.compute.0.params.neighbours=3"], "metrics.compute.0.params.neighbours"),
    (["selection.subsets.0.selector=randomm"], "unknown selector 'randomm'"),
    (["metrics.compute.0.name=novelsumm"], "unknown metric 'novelsumm'"),
    (["+metrics.compute.0.params.neighbours=3"], "no hyperparameter(s) ['neighbours']"),
    (["pool=file", "pool.path=/nonexistent/pool.json"], "/nonexistent/pool.json does not exist"),
    (["eval=demo", "eval/judge=openai_gpt4_turbo", "eval.judge.api_key_env=DIVBENCH_NO_SUCH_KEY"],
     "DIVBENCH_NO_SUCH_KEY (eval.judge.api_key_env) is not set"),
    (["eval=demo", "eval.judge.kind=openai"], "eval.judge.base_url is empty"),  # the demo's judged option
    (["eval=demo", "eval.performance.method=median"], "eval.performance.method must be one of"),
    (["finetune.seeds=[1,1]"], "finetune.seeds must be a non-empty list of distinct integers"),
    (["selection.scope=[nope:1]"], "selection.scope names no subset of the plan: ['nope:1']"),
    (["selection.subset_train_seeds=maybe"], "selection.subset_train_seeds must be true or false"),
    (["report.reference_metric=nope"], "report.reference_metric='nope' is not among metrics.compute"),
])
def test_cli_bad_input_fails_clearly(tmp_path, args, message):
    proc = _cli(*args, tmp=tmp_path)
    assert proc.code == 2, proc.output[-2000:]
    assert message in proc.output and "Traceback" not in proc.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_finetune_job_publishes_models_the_study_reuses(tmp_path, tiny_model):
    """The accelerate entry point (here on one process) trains a subset's model into the cache with resumable
    checkpoints; the study then evaluates it without training again."""
    from experiments.cli.finetune import finetune_subsets

    overrides = _tiny_overrides(tmp_path, tiny_model) + ["selection.only=random", "logger.enabled=false",
                                                         "finetune.resume=true", "+finetune.args.save_steps=1"]
    resolved = OmegaConf.to_container(_compose(overrides), resolve=True)
    seeds = next(s["seeds"] for s in resolved["selection"]["subsets"] if s["label"] == "random")
    assert finetune_subsets(resolved) == [f"random-s{s}" for s in seeds]
    trained = {k: v for k, v in _artifacts(tmp_path / "cache").items() if k.startswith("finetune/")}
    assert len(trained) == len(seeds) and not list((tmp_path / "cache" / "checkpoints").glob("*"))  # spent, removed
    train = json.loads((tmp_path / "cache" / next(iter(trained))).with_name("train.json").read_text())
    assert train["world_size"] == 1 and train["effective_batch_size"] >= 1 and train["global_step"] >= 1
    assert finetune_subsets(resolved) == []  # already in the cache
    run(_compose(overrides))
    after = {k: v for k, v in _artifacts(tmp_path / "cache").items() if k.startswith("finetune/")}
    assert after == trained and any(k.startswith("eval/") for k in _artifacts(tmp_path / "cache"))


@pytest.mark.slow
def test_training_replicates_average_into_one_row_per_subset(tmp_path, tiny_model):
    """finetune.seeds trains every subset once per seed (subset and metrics shared); runs.csv keeps one row per
    subset with the replicate mean, n_replicates, performance_sd, mean_response_chars, and noise_floor.json."""
    overrides = _tiny_overrides(tmp_path, tiny_model) + ["logger.enabled=false", "finetune.seeds=[1,2]",
                                                         "report.n_perm=99"]
    result = run(_compose(overrides))
    cache = tmp_path / "cache"
    assert len(list((cache / "finetune").glob("*/_complete.json"))) == 12
    assert len(list((cache / "subset").glob("*/_complete.json"))) == 6
    runs = pd.read_csv(tmp_path / "results" / "runs.csv")
    assert len(runs) == 6 and (runs["n_replicates"] == 2).all() and "train_seed" not in runs
    reps = runs["performance_replicates"].map(json.loads)
    np.testing.assert_allclose(runs["performance"], reps.map(np.mean))
    np.testing.assert_allclose(runs["performance_sd"], reps.map(lambda v: np.std(v, ddof=1)))
    assert (runs["performance_sd"] > 0).all()  # the two training seeds give different models
    assert (runs["performance_source"] == "neg_reference_nll").all()
    pool = [json.loads(line) for line in next((cache / "pool").glob("*/pool.jsonl")).read_text().splitlines()]
    by_hand = sorted(np.mean([len(m["content"]) for i in json.loads(d.read_text()) for m in pool[i]["messages"]
                              if m["role"] == "assistant"]) for d in (cache / "subset").glob("*/indices.json"))
    np.testing.assert_allclose(sorted(runs["mean_response_chars"]), by_hand)  # the subsets' assistant turns
    # loss-bearing tokens: the duplicate subset (one conversation, repeated) carries size x that conversation's
    from finetune.sft import supervised_tokens, training_tokenizer

    dup = runs.set_index("subset").loc["duplicate_25"]
    one = pool[json.loads(next(d for d in (cache / "subset").glob("*/indices.json")
                               if len(set(json.loads(d.read_text()))) == 1).read_text())[0]]
    tok = training_tokenizer(tiny_model, None)
    max_length = int(_compose(overrides).finetune.max_length)
    assert dup["supervised_tokens"] == dup["size"] * supervised_tokens(tok, [one], max_length) > 0
    assert runs["code_share"].between(0, 1).all() and runs["multi_turn_share"].between(0, 1).all()
    pd.testing.assert_frame_equal(result["runs"].reset_index(drop=True)[["subset", "performance"]],
                                  runs[["subset", "performance"]])
    floor = json.loads((tmp_path / "results" / "noise_floor.json").read_text())
    assert floor["n_replicated_subsets"] == 6 and floor["f_stat"] is not None
    table = pd.read_csv(tmp_path / "results" / "table.csv")
    assert {"pearson_p_perm", "pearson_q", "pearson_diff_vs_ref", "pearson_partial_length"} <= set(table.columns)
