"""A hostile user against every command (issue 24): each probe gives one bad input and asserts the exit code, a
specific message (what / where / fix) and that nothing was written or deleted outside Hydra's run folder.

Every command is run in-process through its console entry point (``main()`` with ``sys.argv`` or ``argv``), as
the console scripts call it; no model is loaded (each probe fails before one would be). The files are tiny and
made here, except the AlpacaEval / MT-Bench files from ``../shared`` the judge probes answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from divcore.ownership import MANIFEST
from experiments.cli import agreement, data, doctor, embed, finetune, judge, measure, report, select, study
from tests.conftest import SHARED

GOOD = [{"from": "human", "value": "Hi there, what is a good name for a cat?"}, {"from": "gpt", "value": "Miso."}]
KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
DIM = 8
BINARY = b"\xff\xfe\x00x"
TRUNCATED_NPY = b"\x93NUMPY"
NOT_UTF8_JSONL = b'{"a": "\xff"}\n'
LATIN1_JSON = b'["\xe9"]'


# ---------------------------------------------------------------- harness -------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (Hydra's run folders left out) with a hash of its content."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.split("/")[0] in ("hydra", "xdg") or p.is_dir():
            continue
        out[rel] = "link" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def invoke(main: Callable, args: list[str], capsys, caplog, *, argv: bool = False) -> tuple[int, str]:
    """Run an entry point; (exit code, everything it printed or logged)."""
    old, handlers = sys.argv, list(logging.getLogger().handlers)
    sys.argv = ["divbench", *args]
    code = 0
    try:
        with caplog.at_level(logging.INFO):
            result = main(args) if argv else main()
        code = result or 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
        for h in set(logging.getLogger().handlers) - set(handlers):  # basicConfig's, bound to this test's stderr
            logging.getLogger().removeHandler(h)
    out = capsys.readouterr()
    return code, out.out + out.err + caplog.text


def probe(tmp: Path, main: Callable, args: list[str], code: int, fragment: str, capsys, caplog, *,
          argv: bool = False) -> str:
    """Run one bad input: it exits ``code``, says ``fragment``, and no file changes (cache locks aside)."""
    before = snapshot(tmp)
    got, text = invoke(main, args, capsys, caplog, argv=argv)
    assert got == code, text[-3000:]
    assert fragment in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    after = {k: v for k, v in snapshot(tmp).items() if not k.endswith(".lock")}
    assert after == before, f"changed: {sorted(set(after.items()) ^ set(before.items()))}"
    return text


@pytest.fixture()
def world(tmp_path: Path, monkeypatch) -> Path:
    """A small pool (authors' numbered files), its vectors, a runs.csv, and a working directory holding a user's
    file; benchmark data found only where the test says (DIVBENCH_SHARED / DIVBENCH_DATA / user data dir)."""
    t = tmp_path
    for i in range(2):
        _write(t / "pool" / f"{i}.json", json.dumps([[{**GOOD[0], "value": f"{GOOD[0]['value']} {i}-{j}"}, GOOD[1]]
                                                     for j in range(6)]))
        _write(t / "emb" / f"{i}.json", json.dumps(np.random.default_rng(i).standard_normal((6, DIM)).tolist()))
    _runs(t / "in" / "runs.csv")
    _write(t / "work" / "mine.txt", "the user's own file")
    monkeypatch.chdir(t / "work")
    monkeypatch.setenv("XDG_DATA_HOME", str(t / "xdg"))  # divbench-data's user folder: empty unless a test fills it
    monkeypatch.delenv("DIVBENCH_DATA", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    return t


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _runs(path: Path, **cols) -> Path:
    frame = pd.DataFrame({"base_model": ["m"] * 5, "subset": list("abcde"), "selector": list("abcde"), "seed": [0] * 5,
                          "performance": [1.0, 2, 3, 4, 5], "vendi": [1.0, 3, 2, 5, 4], "schema": 1,
                          "performance_source": "proxy"} | cols)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def _foreign(folder: Path, *names: str) -> Path:
    for name in names:
        _write(folder / name, f"user data: {name}")
    return folder


def _dangling(t: Path) -> Path:
    (t / "pool" / "2.json").symlink_to(t / "nowhere.json")
    return t / "pool"


def _loop(t: Path) -> Path:
    (t / "pool" / "2.json").symlink_to(t / "pool" / "2.json")
    return t / "pool"


# ---------------------------------------------------------------- divbench-report ----------------------------
def _h(t: Path) -> str:
    return f"hydra.run.dir={t}/hydra/{len(list((t / 'hydra').glob('*'))) if (t / 'hydra').exists() else 0}"


REPORT = {
    # finding: the default out (the folder of runs.csv) next to a thesis replaced as a whole
    "runs_next_to_a_thesis": (lambda t: [f"runs={_foreign(t / 'dl', 'thesis.tex', 'photo.jpg') and _runs(t / 'dl' / 'runs.csv')}"],  # noqa: E501
                              "is not a divbench results folder"),
    "out_holds_a_plan_and_a_spreadsheet": (lambda t: [f"runs={t}/in/runs.csv",
                                                      f"out={_foreign(t / 'o', 'plan.csv', 'budget.xlsx')}"],
                                           "budget.xlsx"),
    "out_is_a_file": (lambda t: [f"runs={t}/in/runs.csv", f"out={_write(t / 'f.txt', 'x')}"], "is a file"),
    "out_is_the_working_directory": (lambda t: [f"runs={t}/in/runs.csv", "out=."], "current working directory"),
    "out_holds_the_merged_inputs": (lambda t: [f"runs=[{t}/in/runs.csv,{_runs(t / 'in' / 'b.csv', base_model='n')}]",
                                               f"out={t}/in"], "contains the input runs[0]"),
    "out_is_the_runs_file": (lambda t: [f"runs={t}/in/runs.csv", f"out={t}/in/runs.csv"], "is the input runs"),
    "empty_runs": (lambda t: [f"runs={_write(t / 'e' / 'runs.csv', '')}", f"out={t}/r"], "is empty"),
    "binary_runs": (lambda t: [f"runs={_write(t / 'b' / 'runs.csv', BINARY)}", f"out={t}/r"], "runs="),
    "missing_runs": (lambda t: [f"runs={t}/nope/runs.csv", f"out={t}/r"], "does not exist"),
    "runs_is_a_folder": (lambda t: [f"runs={t}/in", f"out={t}/r"], "is a folder"),
    "unknown_excluded_selector": (lambda t: [f"runs={t}/in/runs.csv", f"out={t}/r", "exclude_selectors=[zz]"],
                                  "not among the runs' selectors"),
    "secret_on_the_command_line": (lambda t: [f"runs={t}/in/runs.csv", f"+eval.judge.api_key={KEY}"], "sk-..."),
}


@pytest.mark.parametrize("case", sorted(REPORT))
def test_report(case, world, capsys, caplog):
    make, fragment = REPORT[case]
    args = make(world)
    probe(world, report.main, [*args, _h(world)], 2, fragment, capsys, caplog)


def test_report_in_a_results_folder_keeps_what_divbench_did_not_write(world, capsys, caplog):
    """A divbench results folder (manifest) with a README added: rebuilt in place, the README untouched."""
    out = world / "res"
    assert invoke(report.main, [f"runs={world}/in/runs.csv", f"out={out}", "n_boot=20", "n_perm=0", _h(world)],
                  capsys, caplog)[0] == 0
    _write(out / "README.md", "notes")
    code, text = invoke(report.main, [f"runs={out}/runs.csv", "n_boot=20", "n_perm=0", _h(world)], capsys, caplog)
    assert code == 0, text[-2000:]
    assert (out / "README.md").read_text() == "notes" and (out / MANIFEST).exists()
    assert "README.md" not in json.loads((out / MANIFEST).read_text())["files"]


# ---------------------------------------------------------------- divbench-select ----------------------------
# A folder nobody may create entries in, root included (sysfs refuses them with EPERM), so the unwritable-output
# probes run the real failure even where the tests run as root (chmod does not stop root).
UNWRITABLE = "/sys/divbench-probe"


def _select(t: Path, *extra: str) -> list[str]:
    return [f"pool.path={t}/pool", "embed=precomputed", f"embed.path={t}/emb", "selector=random", "size=3",
            f"cache_dir={t}/cache", "logger=none", *extra]


SELECT = {
    # findings: overwrite=true emptied the working directory, or deleted the input pool
    "out_is_the_working_directory": (lambda t: _select(t, "out=.", "overwrite=true"), "current working directory"),
    "out_is_the_pool": (lambda t: _select(t, f"out={t}/pool", "overwrite=true"), "is the input pool.path"),
    "out_inside_the_pool": (lambda t: _select(t, f"out={t}/pool/sel"), "lies inside the input pool.path"),
    "out_holds_the_working_directory": (lambda t: _select(t, f"out={t}"), "holding the current working directory"),
    "out_holds_the_pool": (lambda t: shutil.copytree(t / "pool", t / "outer" / "pool") and
                           _select(t, f"pool.path={t}/outer/pool", f"out={t}/outer"), "contains the input pool.path"),
    "out_holds_the_embeddings": (lambda t: _select(t, f"out={t}/emb"), "is the input embed.path"),
    "out_is_a_file": (lambda t: _select(t, f"out={_write(t / 'f.txt', 'x')}"), "is a file"),
    "out_under_a_file": (lambda t: _select(t, f"out={_write(t / 'f.txt', 'x')}/sub"), "is a file"),
    "out_unwritable": (lambda t: _select(t, f"out={UNWRITABLE}/sel"), "permission denied"),
    "foreign_folder_even_with_overwrite": (lambda t: _select(t, f"out={_foreign(t / 'o', 'notes.txt')}",
                                                             "overwrite=true"), "holds no divbench selection"),
    "dangling_symlink_in_the_pool": (lambda t: _select(t, f"pool.path={_dangling(t)}", f"out={t}/s"),
                                     "leads nowhere"),
    "looping_symlink_in_the_pool": (lambda t: _select(t, f"pool.path={_loop(t)}", f"out={t}/s"), "leads nowhere"),
    "unknown_selector": (lambda t: _select(t, "selector=randomm", f"out={t}/s"), "unknown selector 'randomm'"),
    "push_to_hub_not_a_repo_id": (lambda t: _select(t, f"out={t}/s", "push_to_hub=5"), "push_to_hub must be"),
}


@pytest.mark.parametrize("case", sorted(SELECT))
def test_select(case, world, capsys, caplog):
    make, fragment = SELECT[case]
    probe(world, select.main, [*make(world), _h(world)], 2, fragment, capsys, caplog)


def test_select_push_without_token_says_to_log_in(world, monkeypatch):
    """The upload's failure (no token, no network) is an input error that says to log in; the export stays."""
    import datasets

    from divcore.errors import InputError
    from experiments.data.export import push_to_hub

    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing answers: no network
    hf = world / "exp" / "hf"
    datasets.Dataset.from_list([{"text": "a"}]).save_to_disk(str(hf))
    _write(hf / "README.md", "card")
    with pytest.raises(InputError, match="log in"):
        push_to_hub(hf, "me/subset")
    assert (hf / "README.md").exists()


# ---------------------------------------------------------------- divbench-embed -----------------------------
def _embed(t: Path, *extra: str) -> list[str]:
    return [f"pool.path={t}/pool", "embed=minilm", f"cache_dir={t}/cache", *extra]


EMBED = {
    "out_is_the_pool": (lambda t: _embed(t, f"out={t}/pool"), "is the input pool.path"),  # finding: exit 0
    "out_inside_the_pool": (lambda t: _embed(t, f"out={t}/pool/emb"), "lies inside the input pool.path"),
    "out_is_the_working_directory": (lambda t: _embed(t, "out=."), "current working directory"),
    "out_holds_unrelated_files": (lambda t: _embed(t, f"out={_foreign(t / 'o', 'notes.txt', 'a.json')}"),
                                  "is not a divbench embedding folder"),  # finding: written among them
    "out_is_a_file": (lambda t: _embed(t, f"out={_write(t / 'f.txt', 'x')}"), "is a file"),
    "out_under_a_file": (lambda t: _embed(t, f"out={_write(t / 'f.txt', 'x')}/sub"), "is a file"),
    "out_unwritable": (lambda t: _embed(t, f"out={UNWRITABLE}/emb"), "permission denied"),
    "npy_out_is_not_a_matrix": (lambda t: _embed(t, f"out={_write(t / 'thesis.npy', 'my thesis')}"),
                                "is not a divbench embedding matrix"),
    "npy_out_is_a_folder": (lambda t: _embed(t, f"out={(t / 'd.npy').mkdir() or t / 'd.npy'}"), "is a folder"),
    "precomputed_backend": (lambda t: _embed(t, f"out={t}/e", "embed=precomputed", f"embed.path={t}/emb"),
                            "only reads them"),
    "missing_pool": (lambda t: _embed(t, f"out={t}/e", f"pool.path={t}/nope"), "does not exist"),
    "dangling_symlink_in_the_pool": (lambda t: _embed(t, f"out={t}/e", f"pool.path={_dangling(t)}"),
                                     "leads nowhere"),
    "rows_dropped": (lambda t: _embed(t, f"out={t}/e", "pool.on_invalid=skip"), "would drop or reorder rows"),
}


@pytest.mark.parametrize("case", sorted(EMBED))
def test_embed(case, world, capsys, caplog):
    make, fragment = EMBED[case]
    probe(world, embed.main, [*make(world), _h(world)], 2, fragment, capsys, caplog)


def _toy_encoder(model_path: str, *, max_length: int, batch_size: int, device: str, **_) -> Callable:
    """A deterministic text encoder whose width depends on the model name: two "models" of different widths."""
    dim = 4 if model_path.endswith("a") else 6

    def encode(texts):
        rows = np.stack([np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))
                         .standard_normal(dim) for t in texts]).astype(np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    return encode


def _register_toy() -> None:
    from experiments.embedding.backends import EMBED_BACKENDS, ENCODER_PARAMS, register_backend

    if "toy" not in EMBED_BACKENDS:
        register_backend("toy", params=ENCODER_PARAMS)(_toy_encoder)


def test_embed_resume_redoes_another_models_vectors_and_edited_text(world, capsys, caplog):
    """Findings: a folder embedded by another model was "kept" (576-d returned for 384-d), and vectors of edited
    text were "kept". Now the manifest's provenance decides: kept only when model, settings and text match."""
    _register_toy()
    out = world / "vec"
    base = [*_embed(world, f"out={out}"), "embed.backend=toy"]
    assert invoke(embed.main, [*base, "embed.model=model-a", _h(world)], capsys, caplog)[0] == 0
    assert len(json.loads((out / "0.json").read_text())[0]) == 4
    code, text = invoke(embed.main, [*base, "embed.model=model-a", _h(world)], capsys, caplog)
    assert code == 0 and "2 file(s) kept, 0 embedded" in text
    code, text = invoke(embed.main, [*base, "embed.model=model-b", _h(world)], capsys, caplog)
    assert code == 0 and "model: 'model-a' -> 'model-b'" in text
    assert len(json.loads((out / "0.json").read_text())[0]) == 6  # another model's vectors are not kept
    _write(world / "pool" / "1.json", json.dumps([[{**GOOD[0], "value": f"edited {j}"}, GOOD[1]] for j in range(6)]))
    code, text = invoke(embed.main, [*base, "embed.model=model-b", _h(world)], capsys, caplog)
    assert code == 0 and "1.json: the text changed since it was embedded" in text and "1 file(s) kept" in text
    prov = json.loads((out / MANIFEST).read_text())["provenance"]
    assert prov["1.json"]["text_sha256"] != prov["0.json"]["text_sha256"] and prov["1.json"]["model"] == "model-b"


def test_chunked_embedding_resume_keeps_only_matching_chunks(tmp_path, caplog):
    """The study's partial embedding work file: a chunk of edited text, or another model, is redone."""
    from experiments.embedding.backends import embed_chunked

    texts = [f"text {i}" for i in range(10)]
    calls: list[int] = []

    def encode(batch):
        calls.append(len(batch))
        return _toy_encoder("model-a", max_length=8, batch_size=2, device="cpu")(batch)

    ident = {"model": "model-a", "backend": "toy", "max_length": 8}
    embed_chunked(texts, encode, tmp_path / "w", chunk_size=4, identity=ident)
    calls.clear()
    embed_chunked([*texts[:5], "edited", *texts[6:]], encode, tmp_path / "w", chunk_size=4, identity=ident)
    assert calls == [4, 2]  # chunk 0 kept; chunk 1 (edited) and the rest redone
    calls.clear()
    embed_chunked(texts, encode, tmp_path / "w", chunk_size=4, identity=ident | {"model": "model-b"})
    assert calls == [4, 4, 2] and "cannot be kept" in caplog.text


# ---------------------------------------------------------------- divbench-measure ---------------------------
def _measure(t: Path, *extra: str) -> list[str]:
    if not (t / "subsets").exists():
        for i in range(2):
            np.save(_write(t / "subsets" / f"s{i}.npy", b"").with_suffix(".npy"),
                    np.random.default_rng(i).standard_normal((5, DIM)))
        np.save(t / "ref.npy", np.random.default_rng(9).standard_normal((20, DIM)))
    return [f"subsets={t}/subsets", f"reference={t}/ref.npy", *extra]


MEASURE = {
    "out_is_the_working_directory": (lambda t: _measure(t, "out=."), "current working directory"),
    "out_is_the_subsets_folder": (lambda t: _measure(t, f"out={t}/subsets"), "is the input subsets"),
    "out_inside_the_subsets_folder": (lambda t: _measure(t, f"out={t}/subsets/m"), "lies inside the input subsets"),
    "out_holds_unrelated_files": (lambda t: _measure(t, f"out={_foreign(t / 'o', 'notes.txt')}"),
                                  "is not a divbench output folder"),
    "out_is_a_file": (lambda t: _measure(t, f"out={_write(t / 'f.txt', 'x')}"), "is a file"),
    "out_under_a_file": (lambda t: _measure(t, f"out={_write(t / 'f.txt', 'x')}/m"), "is a file"),
    # finding: "the pool" and k-means, not the metric and its key
    "reference_smaller_than_the_kmeans": (
        lambda t: _measure(t, f"out={t}/m", "metrics.compute=[{name:partition_entropy,params:{n_clusters:50}}]"),
        "metrics.compute[0] (partition_entropy) fits 50 k-means clusters on the reference, which has 20 rows"),
    "missing_subsets": (lambda t: [f"subsets={t}/nope", f"out={t}/m"], "does not exist"),
    "truncated_npy": (lambda t: _measure(t, f"out={t}/m", f"reference={_write(t / 'bad.npy', TRUNCATED_NPY)}"),
                      "bad.npy"),
    "unknown_metric": (lambda t: _measure(t, f"out={t}/m", "metrics.compute=[{name:novelsumm}]"), "novelsumm"),
    "secret_on_the_command_line": (lambda t: _measure(t, f"out={t}/m", f"+eval.judge.api_key={KEY}"), "sk-..."),
}


@pytest.mark.parametrize("case", sorted(MEASURE))
def test_measure(case, world, capsys, caplog):
    make, fragment = MEASURE[case]
    probe(world, measure.main, [*make(world), _h(world)], 2, fragment, capsys, caplog)


# ---------------------------------------------------------------- divbench-agreement -------------------------
def _agree(t: Path, *extra: str, b: Path | None = None) -> list[str]:
    return [f"{t}/in/runs.csv", str(b or _runs(t / "in2" / "runs.csv", performance=[2.0, 1, 4, 3, 5])), "--n-perm",
            "99", *extra]


AGREEMENT = {
    "out_is_an_input": (lambda t: _agree(t, "--out", f"{t}/in/runs.csv"), "is the input a"),
    "out_is_a_folder": (lambda t: _agree(t, "--out", f"{t}/in"), "is a folder"),
    "out_is_a_users_file": (lambda t: _agree(t, "--out", str(_write(t / "notes.json", '{"mine": 1}'))),
                            "is not a divbench agreement file"),
    "out_under_a_file": (lambda t: _agree(t, "--out", f"{_write(t / 'f.txt', 'x')}/a.json"), "is a file"),
    "out_unwritable": (lambda t: _agree(t, "--out", f"{UNWRITABLE}/a.json"), "permission denied"),
    "empty_runs_file": (lambda t: _agree(t, "--out", f"{t}/a.json", b=_write(t / "e.csv", "")), "is empty"),
    "binary_runs_file": (lambda t: _agree(t, "--out", f"{t}/a.json", b=_write(t / "b.csv", BINARY)),
                         "not a readable CSV"),
    "missing_runs_file": (lambda t: _agree(t, "--out", f"{t}/a.json", b=t / "nope.csv"), "no such runs.csv"),
    "runs_without_columns": (lambda t: _agree(t, "--out", f"{t}/a.json", b=_write(t / "c.csv", "x,y\n1,2\n")),
                             "missing; give a runs.csv written by divbench-study"),
    "performance_not_a_number": (lambda t: _agree(t, "--out", f"{t}/a.json", b=_runs(
        t / "p.csv", performance=["good", 1, 2, 3, 4])), "is not a number"),
    "replicates_without_seeds": (lambda t: _agree(t, "--out", f"{t}/a.json", b=_runs(
        t / "r.csv", performance_replicates=["[1, 2]"] * 5, train_seeds=["[1]"] * 5)), "train_seeds"),
    "different_models": (lambda t: _agree(t, "--out", f"{t}/a.json", b=_runs(t / "d.csv", subset=list("vwxyz"))),
                         "do not hold the same fine-tuned models"),
}


@pytest.mark.parametrize("case", sorted(AGREEMENT))
def test_agreement(case, world, capsys, caplog):
    make, fragment = AGREEMENT[case]
    probe(world, agreement.main, make(world), 2, fragment, capsys, caplog, argv=True)


def test_agreement_undefined_correlation_is_empty_not_zero(world, capsys, caplog):
    """Finding: spearman_p_perm 0.0 for a NaN correlation. A target missing for a model, or the same for all,
    leaves every statistic null with a warning naming the models."""
    b = _runs(world / "nan" / "runs.csv", performance=[1.0, float("nan"), 3, 4, 5])
    code, text = invoke(agreement.main, _agree(world, "--out", f"{world}/a.json", b=b), capsys, caplog, argv=True)
    assert code == 0, text
    doc = json.loads((world / "a.json").read_text())  # strict JSON: no NaN token
    assert doc["per_model"]["spearman_p_perm"] is None and doc["per_model"]["spearman_rho"] is None
    assert "undefined" in text and "'b'" in doc["per_model"]["undefined"]


# ---------------------------------------------------------------- divbench-judge -----------------------------
MT_QUESTIONS = SHARED / "data" / "mt_bench" / "question.jsonl"
ALPACA_REFERENCE = SHARED / "data" / "alpaca_eval" / "gpt4_1106_preview.json"


def _answers(t: Path, duplicate: bool = False) -> Path:
    rows = [{"question_id": q["question_id"], "model_id": "m", "choices": [{"index": 0, "turns": ["a", "b"]}]}
            for q in map(json.loads, MT_QUESTIONS.read_text().splitlines())]
    if duplicate:
        rows.insert(5, rows[3] | {"choices": [{"index": 0, "turns": ["other", "answer"]}]})
    return _write(t / "ans" / "m.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _outputs(t: Path, bad: object = None, name: str = "outputs.json") -> Path:
    ref = json.loads(ALPACA_REFERENCE.read_text())
    rows = [{"instruction": r["instruction"], "output": "an answer", "generator": "m"} for r in ref]
    rows[7]["output"] = bad
    return _write(t / "outs" / name, json.dumps(rows))


def _judge(t: Path, *extra: str) -> list[str]:
    logger = [] if "logger=wandb" in extra else ["logger=none"]
    return [f"shared_dir={SHARED}", f"cache_dir={t}/cache", *logger, *extra]


JUDGE = {
    "no_benchmark": (lambda t: _judge(t, f"out={t}/j"), "benchmark has no value"),
    "unknown_benchmark": (lambda t: _judge(t, "benchmark=arena", f"out={t}/j"), "benchmark must be one of"),
    "mt_bench_without_answers": (lambda t: _judge(t, "benchmark=mt_bench", f"out={t}/j"), "needs answers="),
    "answers_not_utf8": (lambda t: _judge(t, "benchmark=mt_bench", f"out={t}/j",
                                          f"answers={_write(t / 'ans' / 'x.jsonl', NOT_UTF8_JSONL)}"),
                         "x.jsonl:1: not UTF-8"),
    "answers_missing": (lambda t: _judge(t, "benchmark=mt_bench", f"out={t}/j", f"answers={t}/nope.jsonl"),
                        "does not exist"),
    # finding: the second answer judged, the first dropped silently
    "duplicated_question_id": (lambda t: _judge(t, "benchmark=mt_bench", f"out={t}/j",
                                                f"answers={_answers(t, duplicate=True)}"), "is answered twice"),
    # finding: "output": null sent to the judge and counted
    "null_output": (lambda t: _judge(t, "benchmark=alpaca_eval", f"out={t}/j", f"outputs={_outputs(t)}"),
                    "empty output(s) (empty, null or not text), first at record 7"),
    "numeric_output": (lambda t: _judge(t, "benchmark=alpaca_eval", f"out={t}/j", f"outputs={_outputs(t, 42)}"),
                       "output 42"),
    "outputs_not_utf8": (lambda t: _judge(t, "benchmark=alpaca_eval", f"out={t}/j",
                                          f"outputs={_write(t / 'outs' / 'latin1.json', LATIN1_JSON)}"),
                         "latin1.json: not UTF-8"),
    "out_holds_the_answers": (lambda t: _judge(t, "benchmark=mt_bench", f"out={t}/ans", f"answers={_answers(t)}"),
                              "contains the input answers/outputs"),
    "out_holds_unrelated_files": (lambda t: _judge(t, "benchmark=mt_bench", f"answers={_answers(t)}",
                                                   f"out={_foreign(t / 'o', 'notes.txt')}"),
                                  "is not a divbench judge folder"),
    "out_is_the_working_directory": (lambda t: _judge(t, "benchmark=mt_bench", "out=.", f"answers={_answers(t)}"),
                                     "current working directory"),
    "wandb_mode_bogus": (lambda t: _judge(t, "benchmark=mt_bench", f"out={t}/j", f"answers={_answers(t)}",
                                          "logger=wandb", f"logger.dir={t}/wandb", "logger.mode=bogus"),
                         "logger.mode='bogus'"),
}


@pytest.mark.parametrize("case", sorted(JUDGE))
def test_judge(case, world, capsys, caplog):
    make, fragment = JUDGE[case]
    probe(world, judge.main, [*make(world), _h(world)], 2, fragment, capsys, caplog)


# ---------------------------------------------------------------- divbench-study / -finetune -----------------
def _study(t: Path, *extra: str) -> list[str]:
    logger = [] if "logger=wandb" in extra else ["logger=none"]
    return ["debug=tiny", "pool=file", f"pool.path={t}/pool", "pool.size=null", f"cache_dir={t}/cache",
            f"results_dir={t}/results", *logger, *extra]


STUDY = {
    "results_next_to_a_thesis": (lambda t: _study(t, f"results_dir={_foreign(t / 'dl', 'runs.csv', 'thesis.tex')}"),
                                 "thesis.tex"),
    "results_dir_is_the_pool": (lambda t: _study(t, f"results_dir={t}/pool"), "is the input pool.path"),
    "results_dir_is_the_working_directory": (lambda t: _study(t, "results_dir=."), "current working directory"),
    "results_dir_is_a_file": (lambda t: _study(t, f"results_dir={_write(t / 'f.txt', 'x')}"), "is a file"),
    "wandb_mode_bogus": (lambda t: _study(t, "logger=wandb", f"logger.dir={t}/wandb", "logger.mode=bogus"),
                         "not a W&B mode"),
    # finding: found only after a model was fine-tuned (67 s on the tiny study)
    "benchmark_data_missing": (lambda t: _study(t, f"shared_dir={t}/empty"), "benchmark data missing"),
    "missing_pool": (lambda t: _study(t, f"pool.path={t}/nope"), "does not exist"),
    "dangling_symlink_in_the_pool": (lambda t: _study(t, f"pool.path={_dangling(t)}"), "leads nowhere"),
    "unknown_stop_after": (lambda t: _study(t, "stop_after=bake"), "is not a stage"),
    "unknown_subset_label": (lambda t: _study(t, "selection.only=nope"), "unknown subset label"),
    "base_model_folder_missing": (lambda t: _study(t, "finetune.base_model=/no/such/model"), "no such model folder"),
    "secret_on_the_command_line": (lambda t: _study(t, f"+eval.judge.api_key={KEY}"), "sk-..."),
}


@pytest.mark.parametrize("case", sorted(STUDY))
def test_study(case, world, capsys, caplog):
    make, fragment = STUDY[case]
    probe(world, study.main, [*make(world), _h(world)], 2, fragment, capsys, caplog)


@pytest.mark.parametrize("case", sorted(set(STUDY) - {"benchmark_data_missing", "unknown_stop_after"}))
def test_finetune(case, world, capsys, caplog):
    """divbench-finetune runs the study's checks and the engine up to the finetune stage: the same refusals (it
    reads no benchmark data and stops after the finetune stage itself, so those two probes do not apply)."""
    make, fragment = STUDY[case]
    probe(world, finetune.main, [*make(world), _h(world)], 2, fragment, capsys, caplog)


def test_dry_run_says_what_it_cannot_find(world, capsys, caplog):
    """Finding: with an empty DIVBENCH_SHARED a dry run planned to regenerate and re-judge, silently."""
    code, text = invoke(study.main, [*_study(world, f"shared_dir={world}/empty", "dry_run=true"), _h(world)],
                        capsys, caplog)
    assert code == 0, text[-2000:]
    assert "a real run would stop here: benchmark data missing" in text and "divbench-data fetch" in text


# ---------------------------------------------------------------- divbench-doctor ----------------------------
DOCTOR = {
    "unknown_experiment": (["experiment=nope"], 2, "experiment"),
    "unknown_key": (["nokey=1"], 2, "nokey"),
    "secret_on_the_command_line": ([f"+eval.judge.api_key={KEY}"], 2, "sk-..."),
    "cuda_without_a_gpu": (["device=cuda"], 2, "missing GPUs"),
    "judge_key_not_set": (["eval=demo", "eval/judge=openai_gpt41", "eval.judge.api_key_env=DIVBENCH_NO_SUCH_KEY"], 2,
                          "export DIVBENCH_NO_SUCH_KEY"),
    "benchmark_data_missing": (["eval=demo", "shared_dir=/nonexistent"], 2, "benchmark data missing"),
    "wandb_mode_bogus": (["logger.mode=bogus"], 2, "not a W&B mode"),
    "base_model_folder_missing": (["finetune.base_model=/no/such/model"], 2, "no such model folder"),
    "local_judge_not_answering": (["eval=demo", "eval/judge=vllm_server", "eval.judge.base_url=http://127.0.0.1:9/v1",
                                   "eval.judge.api_key_env=HOME"], 2, "nothing answers there"),
    # 127.0.0.2 is not "this machine's judge server" by name: the remote-endpoint message, found in seconds
    "remote_judge_unreachable": (["eval=demo", "eval/judge=vllm_server", "eval.judge.base_url=http://127.0.0.2:9/v1",
                                  "eval.judge.api_key_env=HOME"], 2, "http://127.0.0.2:9/v1: cannot connect"),
    "cache_dir_under_a_file": (["cache_dir=__FILE__/cache"], 2, "is a file, not a folder"),
}


@pytest.mark.parametrize("case", sorted(DOCTOR))
def test_doctor(case, world, capsys, caplog):
    args, code, fragment = DOCTOR[case]
    args = [a.replace("__FILE__", str(_write(world / "f.txt", "x"))) for a in args]
    if case != "benchmark_data_missing":
        args = [f"shared_dir={SHARED}", *args]
    if not any(a.startswith("cache_dir=") for a in args):
        args.append(f"cache_dir={world}/cache")
    probe(world, doctor.main, [*args, _h(world)], code, fragment, capsys, caplog)


# ---------------------------------------------------------------- divbench-data ------------------------------
@pytest.fixture()
def server(world):
    """A local web server for divbench-data fetch: serves ``<world>/site`` (what a test puts there)."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    site = world / "site"
    site.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _site(site: Path, content: str) -> None:
    for rel in ("datasets/tatsu-lab/alpaca_eval/resolve/main/alpaca_eval_gpt4_baseline.json",
                "datasets/tatsu-lab/alpaca_eval/resolve/main/alpaca_eval.json"):
        _write(site / rel, content)


DATA = {
    "no_subcommand": (lambda t, url: [], "required"),
    "unknown_subcommand": (lambda t, url: ["download"], "invalid choice"),
    "unknown_option": (lambda t, url: ["fetch", "--bogus"], "unrecognized arguments"),
    "dest_is_a_file": (lambda t, url: ["fetch", "--dest", str(_write(t / "f.txt", "x"))], "is a file"),
    "dest_under_a_file": (lambda t, url: ["fetch", "--dest", f"{_write(t / 'f.txt', 'x')}/d"], "is a file"),
    "host_unreachable": (lambda t, url: ["fetch", "--dest", f"{t}/d", "--hf-endpoint", "http://127.0.0.1:9",
                                         "--github-raw", "http://127.0.0.1:9"], "could not download"),
    "host_without_scheme": (lambda t, url: ["fetch", "--dest", f"{t}/d", "--hf-endpoint", "example.org"],
                            "as http(s)://host"),
    "not_found_on_the_server": (lambda t, url: ["fetch", "--dest", f"{t}/d", "--hf-endpoint", url], "404"),
    "html_instead_of_json": (lambda t, url: _site(t / "site", "<html>error</html>") or
                             ["fetch", "--dest", f"{t}/d", "--hf-endpoint", url], "not the expected JSON data"),
    "too_few_records": (lambda t, url: _site(t / "site", json.dumps([{"instruction": "x"}])) or
                        ["fetch", "--dest", f"{t}/d", "--hf-endpoint", url], "1 records, expected 805"),
}


@pytest.mark.parametrize("case", sorted(DATA))
def test_data(case, world, server, capsys, caplog):
    make, fragment = DATA[case]
    args = make(world, server[1])
    probe(world, data.main, args, 2, fragment, capsys, caplog, argv=True)


# ---------------------------------------------------------------- files honour the umask ---------------------
def test_weights_honour_the_umask(tmp_path):
    """Finding: adapters and the converted model were written 0600 (safetensors); a finished folder now gets the
    umask's modes."""
    import torch
    from safetensors.torch import save_file

    from divcore.io import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
        assert (tmp_path / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_full_disk_is_an_input_error_naming_the_place():
    """Finding: "No space left" buried in a safetensors error during the model conversion."""
    from divcore.errors import InputError
    from divcore.io import disk_full, writing

    wrapped = RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                           "\"No space left on device\" })")
    assert disk_full(wrapped) and not disk_full(RuntimeError("shape mismatch"))
    with pytest.raises(InputError, match="out=/data/x: cannot write /data/x: no space left on the device"):
        with writing("/data/x", "out"):
            raise wrapped
