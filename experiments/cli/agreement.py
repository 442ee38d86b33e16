"""``divbench-agreement a.csv b.csv --out F``: rank agreement of two performance targets over the same fine-tuned
models (:mod:`experiments.report.agreement`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd

from divcore.errors import InputError
from divcore.io import atomic_write
from experiments.report.agreement import target_agreement

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="divbench-agreement", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="runs.csv of the first target (e.g. the proxy)")
    parser.add_argument("b", type=Path, help="runs.csv of the second target on the same models (e.g. judged)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--n-perm", type=int, default=9999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared-only", action="store_true",
                        help="compare the models both files hold (else a model in only one file is an error)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        for path in (args.a, args.b):
            if not path.is_file():
                raise InputError(f"{path}: no such runs.csv; give the runs.csv files of two divbench-study runs")
        result = target_agreement(pd.read_csv(args.a), pd.read_csv(args.b), n_perm=args.n_perm, seed=args.seed,
                                  where=(str(args.a), str(args.b)), shared_only=args.shared_only)
    except InputError as e:
        log.error("%s", e)
        return 2
    atomic_write(args.out, json.dumps(result, indent=2) + "\n")
    log.info("per model: rho=%.3f (n=%d, permutation p=%.3g); per subset mean: rho=%.3f (n=%d, p=%.3g) -> %s",
             result["per_model"]["spearman_rho"], result["per_model"]["n"], result["per_model"]["spearman_p_perm"],
             result["per_subset_mean"]["spearman_rho"], result["per_subset_mean"]["n"],
             result["per_subset_mean"]["spearman_p_perm"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
