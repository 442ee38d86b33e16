"""Write a selected subset where other tools can use it: one directory per subset.

``indices.json`` (pool rows in pick order), ``provenance.json``, ``selected.jsonl`` (``messages`` format),
``hf/`` (a ``datasets`` ``save_to_disk`` copy with a dataset card ``hf/README.md``), and for NovelSelect the
authors' own output files (``novelselect_<k>_dense_<B>_dist_<A>.json`` / ``..._indices.json``, named and shaped
as their ``novelselect.py`` writes them) so their downstream scripts keep working. The directory is built beside
its destination and renamed into place, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from divcore.errors import InputError
from divcore.io import make_temp_dir, temp_tag, writing
from divcore.ownership import adopt, check_output_dir, publish_dir

log = logging.getLogger(__name__)

PROVENANCE = "provenance.json"
# The files of an export folder written before manifests existed (divcore.ownership's legacy names).
EXPORT_FILES = ("indices.json", PROVENANCE, "metrics.json", "scores.json", "selected.jsonl", "hf/*",
                "novelselect_*.json", "pool.parquet")
# A study export's root folder: pool.parquet and one export folder per subset.
STUDY_EXPORT_FILES = ("pool.parquet", *(f"*/{p}" for p in EXPORT_FILES))
AUTHOR_ROLES = {"user": "user", "assistant": "assistant", "system": "system"}


def selection_identity(provenance: dict[str, Any]) -> dict[str, Any]:
    """What makes two exports the same selection: re-exporting it into its own directory is allowed."""
    return {k: provenance.get(k) for k in ("selector", "params", "seed", "size", "pool_fingerprint",
                                            "embedding_fingerprint")}


def check_out_dir(out: Path, provenance: dict[str, Any], overwrite: bool,
                  inputs: dict[str, Any] | None = None) -> None:
    """Refuse an ``out`` holding any file divbench did not write (whatever ``overwrite`` says), or one that is,
    lies in or holds an input (``inputs``) or the working directory; and a folder holding another selection
    unless ``overwrite``."""
    check_output_dir(out, legacy=EXPORT_FILES, inputs=inputs, what="export (it holds no divbench selection)")
    if overwrite or not out.exists() or not any(out.iterdir()):
        return
    prov = out / PROVENANCE
    if prov.exists():
        try:
            same = selection_identity(json.loads(prov.read_text())) == selection_identity(provenance)
        except (json.JSONDecodeError, UnicodeDecodeError):
            same = False
        if same:
            return
        raise InputError(f"out={out} already holds a different selection ({prov}); choose another out or pass "
                         "overwrite=true to replace it")
    raise InputError(f"out={out} holds divbench files but no divbench selection ({PROVENANCE} is missing); choose "
                     "an empty or new directory, or pass overwrite=true to replace them")


def check_export_out(cfg: dict[str, Any]) -> None:
    """divbench-select's ``out``, before any work: writable, not an input (``pool.path``, ``embed.path``,
    ``from_study``) nor the working directory, holding only divbench's files (a study export's root: its subset
    folders and pool.parquet)."""
    from divcore.io import check_writable

    if not cfg.get("out"):
        raise InputError("out is required: the folder to export the subset to (out=my_subset)")
    out = Path(cfg["out"])
    inputs = {"pool.path": (cfg.get("pool") or {}).get("path"), "embed.path": (cfg.get("embed") or {}).get("path"),
              "from_study": cfg.get("from_study")}
    check_output_dir(out, legacy=STUDY_EXPORT_FILES if cfg.get("from_study") else EXPORT_FILES, inputs=inputs,
                     what="export (it holds no divbench selection)")
    check_writable(out, "out")


def selected_rows(convs: list[dict], indices: list[int]) -> list[dict]:
    """The subset's rows in pick order, each with its pool row index and pick rank."""
    return [{**convs[i], "pool_index": int(i), "pick": rank} for rank, i in enumerate(indices)]


def authors_record(conv: dict) -> Any:
    """A row as the authors' text files hold it: a plain string, or their ``{"from", "value"}`` turns."""
    if "messages" not in conv:
        return conv["text"]
    return [{"from": AUTHOR_ROLES[m["role"]], "value": m["content"]} for m in conv["messages"]]


def authors_stem(size: int, params: dict[str, Any]) -> str:
    """``novelselect_<k>_dense_<B>_dist_<A>``: their argparse reads both powers as floats (``0.5``, ``1.0``)."""
    return f"novelselect_{size}_dense_{float(params['density_power'])}_dist_{float(params['distance_power'])}"


def write_authors_files(dest: Path, convs: list[dict], indices: list[int], size: int, params: dict[str, Any]) -> None:
    stem = authors_stem(size, params)
    (dest / f"{stem}.json").write_text(json.dumps([authors_record(convs[i]) for i in indices], indent=2,
                                                  ensure_ascii=False))
    (dest / f"{stem}_indices.json").write_text(json.dumps([int(i) for i in indices], indent=2))


def _portable(value: Any) -> Any:
    """A value fit for a published card: an absolute local path becomes its file name (a reader has no such
    folder, and the path tells them the exporter's user name and layout)."""
    if isinstance(value, str) and (value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", value)):
        return Path(value).name or value
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    return value


SMOKE_CAVEAT = ("**Smoke test, not a benchmark result.** These scores come from divbench's smoke-test judge (a "
                "small local model that exercises the AlpacaEval / MT-Bench code path but gives no valid score); do "
                "not compare them with published numbers. Only judge-free scores (reference NLL) are meaningful.")
# Score keys a smoke-test judge produced (judge verdicts); judge-free keys (``*nll*``) are kept unmarked.
JUDGED_KEYS = ("win_rate", "mt_bench", "alpaca", "judge", "performance")


def _table(rows: dict[str, Any]) -> str:
    lines = ["| key | value |", "|---|---|"]
    for k, v in rows.items():
        v = _portable(v)
        shown = f"{v:.6g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (dict, list)) else v
        lines.append(f"| `{k}` | {shown} |")
    return "\n".join(lines)


def _judged(key: str) -> bool:
    return "nll" not in key.lower() and any(j in key.lower() for j in JUDGED_KEYS)


def smoke_test_scores(provenance: dict[str, Any], scores: dict[str, Any]) -> bool:
    """Whether the study's judged scores came from a smoke-test judge: eval.json's ``judge_smoke_test`` flag, or a
    study evaluated with the smoke judge (``eval: smoke_judge`` / a judge labelled smoke)."""
    if scores.get("judge_smoke_test"):
        return True
    text = json.dumps(provenance.get("eval", "")) + json.dumps(provenance.get("judge", ""))
    return "smoke" in text.lower()


def dataset_card(name: str, provenance: dict[str, Any], metrics_row: dict[str, Any],
                 scores: dict[str, Any] | None) -> str:
    """A Hugging Face dataset card: provenance, diversity metrics, source pool, licence, study scores."""
    n = provenance["size"]
    size_cat = "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000 else "n>100K"
    pool = provenance.get("pool", {})
    source = _portable(pool.get("path") or pool.get("format"))
    parts = [
        "---", "license: other", f"pretty_name: {name}", "tags:", "- divbench", "- data-selection",
        f"- {provenance['selector']}", "size_categories:", f"- {size_cat}", "---", "",
        f"# {name}", "",
        f"{n} rows picked by `{provenance['selector']}` from a pool of {provenance['pool_size']} rows with "
        "divbench, which reproduces *Measuring Data Diversity for Instruction Tuning* "
        "(Yang et al., ACL 2025). Rows are in pick order; `pool_index` is each row's index in the pool.", "",
        "## Provenance", "", _table({k: v for k, v in provenance.items() if k not in ("pool", "embed")}), "",
        "## Source pool", "", _table({f"pool.{k}": v for k, v in pool.items()}), "",
        _table({f"embed.{k}": v for k, v in provenance.get("embed", {}).items()}), "",
        "## Diversity of this subset", "",
        "Computed by divbench's metrics with the whole pool as the density / coverage reference.", "",
        _table(metrics_row) if metrics_row else "(no metrics computed)", "",
    ]
    if scores:
        smoke = smoke_test_scores(provenance, scores)
        shown = {f"{k} (smoke test)" if smoke and _judged(k) else k: v for k, v in scores.items()}
        parts += ["## Fine-tuned model", "", "Scores of the model fine-tuned on this subset in the divbench study "
                  f"`{_portable(provenance.get('study'))}`:", ""]
        parts += [SMOKE_CAVEAT, ""] if smoke else []
        parts += [_table(shown), ""]
    parts += ["## Licence", "", f"This subset is a selection of rows of `{source}`; it carries that source's "
              "licence and terms of use (for example ShareGPT conversations follow OpenAI's terms, UltraChat is "
              "MIT, WizardLM's evol-instruct data is non-commercial). Check them before you redistribute or train on "
              "it. The `license: other` tag above is a placeholder for that reason.", ""]
    return "\n".join(parts)


def write_hf(dest: Path, rows: list[dict], card: str) -> None:
    import datasets

    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(dest))
    (dest / "README.md").write_text(card)


HUB_LOGIN = "log in with `hf auth login` (or `huggingface-cli login`), or export HF_TOKEN with a write token"


def check_hub_token(repo_id: str) -> None:
    """push_to_hub needs a Hugging Face token: said before any work when none is configured (a warning: a token
    may also come from a credential helper the check cannot see; the upload then fails with the same advice)."""
    from huggingface_hub import get_token

    if get_token() is None:
        log.warning("push_to_hub=%s: no Hugging Face token is configured, so the upload at the end will likely be "
                    "refused; %s (the export itself is written either way)", repo_id, HUB_LOGIN)


NETWORK_PACKAGES = ("httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3", "huggingface_hub")


def _hub_failure(e: BaseException) -> bool:
    """A network, credential or hub refusal: the hub client's errors (httpx / requests / huggingface_hub, which do
    not all derive from OSError) or an OSError."""
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in NETWORK_PACKAGES


def push_to_hub(hf_dir: Path, repo_id: str, private: bool = True) -> None:
    """Upload ``hf_dir`` (the dataset, then its card as the repo's README) to the Hugging Face hub. A missing or
    refused token, or no network, is an input error that says to log in or go online; the export stays."""
    import datasets
    from huggingface_hub import HfApi

    try:
        ds = datasets.load_from_disk(str(hf_dir))
        ds.push_to_hub(repo_id, private=private)
        HfApi().upload_file(path_or_fileobj=str(hf_dir / "README.md"), path_in_repo="README.md", repo_id=repo_id,
                            repo_type="dataset")
    except Exception as e:
        if not _hub_failure(e):
            raise
        raise InputError(f"push_to_hub={repo_id}: the upload failed ({type(e).__name__}: {str(e).strip()[:200]}); "
                         f"the export in {hf_dir.parent} is complete. Check the network and the token ({HUB_LOGIN}) "
                         "and that you may write to the repo, then run again (the selection is cached)") from None
    log.info("pushed %s to https://huggingface.co/datasets/%s", hf_dir, repo_id)


def export_subset(out: Path, convs: list[dict], indices: list[int], provenance: dict[str, Any],
                  metrics_row: dict[str, Any], scores: dict[str, Any] | None = None, overwrite: bool = False,
                  name: str | None = None) -> Path:
    """Write every export file of one subset into ``out`` (see the module docstring); returns ``out``."""
    check_out_dir(out, provenance, overwrite)
    rows = selected_rows(convs, indices)
    with writing(out, "out"):
        _build_export(out, convs, indices, provenance, metrics_row, rows, scores, name)
    log.info("exported %d rows to %s", len(indices), out)
    return out


def _build_export(out: Path, convs: list[dict], indices: list[int], provenance: dict[str, Any],
                  metrics_row: dict[str, Any], rows: list[dict], scores: dict[str, Any] | None,
                  name: str | None) -> None:
    tmp = make_temp_dir(out.parent, out.name)
    try:
        (tmp / "indices.json").write_text(json.dumps([int(i) for i in indices]))
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2, default=str))
        (tmp / "metrics.json").write_text(json.dumps(metrics_row, indent=2))
        if scores:
            (tmp / "scores.json").write_text(json.dumps(scores, indent=2))
        with (tmp / "selected.jsonl").open("w") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        write_hf(tmp / "hf", rows, dataset_card(name or out.name, provenance, metrics_row, scores))
        if provenance["selector"] == "novelselect":
            write_authors_files(tmp, convs, indices, provenance["size"], provenance["params"])
        publish_dir(tmp, out, "export", legacy=EXPORT_FILES)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_map(path: Path, convs: list[dict], emb: np.ndarray, subsets: dict[str, list[int]]) -> Path:
    """``pool.parquet`` for embedding-atlas: text, embedding, and one membership column per subset; added to its
    folder's manifest."""
    import pandas as pd

    from experiments.data.pools import embedding_text

    table = pd.DataFrame({"id": [c["id"] for c in convs], "text": [embedding_text(c) for c in convs],
                          "embedding": list(np.asarray(emb, dtype=np.float32))})
    for label, indices in subsets.items():
        member = np.zeros(len(convs), dtype=bool)
        member[list(indices)] = True
        table[label] = member
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{temp_tag()}-{os.urandom(4).hex()}")
    try:
        table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    adopt(path.parent, path.name, "export", legacy=STUDY_EXPORT_FILES)
    log.info("wrote %s; open it with: embedding-atlas %s --text text --vector embedding", path, path)
    return path
