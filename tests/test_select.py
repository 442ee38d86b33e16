"""divbench-select, divbench-embed, embed=precomputed on the authors' layout, and benchmark data resolution."""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from divcore.errors import InputError
from divcore.ownership import MANIFEST
from experiments.embedding.backends import VLLM_PARAMS, register_backend
from experiments.engine.subsets import run_select
from tests.conftest import SHARED
from tests.helpers import CliResult, compose, run_cli

FILE_ROWS = (25, 25, 10)  # the authors split a pool into numbered files of ~5000 rows; here three small ones
# every text has >= 15 words, so that the study's text metrics (vocd_d needs 50 words) are defined on 4 rows


def authors_layout(root: Path, dim: int = 12, seed: int = 0) -> tuple[Path, Path, np.ndarray]:
    """A pool in the authors' layout: ``text/N.json`` (plain strings, turns joined by newlines) and
    ``emb/N.json`` (one vector per text, un-normalised, indent=4 as their embedding.py writes it)."""
    rng = np.random.default_rng(seed)
    text, emb = root / "text", root / "emb"
    text.mkdir(parents=True)
    emb.mkdir()
    start, vectors = 0, []
    for number, rows in enumerate(FILE_ROWS):
        texts = [f"question {start + i} on topic {(start + i) % 7}\nanswer "
                 + " ".join(f"w{j}" for j in range(12 + (start + i) % 5)) for i in range(rows)]
        vecs = rng.normal(size=(rows, dim)) * (0.5 + rng.random((rows, 1)))  # varied norms: density reads them
        (text / f"{number}.json").write_text(json.dumps(texts))
        (emb / f"{number}.json").write_text(json.dumps(vecs.tolist(), indent=4))
        vectors.append(vecs)
        start += rows
    return text, emb, np.concatenate(vectors)


def select_cfg(tmp: Path, *overrides: str) -> dict:
    """divbench-select's config: ``params.<name>=`` adds a selector parameter, as on its command line."""
    added = [f"++{o}" if o.startswith("params.") else o for o in overrides]
    return compose("select", [f"cache_dir={tmp}/cache", *added], all_values=False)


def artifacts(cache: Path) -> dict[str, float]:
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.glob("*/*/_complete.json")}


def test_select_on_authors_layout_matches_novelselect_and_exports(tmp_path):
    import datasets

    import selection

    text, emb, vectors = authors_layout(tmp_path / "pool")
    out = tmp_path / "out"
    cfg = select_cfg(tmp_path, f"pool.path={text}", "embed=precomputed", f"embed.path={emb}",
                     "selector=novelselect", "size=9", "seed=3", "params.neighbors=4", "params.distance_power=2",
                     f"out={out}", "map=true")
    run_select(cfg)

    expected = selection.novelselect(vectors.astype(np.float32), 9, neighbors=4, density_power=0.5,
                                     distance_power=2.0, seed=3)
    picks = json.loads((out / "indices.json").read_text())
    assert picks == expected and len(set(picks)) == 9
    # the authors' own output files, named and shaped as their novelselect.py writes them
    stem = "novelselect_9_dense_0.5_dist_2.0"
    assert json.loads((out / f"{stem}_indices.json").read_text()) == expected
    texts = [t for f in sorted(text.glob("*.json")) for t in json.loads(f.read_text())]
    assert json.loads((out / f"{stem}.json").read_text()) == [texts[i] for i in expected]

    prov = json.loads((out / "provenance.json").read_text())
    assert prov["selector"] == "novelselect" and prov["seed"] == 3 and prov["size"] == 9
    assert prov["params"]["neighbors"] == 4 and prov["params"]["density_power"] == 0.5
    assert prov["pool_size"] == sum(FILE_ROWS) and len(prov["pool_fingerprint"]) == 16
    rows = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert [r["pool_index"] for r in rows] == expected and rows[0]["text"] == texts[expected[0]]

    ds = datasets.load_from_disk(str(out / "hf"))
    assert ds["pool_index"] == expected and ds["text"] == [texts[i] for i in expected]
    card = (out / "hf" / "README.md").read_text()
    assert card.startswith("---\n") and "## Provenance" in card and prov["embedding_fingerprint"] in card
    assert "| `novelsum` |" in card and "## Licence" in card and "## Fine-tuned model" not in card
    metrics_row = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics_row["novelsum"])

    import pandas as pd

    table = pd.read_parquet(out / "pool.parquet")
    assert list(table.columns) == ["id", "text", "embedding", "selected"]
    assert table["selected"].sum() == 9 and sorted(np.flatnonzero(table["selected"])) == sorted(expected)
    np.testing.assert_array_equal(np.stack(table["embedding"]), vectors.astype(np.float32))

    # same pool + embeddings + selection: every stage read back from the cache, nothing recomputed
    before = artifacts(tmp_path / "cache")
    assert {k.split("/")[0] for k in before} == {"pool", "embed", "signals", "subset", "metrics"}
    run_select(cfg)
    assert artifacts(tmp_path / "cache") == before


def test_precomputed_vectors_are_stored_unchanged_and_keyed_by_content(tmp_path):
    from experiments.engine.dag import stage_specs
    from experiments.engine.pipeline import run

    text, emb, vectors = authors_layout(tmp_path / "pool")
    cfg = select_cfg(tmp_path, f"pool.path={text}", "embed=precomputed", f"embed.path={emb}", "size=3", "out=x")
    specs = stage_specs(cfg)
    got = run(cfg, until="embed").shared["embed"]
    np.testing.assert_array_equal(got, vectors.astype(np.float32))  # raw norms kept: no re-normalisation
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0)

    changed = json.loads((emb / "2.json").read_text())
    changed[0][0] += 1.0
    (emb / "2.json").write_text(json.dumps(changed))  # same path, new content: a new cache key
    assert stage_specs(cfg)["embed"] != specs["embed"]

    npy = tmp_path / "vectors.npy"
    np.save(npy, vectors.astype(np.float16))  # a .npy keeps its own dtype
    cfg = select_cfg(tmp_path, f"pool.path={text}", "embed=precomputed", f"embed.path={npy}", "size=3", "out=x")
    got = run(cfg, until="embed").shared["embed"]
    assert got.dtype == np.float16 and np.array_equal(got, vectors.astype(np.float16))


@pytest.mark.parametrize("overrides, message", [
    (["pool.size=10"], "pool.size=10 would drop or reorder rows"),
    (["pool.on_invalid=skip"], "pool.on_invalid=skip"),
    (["embed.dim=7"], "12-dimensional vectors but embed.dim=7"),
    (["embed.path=MISSING"], "does not exist"),
])
def test_precomputed_refuses_misaligned_input(tmp_path, overrides, message):
    text, emb, _ = authors_layout(tmp_path / "pool")
    overrides = [o.replace("MISSING", str(tmp_path / "nope")) for o in overrides]
    cfg = select_cfg(tmp_path, f"pool.path={text}", "embed=precomputed", f"embed.path={emb}", "size=3",
                     f"out={tmp_path / 'out'}", *overrides)
    with pytest.raises(InputError, match=message):
        run_select(cfg)
    assert not (tmp_path / "out").exists()


def _select_cli(tmp: Path, *args: str) -> CliResult:
    return run_cli("select", f"cache_dir={tmp}/cache", f"hydra.run.dir={tmp}/hydra", *args)


@pytest.mark.slow  # subprocesses / a sentence embedder
def test_select_cli_bad_input_fails_clearly_and_writes_nothing(tmp_path):
    text, emb, _ = authors_layout(tmp_path / "pool")
    base = [f"pool.path={text}", "embed=precomputed", f"embed.path={emb}", "selector=novelselect"]
    out = tmp_path / "out"
    short = json.loads((emb / "1.json").read_text())[:-1]
    (emb / "1.json").write_text(json.dumps(short))
    for args, message in [  # text and embedding files whose counts differ, unknown selector, unknown parameter
        ([*base, "size=5"], f"{text / '1.json'} holds 25 records but {emb / '1.json'} holds 24 vectors"),
        ([*base, "selector=novelselectt", "size=5"], "unknown selector 'novelselectt'"),
        ([*base, "size=5", "params.neighbours=3"], "has no parameter(s) ['neighbours']"),
    ]:
        proc = _select_cli(tmp_path, *args, f"out={out}")
        assert proc.code == 2, proc.output[-2000:]
        assert message in proc.output
        assert not out.exists()
    (emb / "1.json").write_text(json.dumps(short + [short[0]]))
    proc = _select_cli(tmp_path, *base, "size=500", f"out={out}")
    assert proc.code == 2 and "size=500 is larger than the pool (60 rows)" in proc.output

    assert _select_cli(tmp_path, *base, "size=5", f"out={out}").code == 0
    first = (out / "indices.json").read_text()
    proc = _select_cli(tmp_path, *base, "size=6", f"out={out}")  # another selection into the same out
    assert proc.code == 2 and "already holds a different selection" in proc.output
    assert (out / "indices.json").read_text() == first
    assert _select_cli(tmp_path, *base, "size=5", f"out={out}").code == 0  # the same selection again: fine
    assert _select_cli(tmp_path, *base, "size=6", f"out={out}", "overwrite=true").code == 0
    assert len(json.loads((out / "indices.json").read_text())) == 6
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    proc = _select_cli(tmp_path, *base, "size=5", f"out={stray}")
    assert proc.code == 2 and "holds no divbench selection" in proc.output
    assert (stray / "notes.txt").read_text() == "mine" and len(list(stray.iterdir())) == 1


def test_push_to_hub_uploads_the_dataset_and_its_card(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    calls = []
    monkeypatch.setattr(datasets.Dataset, "push_to_hub",
                        lambda self, repo_id, **kw: calls.append(("data", repo_id, self.num_rows, kw)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file",
                        lambda self, **kw: calls.append(("card", kw["repo_id"], Path(kw["path_or_fileobj"]).read_text(),
                                                         kw["repo_type"])))
    text, emb, _ = authors_layout(tmp_path / "pool")
    run_select(select_cfg(tmp_path, f"pool.path={text}", "embed=precomputed", f"embed.path={emb}", "size=4",
                          "selector=kcenter", f"out={tmp_path / 'out'}", "push_to_hub=me/my-subset"))
    assert [c[:2] for c in calls] == [("data", "me/my-subset"), ("card", "me/my-subset")]
    assert calls[0][2] == 4 and calls[0][3] == {"private": True}
    assert calls[1][2] == (tmp_path / "out" / "hf" / "README.md").read_text() and calls[1][3] == "dataset"


@pytest.mark.slow  # subprocesses / a sentence embedder
def test_embed_round_trip_through_the_authors_layout(tmp_path):
    """divbench-embed writes one vector file per text file; divbench-select reads them back as precomputed."""
    from experiments.engine.embed_pool import embed_pool

    text, _, _ = authors_layout(tmp_path / "pool")
    out = tmp_path / "emb"
    cfg = compose("embed_pool", [f"pool.path={text}", "embed=minilm", f"out={out}", f"cache_dir={tmp_path}/cache"])
    embed_pool(cfg)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "0.json", "1.json", "2.json"]
    counts = [len(json.loads((out / f"{i}.json").read_text())) for i in range(3)]
    assert counts == list(FILE_ROWS)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    (out / "2.json").unlink()  # a run killed before the last file: only that file is redone
    embed_pool(cfg)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json") if p.name != "2.json"} == \
        {k: v for k, v in stamps.items() if k != "2.json"}
    vecs = np.concatenate([np.asarray(json.loads((out / f"{i}.json").read_text())) for i in range(3)])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)

    npy = tmp_path / "pool.npy"
    embed_pool(cfg | {"out": str(npy)})  # the same vectors through the study's embed stage
    np.testing.assert_allclose(np.load(npy), vecs, atol=1e-6)

    run_select(select_cfg(tmp_path, f"pool.path={text}", "embed=precomputed", f"embed.path={out}", "size=5",
                          f"out={tmp_path / 'sel'}"))
    import selection

    assert json.loads((tmp_path / "sel" / "indices.json").read_text()) == selection.novelselect(
        vecs.astype(np.float32), 5, seed=42)


# --- benchmark data: $DIVBENCH_DATA, then <shared>/data, then the user data dir that divbench-data fetch fills ---

def test_data_resolution_order(tmp_path, monkeypatch):
    from experiments.data.benchmark_files import resolve_data

    rel = "alpaca_eval/gpt4_1106_preview.json"
    env, shared, user = tmp_path / "env", tmp_path / "shared", tmp_path / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(user))
    monkeypatch.delenv("DIVBENCH_DATA", raising=False)
    fallback = str(user / "divbench" / rel)
    assert resolve_data(rel, shared) == fallback  # found nowhere: where fetch would put it
    for root in (user / "divbench", shared / "data", env):
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_text("[]")
    assert resolve_data(rel, shared) == str(shared / "data" / rel)
    monkeypatch.setenv("DIVBENCH_DATA", str(env))
    assert resolve_data(rel, shared) == str(env / rel)
    (shared / "data" / rel).unlink()
    (env / rel).unlink()
    assert resolve_data(rel, shared) == fallback

    cfg = compose("study", ["eval=demo", f"shared_dir={tmp_path / 'none'}"], resolve=False)  # demo's judged option
    assert cfg.eval.alpaca_eval.reference_path == fallback

    from eval.mt_bench import load_mt_bench

    with pytest.raises(InputError, match="divbench-data fetch"):
        load_mt_bench(str(user / "divbench" / "mt_bench"))


class _Mirror:
    """A local file server with the Hugging Face and raw-GitHub paths of the benchmark files."""

    def __init__(self, root: Path) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> _Mirror:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_fetch_downloads_every_file_from_a_local_server(tmp_path, monkeypatch):
    from experiments.data.benchmark_files import SOURCES, fetch, resolve_data

    site = tmp_path / "site"
    real = SHARED / "data"
    for rel, template in SOURCES.items():
        path = site / template.format(hf="hf", gh="gh")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((real / rel).read_bytes())
    dest = tmp_path / "xdg" / "divbench"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("DIVBENCH_DATA", raising=False)
    with _Mirror(site) as mirror:
        written = fetch(hf_endpoint=f"{mirror.url}/hf", github_raw=f"{mirror.url}/gh")
        assert sorted(written) == sorted(dest / rel for rel in SOURCES)
        assert fetch(hf_endpoint=f"{mirror.url}/hf", github_raw=f"{mirror.url}/gh") == []  # present: kept
        for rel in SOURCES:
            assert (dest / rel).read_bytes() == (real / rel).read_bytes()
            assert resolve_data(rel, tmp_path / "no-shared") == str(dest / rel)

        from eval.mt_bench import load_mt_bench

        questions, prompts, _ = load_mt_bench(resolve_data("mt_bench", tmp_path / "no-shared"))
        assert len(questions) == 80 and "single-v1" in prompts

        bad = site / "hf" / "datasets/tatsu-lab/alpaca_eval/resolve/main/alpaca_eval.json"
        bad.write_text("<html>rate limited</html>")
        other = tmp_path / "other"
        with pytest.raises(RuntimeError, match="not the expected JSON data"):
            fetch(other, hf_endpoint=f"{mirror.url}/hf", github_raw=f"{mirror.url}/gh")
        assert not (other / "alpaca_eval/text_davinci_003.json").exists()
        with pytest.raises(RuntimeError, match="could not download"):
            fetch(tmp_path / "third", hf_endpoint=f"{mirror.url}/missing", github_raw=f"{mirror.url}/gh")


def test_conversation_layout_exports_messages_and_the_authors_turns(tmp_path):
    """The authors' raw SFT files (lists of {"from", "value"} turns) with their embeddings: selected.jsonl holds
    ``messages``; their novelselect file holds the turns in their own shape."""
    import datasets

    text, emb, _ = authors_layout(tmp_path / "pool")
    for f in text.glob("*.json"):
        f.write_text(json.dumps([[{"from": "human", "value": t.split("\n")[0]}, {"from": "gpt", "value": t}]
                                 for t in json.loads(f.read_text())]))
    out = tmp_path / "out"
    run_select(select_cfg(tmp_path, f"pool.path={text}", "embed=precomputed", f"embed.path={emb}", "size=4",
                          "params.density_power=0", f"out={out}"))
    picks = json.loads((out / "indices.json").read_text())
    ds = datasets.load_from_disk(str(out / "hf"))
    assert [m["role"] for m in ds["messages"][0]] == ["user", "assistant"]
    turns = json.loads((out / "novelselect_4_dense_0.0_dist_1.0.json").read_text())
    assert len(turns) == 4 and turns[0][0]["from"] == "user" and turns[0][1]["value"] == ds["messages"][0][1]["content"]
    assert ds["pool_index"] == picks


# A real embed backend (the registry's own entry point) that records what reaches it: the options divbench-embed
# passes, and the chunks it is called with. No vLLM is needed to see that vLLM's options would have reached it.
RECORDED: list[dict] = []


@register_backend("recording", params=VLLM_PARAMS)
def _recording_backend(model_path: str, *, max_length: int, batch_size: int, device: str,
                       vllm: dict | None = None, **_: object):
    call = {"model": model_path, "max_length": max_length, "batch_size": batch_size, "device": device,
            "vllm": vllm, "chunks": []}
    RECORDED.append(call)

    def encode(texts):
        call["chunks"].append(len(texts))
        return np.asarray([[len(t), 1.0 + len(t) % 3, 2.0] for t in texts], dtype=np.float32)

    return encode


@pytest.mark.parametrize("out", ["emb", "emb.npy"])
def test_divbench_embed_passes_every_embed_option_as_the_study_does(tmp_path, out):
    """embed=vllm's engine arguments (embed.runtime.vllm.*) and chunk size (embed.runtime.chunk_size) reach the
    encoder from divbench-embed, in the authors' per-file layout as in one matrix, exactly as in the study."""
    from experiments.engine.embed_pool import embed_pool

    text, _, _ = authors_layout(tmp_path / "pool")
    model = tmp_path / "model"
    model.mkdir()
    cfg = compose("embed_pool", [f"pool.path={text}", "embed=vllm", "embed.backend=recording", f"embed.model={model}",
                                 "embed.device=cpu", "embed.max_length=32", "embed.runtime.chunk_size=7",
                                 "embed.runtime.vllm.dtype=float16", f"out={tmp_path / out}",
                                 f"cache_dir={tmp_path}/cache"])
    RECORDED.clear()
    embed_pool(cfg)
    vllm = {"dtype": "float16", "gpu_memory_utilization": 0.9, "enforce_eager": False}
    assert [c["vllm"] for c in RECORDED] == [vllm] * len(RECORDED) and RECORDED
    assert all(c["model"] == str(model) and c["max_length"] == 32 and c["device"] == "cpu" for c in RECORDED)
    chunks = [n for c in RECORDED for n in c["chunks"]]
    assert sum(chunks) == sum(FILE_ROWS) and max(chunks) == 7  # chunk_size=7, not the default 8192

    study = run_study_embeddings(tmp_path, text, model)
    got = (np.concatenate([np.asarray(json.loads((tmp_path / out / f"{i}.json").read_text())) for i in range(3)])
           if out == "emb" else np.load(tmp_path / out))
    np.testing.assert_array_equal(got, study)


def run_study_embeddings(tmp: Path, text: Path, model: Path) -> np.ndarray:
    """The study's embed stage on the same pool and options: what divbench-embed must match (the study without its
    fine-tuning, which a plain-text pool cannot have)."""
    from experiments.engine.pipeline import run

    cfg = compose("study", [f"cache_dir={tmp}/study_cache", f"results_dir={tmp}/results", "pool=file",
                            f"pool.path={text}", "pool.size=null", "pool.max_prompt_chars=null", "pool.holdout=null",
                            "eval=demo", "embed=vllm",
                            "embed.backend=recording", f"embed.model={model}", "embed.device=cpu",
                            "embed.max_length=32", "embed.runtime.chunk_size=7", "embed.runtime.vllm.dtype=float16",
                            "device=cpu"])
    RECORDED.clear()
    cfg = {k: v for k, v in cfg.items() if k != "finetune"}
    vecs = run(cfg, until="embed").shared["embed"]
    assert RECORDED[0]["vllm"]["dtype"] == "float16" and max(RECORDED[0]["chunks"]) == 7
    return vecs


@pytest.mark.parametrize("command", ["divbench-study", "divbench-finetune"])
def test_finetuning_commands_refuse_plain_text_before_embedding(tmp_path, command):
    """divbench-finetune runs the study's checks: a pool of plain-text rows is refused before anything is built."""
    from experiments.cli.finetune import finetune_subsets
    from experiments.cli.study import run

    text, emb, _ = authors_layout(tmp_path / "pool")
    cfg = compose("study", [f"cache_dir={tmp_path}/cache", f"results_dir={tmp_path}/results", "logger=none",
                            "pool=file", f"pool.path={text}", "pool.holdout=null", "eval=demo",
                            "embed=precomputed", f"embed.path={emb}"])
    with pytest.raises(InputError, match="plain-text rows"):
        run(cfg) if command == "divbench-study" else finetune_subsets(cfg)
    assert not (tmp_path / "cache" / "embed").exists()
