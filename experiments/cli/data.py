"""divbench-data fetch | where: the benchmark files no package ships (AlpacaEval references, MT-Bench questions,
reference answers and judge prompts; :mod:`experiments.data.benchmark_files`).

``fetch`` downloads them into the user data directory (or --dest); ``where`` lists the roots searched
($DIVBENCH_DATA, then <shared>/data, then the user data directory) and where each file is found (exit 2 if one is
missing).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from divcore.errors import InputError
from experiments.cli.command import argparse_command
from experiments.data.benchmark_files import (
    FETCH_HINT,
    GITHUB_RAW,
    SOURCES,
    data_roots,
    fetch,
    resolve_data,
    user_data_dir,
)
from experiments.engine.config import PROJECT_ROOT

log = logging.getLogger("divbench.data")


def where() -> None:
    """Log the roots searched (in order) and where each file is found; a missing file is an input error."""
    shared = Path(os.environ.get("DIVBENCH_SHARED", PROJECT_ROOT.parent / "shared"))
    log.info("searched, first match wins: %s", "; ".join(str(r) for r in data_roots(shared)))
    missing = []
    for relative in SOURCES:
        found = resolve_data(relative, shared)
        if not Path(found).exists():
            missing.append(relative)
        log.info("%-40s %s%s", relative, found if Path(found).exists() else "-", "" if Path(found).exists()
                 else "  (missing)")
    if missing:
        raise InputError(f"{len(missing)} of {len(SOURCES)} files missing ({', '.join(missing)}): {FETCH_HINT}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="divbench-data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download the AlpacaEval references and MT-Bench files")
    f.add_argument("--dest", default=None, help=f"target directory (default: {user_data_dir()})")
    f.add_argument("--hf-endpoint", default=None, help="Hugging Face hub endpoint (default: $HF_ENDPOINT or hub)")
    f.add_argument("--github-raw", default=None, help=f"raw GitHub host (default: {GITHUB_RAW})")
    f.add_argument("--force", action="store_true", help="download files that are already present again")
    sub.add_parser("where", help="print the roots searched and where each file is found (exit 2 if one is missing)")
    return p


@argparse_command(parser())
def main(args: argparse.Namespace) -> None:
    if args.command == "where":
        return where()
    from divcore.io import check_writable, writing

    dest = args.dest or str(user_data_dir())
    if Path(dest).exists() and not Path(dest).is_dir():
        raise InputError(f"--dest {dest} is a file, not a folder: give --dest <a folder>")
    check_writable(dest, "--dest")
    try:
        with writing(dest, "--dest"):
            fetch(args.dest, hf_endpoint=args.hf_endpoint, github_raw=args.github_raw, force=args.force)
    except RuntimeError as e:  # a download that failed after its retries: what, where and the fix
        raise InputError(str(e)) from None


if __name__ == "__main__":
    main()
