"""Content fingerprints, verified artifacts, the report swapped in whole, runs.csv gaps, permissions, noise."""

from __future__ import annotations

import json
import logging
import os
import stat
import time

import numpy as np
import pandas as pd
import pytest

from divcore.errors import InputError
from divcore.io import atomic_write
from divcore.secrets import mask
from experiments.cli.command import KeepOffConsole, check_command_line
from experiments.engine.config import PROJECT_ROOT
from experiments.engine.fingerprint import HashCache, content_keys
from experiments.engine.pipeline import stage_specs
from experiments.engine.store import MARKER, ArtifactStore, CorruptArtifactError
from experiments.report.tables import correlate, write_report
from metrics import MetricInputs, compute
from metrics.mig import mig_information
from tests.helpers import run_cli

CONV = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]


def _cfg(tmp, pool_path) -> dict:
    return {"cache_dir": str(tmp / "cache"), "pool": {"format": "auto", "path": str(pool_path), "size": None,
                                                      "seed": 0, "on_invalid": "error", "max_prompt_chars": None},
            "embed": {"model": "packaged:smollm2", "backend": "hf_causal", "max_length": 64, "batch_size": 8,
                      "device": "cpu"},
            "finetune": {"base_model": "packaged:smollm2"}, "eval": {"name": "reference_nll"}}


def test_edited_pool_changes_keys_downstream_moved_pool_does_not(tmp_path):
    pool = tmp_path / "a" / "pool.json"
    pool.parent.mkdir()
    pool.write_text(json.dumps([CONV]))
    first = stage_specs(_cfg(tmp_path, pool))
    moved = tmp_path / "b" / "renamed.json"
    moved.parent.mkdir()
    pool.rename(moved)
    assert stage_specs(_cfg(tmp_path, moved)) == first  # by content, not by path
    time.sleep(0.01)
    moved.write_text(json.dumps([CONV, CONV]))
    edited = stage_specs(_cfg(tmp_path, moved))
    assert edited["pool"] != first["pool"] and edited["embed"] != first["embed"]
    assert "renamed.json" not in json.dumps(edited)


def test_local_model_folder_enters_keys_by_content(tmp_path):
    model = tmp_path / "ckpt"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = _cfg(tmp_path, tmp_path / "unused") | {"embed": {"model": str(model), "backend": "hf_causal",
                                                          "max_length": 64}}
    cfg["pool"] = {"format": "sharegpt_package", "path": None}
    before = stage_specs(cfg)["embed"]
    (model / "weights.bin").write_bytes(b"\0" * 10)  # a file added to the folder
    after = stage_specs(cfg)["embed"]
    assert before != after and before["pool"] == after["pool"]


def test_hash_cache_reuses_hash_while_stat_unchanged(tmp_path, monkeypatch):
    f = tmp_path / "big.bin"
    f.write_bytes(b"x" * 1000)
    cache = HashCache(tmp_path / "hashes.json")
    digest = cache.fingerprint(f)
    cache.save()
    calls = []
    monkeypatch.setattr("experiments.engine.fingerprint.sha256_file", lambda p: calls.append(p) or "rehashed")
    assert HashCache(tmp_path / "hashes.json").fingerprint(f) == digest and calls == []
    f.write_bytes(b"y" * 999)  # size changes: re-hashed
    assert HashCache(tmp_path / "hashes.json").fingerprint(f) == "rehashed"


def test_hub_ids_and_urls_stay_as_they_are(tmp_path):
    spec = {"model": "Qwen/Qwen2.5-7B", "url": "http://localhost:8000/v1", "n": 3}
    assert content_keys(spec, HashCache(None)) == spec


def _artifact(tmp_path, stage: str) -> tuple[ArtifactStore, dict]:
    store, spec = ArtifactStore(tmp_path), {"s": stage}
    with store.build(stage, spec) as out:
        (out / "data.json").write_text(json.dumps(list(range(100))))
        (out / "sub").mkdir()
        (out / "sub" / "w.bin").write_bytes(b"w" * 50)
    return store, spec


def test_marker_records_size_and_hash(tmp_path):
    store, spec = _artifact(tmp_path, "metrics")
    files = json.loads((store.path("metrics", spec) / MARKER).read_text())["files"]
    assert set(files) == {"data.json", "sub/w.bin"} and files["sub/w.bin"]["size"] == 50
    assert store.status("metrics", spec) == "done" and store.ready("metrics", spec, cheap=True)


@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_text(p.read_text()[:10]), "data.json has 10 bytes, 390 expected"),
    (lambda p: p.write_text(p.read_text().replace("1", "7")), "does not match its recorded SHA-256"),
    (lambda p: p.unlink(), "data.json is missing"),
])
def test_damaged_cheap_artifact_is_rebuilt_with_a_warning(tmp_path, caplog, damage, problem):
    store, spec = _artifact(tmp_path, "metrics")
    time.sleep(0.01)
    damage(store.path("metrics", spec) / "data.json")
    assert store.status("metrics", spec) == "corrupt"
    with caplog.at_level(logging.WARNING):
        assert store.ready("metrics", spec, cheap=True) is False
    assert str(store.path("metrics", spec)) in caplog.text and problem in caplog.text
    assert not store.path("metrics", spec).exists()  # removed, so the stage rebuilds it


def test_damaged_costly_artifact_is_refused(tmp_path):
    store, spec = _artifact(tmp_path, "finetune")
    (store.path("finetune", spec) / "sub" / "w.bin").write_bytes(b"w" * 10)
    with pytest.raises(CorruptArtifactError, match=r"cached finetune artifact .* is damaged: sub/w.bin has 10 bytes"):
        store.ready("finetune", spec)
    assert store.path("finetune", spec).exists()  # never removed silently
    (store.path("finetune", spec) / MARKER).write_text("{trunc")
    assert store.status("finetune", spec) == "corrupt"


def test_outputs_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        store, spec = _artifact(tmp_path, "metrics")
        atomic_write(tmp_path / "r" / "x.csv", "a")
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.path("metrics", spec).stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "r" / "x.csv").stat().st_mode) == 0o644


def _runs(**cols) -> pd.DataFrame:
    base = {"subset": list("abcde"), "selector": list("abcde"), "seed": [0] * 5,
            "vendi": [1.0, 2.0, 3.0, 4.0, 5.0], "radius": [5.0, 4.0, 3.0, 2.0, 1.0],
            "performance": [0.1, 0.2, 0.3, 0.4, 0.6]}
    return pd.DataFrame(base | cols)


def test_report_replaces_the_folder_as_a_whole(tmp_path):
    out = tmp_path / "results"
    write_report(_runs(), ["vendi", "radius"], out, n_boot=20, extra={"timings.json": "{}"})
    assert (out / "scatter_radius.png").exists() and (out / "timings.json").exists()
    paths = write_report(_runs(), ["vendi"], out, n_boot=20)
    assert not (out / "scatter_radius.png").exists() and not (out / "timings.json").exists()  # nothing stale
    assert paths["table_csv"] == out / "table.csv" and paths["table_csv"].exists()
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # no temporary folder left behind


def test_missing_and_text_cells_warned_and_left_out(caplog):
    runs = _runs(performance=[0.1, np.nan, 0.3, 0.4, 0.6], vendi=["1", "2", "oops", "4", "5"])
    with caplog.at_level(logging.WARNING):
        write_report_table = correlate(runs, ["vendi", "radius"], n_boot=20)
    table = write_report_table.set_index("metric")
    assert table.loc["vendi", "n"] == 3 and table.loc["radius", "n"] == 4
    assert np.isfinite(table.loc["radius", "pearson_r"])  # one NaN no longer makes everything undefined
    from experiments.report.tables import warn_bad_cells
    warn_bad_cells(runs, ["performance", "vendi"])
    assert "column performance has 1 missing" in caplog.text and "row 4 (c, seed 0): 'oops'" in caplog.text


def test_report_with_gaps_writes_tables_and_keeps_runs_as_given(tmp_path):
    runs = _runs(performance=[0.1, np.nan, 0.3, 0.4, 0.6], vendi=["1", "2", "oops", "4", "5"])
    paths = write_report(runs, ["vendi", "radius"], tmp_path / "r", n_boot=20)
    table = pd.read_csv(paths["table_csv"]).set_index("metric")
    assert table.loc["vendi", "n"] == 3 and paths["scatter:vendi"].exists()
    assert "oops" in paths["runs"].read_text()


def test_metrics_refuse_nan_and_complex_input():
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(InputError, match="NaN or inf in 1 rows"):
        compute([{"name": "radius"}], MetricInputs(embeddings=bad, reference=x))
    with pytest.raises(InputError, match="real numbers"):
        compute([{"name": "radius"}], MetricInputs(embeddings=x.astype(np.complex64), reference=x))
    with pytest.raises(InputError, match="quality must be 2 finite scores"):
        mig_information([[0], [1]], np.eye(2), np.array([1.0, np.nan]))


@pytest.mark.parametrize("arg", [
    "+eval.judge.api_key=sk-abcdefghijklmnopqrstuv", "eval.judge.api_key_env=sk-abcdefghijklmnopqrstuv",
    "+x.password=hunter2", "+db.token=abcdef123", "hf=hf_abcdefghijklmnopqrstuvwx", "+groq_api_key=gsk_x",
    "eval.judge.base_url=http://user:pw@host/v1", "+a.secret_value=s3cr3t-and-long", "+x.token=abc1,abc2",
    "+eval.judge={api_key: abc12345}", "hydra.job.env_set.OPENAI_API_KEY=plain-text-key"])
def test_secret_arguments(arg):
    with pytest.raises(InputError) as e:
        check_command_line([arg])
    assert arg.partition("=")[2][3:] not in str(e.value)
    assert "pw@" not in str(e.value) and "hunter2" not in str(e.value)


@pytest.mark.parametrize("arg", ["eval.judge.api_key_env=OPENAI_API_KEY", "embed.backend=hf_causal",
                                 "eval.mt_bench.judge_max_tokens=16", "+eval.judge.api_key=null",
                                 "study=sk-learn", "eval.judge.base_url=http://localhost:8000/v1",
                                 "eval.mt_bench.judge_max_tokens=4", "-m", "seed=1,2"])
def test_ordinary_arguments_pass(arg):
    check_command_line([arg])


def test_mask_keeps_three_characters():
    assert mask("sk-123456") == "sk-... (9 characters)"


@pytest.mark.parametrize("name, level, message, shown", [
    ("faiss.loader", logging.INFO, "Could not load library with AVX2 support due to:", False),
    ("httpx", logging.INFO, 'HTTP Request: POST http://127.0.0.1/v1/chat/completions "HTTP/1.1 200 OK"', False),
    ("py.warnings", logging.WARNING, f"{PROJECT_ROOT}/x.py:1: FutureWarning: `foo` is deprecated", False),
    ("py.warnings", logging.WARNING, "/site-packages/alpaca_eval/utils.py:20: UserWarning: pkg_resources is", False),
    ("faiss.loader", logging.WARNING, "a real faiss problem", True),
    ("divbench", logging.INFO, "stage pool done", True),
    ("py.warnings", logging.WARNING, f"{PROJECT_ROOT}/metrics/x.py:1: UserWarning: something to read", True),
])
def test_console_keeps_third_party_chatter_out(name, level, message, shown):
    record = logging.LogRecord(name, level, __file__, 1, "%s", (message,), None)
    assert KeepOffConsole().filter(record) is shown
    import yaml

    from experiments.engine.config import CONFIG_DIR
    for kind in ("job_logging", "hydra_logging"):
        conf = yaml.safe_load(open(f"{CONFIG_DIR}/hydra/{kind}/divbench.yaml"))
        assert conf["filters"]["quiet"]["()"] == "experiments.cli.command.KeepOffConsole"
        assert conf["handlers"]["console"]["filters"] == ["quiet", "secrets"]
        if kind == "job_logging":  # the log file keeps the chatter, masked like the console
            assert conf["handlers"]["file"]["filters"] == ["secrets"]


@pytest.mark.slow
def test_cli_console_has_no_loader_noise_and_outputs_honour_the_umask(tmp_path):
    """A real divbench-measure process: faiss's loader lines stay out of the console; the outputs are
    group-readable under a 022 umask."""
    np.save(tmp_path / "a.npy", np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32))
    old = os.umask(0o022)
    try:
        proc = run_cli("measure", f"subsets={tmp_path}/a.npy", f"out={tmp_path}/out", f"hydra.run.dir={tmp_path}/h",
                       "metrics.compute=[{name: partition_entropy, params: {n_clusters: 3}}, {name: radius}]")
    finally:
        os.umask(old)
    assert proc.code == 0, proc.output
    assert "faiss" not in proc.output and "ModuleNotFoundError" not in proc.output
    assert stat.S_IMODE((tmp_path / "out" / "measure.csv").stat().st_mode) == 0o644


@pytest.mark.slow
@pytest.mark.parametrize("command, args", [
    ("select", ["selector=random", "size=2", "pool.path={tmp}/missing.jsonl", "out={tmp}/out"]),
    ("embed", ["pool.path={tmp}/missing.jsonl", "out={tmp}/out.npy"]),
])
def test_console_keeps_faiss_loader_lines_out(command, args, tmp_path):
    """select and embed load faiss (the engine) before failing on the missing pool (exit 2): its loader lines never
    reach the console; loaded inside the run (select), they are in the log file."""
    proc = run_cli(command, *(a.format(tmp=tmp_path) for a in args), f"cache_dir={tmp_path}/cache",
                   f"hydra.run.dir={tmp_path}/h")
    assert proc.code == 2 and "missing.jsonl does not exist" in proc.output, proc.output
    assert "faiss.loader" not in proc.output and "Loading faiss" not in proc.output
    assert "ModuleNotFoundError" not in proc.output
    if command == "select":
        assert "[faiss.loader][INFO] - Loading faiss" in next((tmp_path / "h").glob("*.log")).read_text()
