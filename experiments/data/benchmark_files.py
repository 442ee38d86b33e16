"""Benchmark data no package ships (AlpacaEval references, MT-Bench questions and judge prompts): where to find it,
and ``divbench-data fetch`` to download it from its public sources.

Each file is looked up, in order, under ``$DIVBENCH_DATA``, ``<shared_dir>/data`` (``../shared/data`` beside the
project), and the user data directory (``platformdirs.user_data_dir("divbench")``, which ``fetch`` fills). Configs
name files through the ``${divbench_data:<shared_dir>,<relative path>}`` resolver. When no root holds a file, the
resolver returns its place in the user data directory and the reader's "not found" error names ``divbench-data
fetch``. Downloads use urllib (one GET per file, atomic writes): ``huggingface_hub`` would need a token-aware cache
layout that the offline readers do not expect.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("divbench.data")

FETCH_HINT = "run `divbench-data fetch` (needs internet) or set DIVBENCH_DATA to a directory that holds it"
HF_ENDPOINT = "https://huggingface.co"
GITHUB_RAW = "https://raw.githubusercontent.com"
_FASTCHAT = "{gh}/lm-sys/FastChat/main/fastchat/llm_judge/data"
_ALPACA = "{hf}/datasets/tatsu-lab/alpaca_eval/resolve/main"
# relative path -> source URL template ({hf}: the hub endpoint, {gh}: GitHub's raw-file host)
SOURCES = {
    "alpaca_eval/gpt4_1106_preview.json": _ALPACA + "/alpaca_eval_gpt4_baseline.json",
    "alpaca_eval/text_davinci_003.json": _ALPACA + "/alpaca_eval.json",
    "mt_bench/question.jsonl": _FASTCHAT + "/mt_bench/question.jsonl",
    "mt_bench/judge_prompts.jsonl": _FASTCHAT + "/judge_prompts.jsonl",
    "mt_bench/reference_answer/gpt-4.jsonl": _FASTCHAT + "/mt_bench/reference_answer/gpt-4.jsonl",
}
EXPECTED_ROWS = {"alpaca_eval/gpt4_1106_preview.json": 805, "alpaca_eval/text_davinci_003.json": 805,
                 "mt_bench/question.jsonl": 80}


def user_data_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("divbench"))


def data_roots(shared_dir: str | Path | None = None) -> list[Path]:
    """Where data is looked for, first match wins."""
    roots = [Path(os.environ["DIVBENCH_DATA"])] if os.environ.get("DIVBENCH_DATA") else []
    if shared_dir:
        roots.append(Path(shared_dir) / "data")
    return roots + [user_data_dir()]


def resolve_data(relative: str, shared_dir: str | Path | None = None) -> str:
    """The first root holding ``relative``; else its place in the user data directory (where fetch puts it)."""
    for root in data_roots(shared_dir):
        if (root / relative).exists():
            return str(root / relative)
    return str(user_data_dir() / relative)


def _check_content(relative: str, blob: bytes, url: str) -> None:
    """A download is kept only if it parses and has the expected number of records (not an HTML error page)."""
    try:
        text = blob.decode("utf-8")
        rows = (json.loads(text) if relative.endswith(".json")
                else [json.loads(line) for line in text.splitlines() if line.strip()])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RuntimeError(f"{url}: not the expected JSON data ({e})") from None
    want = EXPECTED_ROWS.get(relative)
    if want is not None and len(rows) != want:
        raise RuntimeError(f"{url}: {len(rows)} records, expected {want}")


def fetch(dest: str | Path | None = None, *, hf_endpoint: str | None = None, github_raw: str | None = None,
          force: bool = False, timeout: float = 60.0) -> list[Path]:
    """Download every missing file of :data:`SOURCES` into ``dest`` (default: the user data directory)."""
    from divcore.io import atomic_write

    dest = Path(dest) if dest else user_data_dir()
    hosts = {"hf": (hf_endpoint or os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/"),
             "gh": (github_raw or GITHUB_RAW).rstrip("/")}
    written = []
    for relative, template in SOURCES.items():
        target = dest / relative
        if target.exists() and not force:
            log.info("%s: present, kept", target)
            continue
        url = template.format(**hosts)
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                blob = resp.read()
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise RuntimeError(f"could not download {url} ({e}); check the connection and retry") from None
        except ValueError as e:  # urllib: "unknown url type" for a host given without http(s)://
            raise RuntimeError(f"cannot download {url} ({e}): give --hf-endpoint / --github-raw as http(s)://host"
                               ) from None
        _check_content(relative, blob, url)
        atomic_write(target, blob)
        written.append(target)
    log.info("benchmark data in %s", dest)
    return written
