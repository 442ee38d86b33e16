"""Bad input through the real entry points: every case exits 2 (the project's InputError) with a message naming
the problem, and writes nothing (no cache artifact, no results; no Hydra folder when refused before Hydra runs).

The entry points run in-process (``main()`` with ``sys.argv`` set), exactly as the console scripts call them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.cli.study import run
from tests.helpers import COMMANDS, compose, run_cli

GOOD = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]
KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
HF = "hf_abcdefghijklmnopqrstuvwxyz012345"


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def study_args(tmp: Path, *extra: str) -> list[str]:
    # the committed demo's settings (AlpacaEval target, nothing held out): these pools are too small to hold out 60
    return [f"cache_dir={tmp}/cache", f"results_dir={tmp}/results", "logger=none", f"hydra.run.dir={tmp}/hydra",
            "pool.holdout=null", "eval=demo", *extra]


def check_failure(tmp: Path, before: set[str], code: int, text: str, fragment: str, *, pre_hydra: bool) -> None:
    assert code == 2, text
    assert fragment in text, text
    new = tree(tmp) - before
    written = {p for p in new if not p.startswith("hydra")}
    assert not written, f"written: {sorted(written)}"
    if pre_hydra:
        assert not new, f"Hydra wrote {sorted(new)} before the input was checked"
    else:  # Hydra's run folder holds only its config and the log, which names the problem
        log = next((tmp / "hydra").glob("*.log")).read_text()
        assert fragment in log


# ---------------------------------------------------------------- pool files ---------------------------------
def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _numbered(tmp: Path, names: list[str]) -> Path:
    d = tmp / "in" / "numbered"
    for n in names:
        _write(d / n, json.dumps([GOOD]))
    return d


POOL_FILES = {
    "missing_jsonl": (lambda t: t / "in" / "nope.jsonl", "nope.jsonl does not exist", True),
    "non_utf8": (lambda t: _write(t / "in" / "p.json", b'[[{"from": "human", "value": "caf\xe9"}]]'),
                 "not UTF-8 text (byte 33", False),
    "alpaca_output_null": (lambda t: _write(t / "in" / "a.jsonl", json.dumps({"instruction": "Hi", "output": None})),
                           "Alpaca field 'output' must be a string", False),
    "alpaca_instruction_number": (lambda t: _write(t / "in" / "a.jsonl", json.dumps({"instruction": 3,
                                                                                      "output": "x"})),
                                  "Alpaca field 'instruction' must be a string", False),
    "quality_string": (lambda t: _write(t / "in" / "p.json", json.dumps([{"conversations": GOOD, "quality": "high"}])),
                       "'quality' must be a finite number, got \"high\"", False),
    "quality_nan": (lambda t: _write(t / "in" / "p.json", f'[{{"conversations": {json.dumps(GOOD)}, "quality": NaN}}]'),
                    "'quality' must be a finite number, got NaN", False),
    "tags_not_list": (lambda t: _write(t / "in" / "p.json", json.dumps([{"conversations": GOOD, "tags": "math"}])),
                      "'tags' must be a list", False),
    "malformed_jsonl_line": (lambda t: _write(t / "in" / "m.jsonl", json.dumps({"messages": [
                                 {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
                             + "\n{oops\n"),
                             "m.jsonl:2: malformed JSON", False),
    "empty_json": (lambda t: _write(t / "in" / "p.json", ""), "malformed JSON at line 1", False),
    "json_object_not_list": (lambda t: _write(t / "in" / "p.json", '{"a": 1}'), "expected a JSON list", False),
    "numbered_gap": (lambda t: _numbered(t, ["0.json", "2.json"]), "missing ['1.json']", False),
    "numbered_foreign": (lambda t: _numbered(t, ["0.json", "1.json", "backup.json"]), "['backup.json'] are not "
                         "numbered", False),
    "empty_folder": (lambda t: (t / "in" / "empty").mkdir(parents=True) or t / "in" / "empty",
                     "holds no *.json files", False),
    "unknown_role": (lambda t: _write(t / "in" / "p.json", json.dumps([[{"from": "robot", "value": "x"}]])),
                     "unknown role 'robot'", False),
    "turn_not_string": (lambda t: _write(t / "in" / "p.json", json.dumps([[{"from": "human", "value": 5}]])),
                        "the turn's text must be a string", False),
    "no_assistant_turn": (lambda t: _write(t / "in" / "p.json", json.dumps([[{"from": "human", "value": "x"}]])),
                          "no non-empty assistant turn", False),
}


@pytest.mark.parametrize("case", sorted(POOL_FILES))
def test_bad_pool_file(case, tmp_path, capsys):
    make, fragment, pre_hydra = POOL_FILES[case]
    path = make(tmp_path)
    before = tree(tmp_path)
    code, text = run_cli("study", *study_args(tmp_path, "pool=file", f"pool.path={path}"), capsys=capsys)
    check_failure(tmp_path, before, code, text, fragment, pre_hydra=pre_hydra)


def test_skip_cannot_hide_an_empty_pool(tmp_path, capsys):
    path = _write(tmp_path / "in" / "a.jsonl", json.dumps({"instruction": "Hi", "output": None}))
    before = tree(tmp_path)
    code, text = run_cli("study", *study_args(tmp_path, "pool=file", f"pool.path={path}", "pool.on_invalid=skip"),
                         capsys=capsys)
    check_failure(tmp_path, before, code, text, "holds no usable conversation", pre_hydra=False)


# ---------------------------------------------------------------- configs ------------------------------------
CONFIGS = {
    "pool_file_without_path": (["pool=file"], "pool.path has no value"),
    "pool_size_negative": (["pool.size=-1"], "pool.size must be a positive integer or null, got -1"),
    "pool_size_zero": (["pool.size=0"], "an empty pool cannot be studied"),
    "pool_size_text": (["pool.size=many"], "pool.size must be a positive integer or null, got 'many'"),
    "pool_on_invalid": (["pool.on_invalid=ignore"], "pool.on_invalid must be 'error' or 'skip'"),
    "pool_format": (["pool.format=csv"], "unknown pool.format 'csv'"),
    "max_prompt_chars_zero": (["pool.max_prompt_chars=0"], "pool.max_prompt_chars must be a positive integer"),
    "n_clusters_zero": (["metrics.compute=[{name: cluster_inertia, params: {n_clusters: 0}}]"],
                        "hyperparameter n_clusters must be an integer >= 1, got 0"),
    "neighbors_negative": (["metrics.compute=[{name: novelsum, params: {neighbors: -1}}]"],
                           "hyperparameter neighbors must be an integer >= 1, got -1"),
    "ridge_nan": (["metrics.compute=[{name: log_determinant, params: {ridge: .nan}}]"],
                  "hyperparameter ridge must be a finite number"),
    "k_text": (["metrics.compute=[{name: knn_distance, params: {k: ten}}]"],
               "hyperparameter k must be an integer >= 1, got 'ten'"),
    "typo_key": (["selection.sizee=3"], "Could not override 'selection.sizee'"),
    "unknown_group_option": (["pool=nosuchpool"], "nosuchpool"),
    "unknown_selector": (["selection.subsets.0.selector=randomm"], "unknown selector 'randomm'"),
    "colliding_labels": (["selection.subsets.2.label=duplicate_25"], "duplicate_25 (seed 0) named twice"),
    "unknown_only": (["selection.only=nope"], "selection.only names unknown subset label(s) ['nope']"),
    "embed_backend": (["embed.backend=onnx"], "unknown embed.backend 'onnx'"),
    "performance_method": (["eval=demo", "eval.performance.method=median"], "eval.performance.method must be one of"),
    "selection_size_zero": (["selection.size=0"], "selection.size must be a positive integer, got 0"),
    "finetune_removed_field": (["+finetune.args.warmup_ratio=0.03"], "['warmup_ratio'] are not SFTConfig fields"),
    "lora_unknown_field": (["+finetune.lora.rank=8"], "['rank'] are not LoraConfig fields"),
    "finetune_max_length": (["finetune.max_length=0"], "finetune.max_length must be a positive integer"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_bad_config(case, tmp_path, capsys):
    args, fragment = CONFIGS[case]
    code, text = run_cli("study", *study_args(tmp_path, *args), capsys=capsys)
    check_failure(tmp_path, set(), code, text, fragment, pre_hydra=True)


@pytest.mark.parametrize("key", ["results_dir", "cache_dir"])
def test_unwritable_output_folder_found_before_any_work(key, tmp_path, capsys):
    blocker = _write(tmp_path / "a_file", "x")
    before = tree(tmp_path)
    args = [a for a in study_args(tmp_path) if not a.startswith(f"{key}=")] + [f"{key}={blocker}/sub"]
    code, text = run_cli("study", *args, capsys=capsys)
    check_failure(tmp_path, before, code, text, f"{key}={blocker}/sub: {blocker} is a file", pre_hydra=True)


def test_finetune_entry_point_checks_the_same(tmp_path, capsys):
    code, text = run_cli("finetune", *study_args(tmp_path, "pool.size=0"), capsys=capsys)
    check_failure(tmp_path, set(), code, text, "an empty pool cannot be studied", pre_hydra=True)


# ---------------------------------------------------------------- secrets ------------------------------------
SECRETS = {
    "api_key_on_command_line": (f"+eval.judge.api_key={KEY}", "+eval.judge.api_key holds a value"),
    "key_pasted_into_api_key_env": (f"eval.judge.api_key_env={KEY}", "must name an environment variable"),
    "hf_token_field": (f"+hf_token={HF}", "+hf_token holds a value"),
    "some_key_field": ("+eval.judge.openai_key=abc123", "+eval.judge.openai_key holds a value"),
    "key_shaped_value_anywhere": (f"study={KEY}", "study holds what looks like an API key"),
    "hf_shaped_value_anywhere": (f"embed.model={HF}", "embed.model holds what looks like an API key"),
    "api_key_env_with_spaces": ("eval.judge.api_key_env='paste secretvalue'", "must name an environment variable"),
}


@pytest.mark.parametrize("case", sorted(SECRETS))
def test_secret_refused_before_hydra_writes(case, tmp_path, capsys):
    arg, fragment = SECRETS[case]
    code, text = run_cli("study", *study_args(tmp_path, arg), capsys=capsys)
    check_failure(tmp_path, set(), code, text, fragment, pre_hydra=True)
    secret = arg.partition("=")[2].strip("'")
    assert secret[3:] not in text  # shown masked: first three characters and the length only


# by role, whatever the value looks like (gsk_..., hunter2), and URL userinfo
HYDRA_CREDENTIALS = {
    "api_key": ("+eval.judge.api_key=gsk_abcdefghijklmnopqrstuvwx", "+eval.judge.api_key holds a value"),
    "openai_api_key": (f"+openai_api_key={KEY}", "+openai_api_key holds a value"),
    "hf_token": (f"+hf_token={HF}", "+hf_token holds a value"),
    "password": ("+db.password=hunter2", "+db.password holds a value"),
    "client_secret": ("+auth.client_secret=x1y2z3", "+auth.client_secret holds a value"),
    "url_userinfo": ("++eval.judge.base_url=http://user:pw@host/v1", "holds a URL with a user name or password"),
    "env_set": ("+hydra.job.env_set.OPENAI_API_KEY=abc123", "OPENAI_API_KEY holds a value"),
}
ARGPARSE_CREDENTIALS = {
    "data": (["fetch", "--hf-endpoint", "https://me:pw@hub.example/"], "holds a URL with a user name or password"),
    "agreement": (["https://me:pw@host/a.csv", "b.csv", "--out", "gsk_abcdefghijklmnopqrstuvwx.json"], "holds"),
}
CASES = [(c, k) for c in COMMANDS if c not in ARGPARSE_CREDENTIALS for k in HYDRA_CREDENTIALS] + \
        [(c, c) for c in ARGPARSE_CREDENTIALS]


@pytest.mark.parametrize("command, case", CASES, ids=[f"{c}-{k}" for c, k in CASES])
def test_every_command_refuses_credentials_before_writing(command, case, tmp_path, capsys, monkeypatch):
    """All ten commands: exit 2, the credential masked in the message, nothing written (no .hydra/*.yaml)."""
    monkeypatch.chdir(tmp_path)
    if command in ARGPARSE_CREDENTIALS:
        args, fragment = ARGPARSE_CREDENTIALS[command]
    else:
        arg, fragment = HYDRA_CREDENTIALS[case]
        args = [arg, f"hydra.run.dir={tmp_path}/hydra", f"hydra.sweep.dir={tmp_path}/multirun"]
    code, text = run_cli(command, *args, capsys=capsys)
    check_failure(tmp_path, set(), code, text, fragment, pre_hydra=True)
    for secret in ("bcdefghijklmnopqrstuvwx", KEY[3:], HF[3:], "unter2", "y2z3", ":pw@", "c123"):
        assert secret not in text


def test_sweep_with_a_credential_in_a_config_file_refused_before_launch(tmp_path, capsys):
    leaky = _write(tmp_path / "mine" / "logger" / "leaky.yaml", "enabled: false\nwandb_api_key: plain\n")
    code, text = run_cli("study", f"--config-dir={leaky.parents[1]}", "-m", "logger=leaky", "seed=1,2",
                         f"hydra.sweep.dir={tmp_path}/multirun", capsys=capsys)
    assert code == 2 and "config: logger.wandb_api_key holds a value (pla... (5 characters))" in text, text
    assert not (tmp_path / "multirun").exists()


def test_secret_in_a_config_file_refused(tmp_path, capsys):
    """A key in a user's own config file (a folder added with Hydra's --config-dir) is refused by role."""
    leaky = _write(tmp_path / "mine" / "eval" / "judge" / "leaky.yaml", "kind: openai\nmodel: m\napi_key: gsk_x1\n")
    args = study_args(tmp_path / "run", "eval=demo", "eval/judge=leaky")  # the demo's judged option takes a judge
    code, text = run_cli("study", f"--config-dir={leaky.parents[2]}", *args, capsys=capsys)
    assert code == 2 and "config: eval.judge.api_key holds a value (gsk... (6 characters))" in text, text
    assert "gsk_x1" not in text and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- measure ------------------------------------
def _npy(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return path


def _rand(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)


def _nan_rows() -> np.ndarray:
    x = _rand()
    x[2, 1] = np.nan
    return x


def _truncated(t: Path) -> Path:
    p = _npy(t / "in" / "a.npy", _rand())
    p.write_bytes(p.read_bytes()[:100])
    return p


MEASURE = {
    "name_collision": (lambda t: (_npy(t / "in" / "s" / "a.npy", _rand()),
                                  _write(t / "in" / "s" / "a.json", json.dumps(_rand().tolist())))[0].parent,
                       None, "subset name(s) ['a'] come from two files"),
    "complex_npy": (lambda t: _npy(t / "in" / "c.npy", _rand().astype(np.complex64)), None,
                    "must be real numbers (float or int), got dtype complex64"),
    "nan_rows": (lambda t: _npy(t / "in" / "n.npy", _nan_rows()), None, "NaN or inf in 1 rows (first: [2])"),
    "truncated_npy": (_truncated, None, "not a readable .npy array"),
    "one_dimensional": (lambda t: _npy(t / "in" / "v.npy", np.ones(4)), None, "must be a 2-D"),
    "json_strings": (lambda t: _write(t / "in" / "s.json", '[["a", "b"]]'), None, "not a JSON list"),
    "reference_gap": (lambda t: _npy(t / "in" / "a.npy", _rand()),
                      lambda t: _numbered(t, ["0.json", "3.json"]), "without gaps"),
    "missing_subsets": (lambda t: t / "in" / "nope", None, "does not exist"),
}


@pytest.mark.parametrize("case", sorted(MEASURE))
def test_bad_measure_input(case, tmp_path, capsys):
    subsets, reference, fragment = MEASURE[case]
    args = [f"subsets={subsets(tmp_path)}", f"out={tmp_path}/out", f"hydra.run.dir={tmp_path}/hydra"]
    if reference:
        args.append(f"reference={reference(tmp_path)}")
    before = tree(tmp_path)
    code, text = run_cli("measure", *args, capsys=capsys)
    pre_hydra = case == "missing_subsets"
    check_failure(tmp_path, before, code, text, fragment, pre_hydra=pre_hydra)


def test_measure_out_must_be_writable(tmp_path, capsys):
    sub = _npy(tmp_path / "a.npy", _rand())
    blocker = _write(tmp_path / "f", "x")
    before = tree(tmp_path)
    code, text = run_cli("measure", f"subsets={sub}", f"out={blocker}/o", f"hydra.run.dir={tmp_path}/h", capsys=capsys)
    check_failure(tmp_path, before, code, text, "is a file, not a folder", pre_hydra=True)


# ---------------------------------------------------------------- report -------------------------------------
def _runs_csv(t: Path, frame: pd.DataFrame | None = None) -> Path:
    frame = frame if frame is not None else pd.DataFrame({"subset": list("abc"), "selector": list("abc"),
                                                          "seed": [0, 0, 0], "vendi": [1.0, 2.0, 3.0],
                                                          "schema": 1})
    path = t / "in" / "runs.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


REPORT = {
    "empty_runs": (lambda t: _write(t / "in" / "runs.csv", ""), "is empty"),
    "directory_runs": (lambda t: (t / "in").mkdir() or t / "in", "is a folder"),
    "missing_runs": (lambda t: t / "in" / "runs.csv", "does not exist"),
    "no_performance_column": (_runs_csv, "lacks column(s) ['performance']"),
    "old_schema": (lambda t: _runs_csv(t, pd.DataFrame({"subset": ["a"], "selector": ["a"], "seed": [0],
                                                        "performance": [1.0], "vendi": [1.0]})),
                   "written by an older divbench"),
    "no_metric_column": (lambda t: _runs_csv(t, pd.DataFrame({"subset": list("abc"), "selector": list("abc"),
                                                              "seed": [0] * 3, "performance": [1.0, 2, 3],
                                                              "schema": 1})), "holds no metric column"),
    "binary_runs": (lambda t: _write(t / "in" / "runs.csv", b"\xff\xfe\x00garbage\x00\n\x00"), "runs="),
}


@pytest.mark.parametrize("case", sorted(REPORT))
def test_bad_report_input(case, tmp_path, capsys):
    make, fragment = REPORT[case]
    runs = make(tmp_path)
    before = tree(tmp_path)
    code, text = run_cli("report", *[f"runs={runs}", f"out={tmp_path}/out", f"hydra.run.dir={tmp_path}/h"],
                         capsys=capsys)
    check_failure(tmp_path, before, code, text, fragment, pre_hydra=True)


def test_report_refuses_to_replace_a_foreign_folder(tmp_path, capsys):
    runs = _runs_csv(tmp_path, pd.DataFrame({"subset": list("abc"), "selector": list("abc"), "seed": [0] * 3,
                                             "performance": [1.0, 2, 3], "vendi": [1.0, 3, 2], "schema": 1}))
    _write(tmp_path / "home" / "thesis.tex", "mine")
    before = tree(tmp_path)
    code, text = run_cli("report", *[f"runs={runs}", f"out={tmp_path}/home", f"hydra.run.dir={tmp_path}/h"],
                         capsys=capsys)
    check_failure(tmp_path, before, code, text, "is not a divbench results folder", pre_hydra=True)


# ---------------------------------------------------------------- cache damage and concurrency ---------------
def _damaged_embed_artifact(tmp: Path, pool: Path) -> None:
    """A finished pool artifact and a finished embed artifact whose embeddings.npy was truncated afterwards. The pool
    has 20 rows, as many as the default metrics' k-means needs (checked before the embed stage)."""
    from experiments.engine.dag import stage_specs
    from experiments.engine.pipeline import run
    from experiments.engine.store import ArtifactStore

    cfg = compose("study", [a for a in study_args(tmp, "pool=file", f"pool.path={pool}") if not a.startswith("hydra.")])
    store, specs = ArtifactStore(cfg["cache_dir"]), stage_specs(cfg)
    run(cfg, until="pool")
    with store.build("embed", specs["embed"]) as out:
        np.save(out / "embeddings.npy", _rand(20))
    npy = store.path("embed", specs["embed"]) / "embeddings.npy"
    npy.write_bytes(npy.read_bytes()[:-8])


def test_damaged_costly_artifact_refused_naming_its_folder(tmp_path, capsys):
    pool = _write(tmp_path / "in" / "p.json", json.dumps([GOOD] * 20))
    _damaged_embed_artifact(tmp_path, pool)
    before = tree(tmp_path)
    code, text = run_cli("study", *study_args(tmp_path, "pool=file", f"pool.path={pool}"), capsys=capsys)
    assert code == 2 and "cached embed artifact" in text and "embeddings.npy has" in text and "rm -rf" in text
    assert {p for p in tree(tmp_path) - before if not p.startswith("hydra")} == set()


def test_dry_run_shows_corrupt(tmp_path, capsys):
    pool = _write(tmp_path / "in" / "p.json", json.dumps([GOOD] * 20))
    _damaged_embed_artifact(tmp_path, pool)
    cfg_args = study_args(tmp_path, "pool=file", f"pool.path={pool}", "dry_run=true")
    cfg = compose("study", [a for a in cfg_args if not a.startswith("hydra.")])
    table = run(cfg)["dry_run"]
    status = table.groupby("stage")["status"].agg(set)
    assert status["embed"] == {"corrupt"} and status["pool"] == {"done"}
    plan = pd.read_csv(tmp_path / "results" / "plan.csv")  # plan.csv says so too
    assert set(plan.loc[plan["stage"] == "embed", "status"]) == {"corrupt"}
    assert cfg["dry_run"] is True


def test_unexpected_failure_exits_1_with_traceback_in_log(tmp_path, capsys, monkeypatch):
    import experiments.engine.dag as dag

    def boom(*_a, **_k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(dag, "load_conversations", boom)
    code, text = run_cli("study", *study_args(tmp_path), capsys=capsys)
    assert code == 1 and "RuntimeError: disk on fire" in text
    log = next((tmp_path / "hydra").glob("*.log")).read_text()
    assert "Traceback" in log and "RuntimeError: disk on fire" in log


def test_stale_temp_of_dead_process_removed_live_kept(tmp_path):
    import subprocess

    from divcore.io import remove_stale_temps, temp_tag

    host = temp_tag().rsplit("-", 1)[0]
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = tmp_path / "embed" / f".abc.tmp-{host}-{child.pid}-x1"
    live = tmp_path / "embed" / f".abc.tmp-{host}-{os.getpid()}-x2"
    other_host = tmp_path / "embed" / f".abc.tmp-elsewhere-{child.pid}-x3"
    for d in (dead, live, other_host):
        d.mkdir(parents=True)
    assert remove_stale_temps(tmp_path) == [dead]
    assert live.exists() and other_host.exists()
