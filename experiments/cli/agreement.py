"""divbench-agreement a.csv b.csv --out F: rank agreement (Spearman with permutation p, Kendall) of two performance
targets over the same fine-tuned models, per model and per subset mean (:mod:`experiments.report.agreement`)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from divcore.io import atomic_write, writing
from divcore.ownership import check_output_file
from experiments.cli.command import argparse_command
from experiments.report.agreement import target_agreement
from experiments.report.tables import read_runs_csv

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="divbench-agreement", description=__doc__)
    p.add_argument("a", type=Path, help="runs.csv of the first target (e.g. the proxy)")
    p.add_argument("b", type=Path, help="runs.csv of the second target on the same models (e.g. judged)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--n-perm", type=int, default=9999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shared-only", action="store_true",
                   help="compare the models both files hold (else a model in only one file is an error)")
    return p


@argparse_command(parser())
def main(args: argparse.Namespace) -> None:
    frames = [read_runs_csv(path) for path in (args.a, args.b)]
    check_output_file(args.out, "--out", inputs={"a": args.a, "b": args.b}, ours=is_agreement_file,
                      what="agreement file")
    result = target_agreement(*frames, n_perm=args.n_perm, seed=args.seed, where=(str(args.a), str(args.b)),
                              shared_only=args.shared_only)
    with writing(args.out, "--out"):
        atomic_write(args.out, json.dumps(result, indent=2) + "\n")
    log.info("per model: rho=%s (n=%d, permutation p=%s); per subset mean: rho=%s (n=%d, p=%s) -> %s",
             *_shown(result["per_model"]), *_shown(result["per_subset_mean"]), args.out)


def _shown(level: dict) -> tuple:
    def fmt(v: float | None, spec: str) -> str:
        return "undefined" if v is None else format(v, spec)

    return fmt(level["spearman_rho"], ".3f"), level["n"], fmt(level["spearman_p_perm"], ".3g")


def is_agreement_file(path: Path) -> bool:
    """An earlier divbench-agreement result (which a re-run may replace)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"per_model", "per_subset_mean"} <= set(doc)


if __name__ == "__main__":
    main()
