"""Power of the pre-registered contrast r(metric A, performance) - r(metric B, performance) (Williams' test) by
simulation, for results/mini_v2/PREREGISTRATION.md.

Model (one draw = one study of n subsets): per subset a latent true performance P and two metrics A, B, jointly
standard normal with corr(A, P) = rho_a, corr(B, P) = rho_b, corr(A, B) = rho_ab. The observed performance of a
subset is the mean of k training replicates, Y = P + e, var(e) = (1 / rel - 1) / k, so that one replicate's
reliability var(P) / var(Y) is ``rel``. Each study computes r(A, Y), r(B, Y), r(A, B) and Williams' t with n - 3
degrees of freedom (Steiger 1980, eq. 7):

    t = (r_ay - r_by) * sqrt((n - 1)(1 + r_ab) / (2 (n - 1) / (n - 3) |R| + rbar^2 (1 - r_ab)^3))
    |R| = 1 - r_ay^2 - r_by^2 - r_ab^2 + 2 r_ay r_by r_ab,   rbar = (r_ay + r_by) / 2

Power = the share of studies with r_ay > r_by and two-sided p < alpha (alpha / m for m Bonferroni-corrected
contrasts; Holm's first step has the same threshold, so this is the power to reject at least the strongest one).

    python scripts/power_williams.py                 # the table in the pre-registration (20,000 studies per cell)
    python scripts/power_williams.py --sims 2000     # quicker
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from scipy import stats


def williams_p(r_ay: np.ndarray, r_by: np.ndarray, r_ab: np.ndarray, n: int) -> np.ndarray:
    """Two-sided p of Williams' test of r_ay = r_by (arrays of studies)."""
    det = 1 - r_ay**2 - r_by**2 - r_ab**2 + 2 * r_ay * r_by * r_ab
    rbar = (r_ay + r_by) / 2
    t = (r_ay - r_by) * np.sqrt((n - 1) * (1 + r_ab) / (2 * (n - 1) / (n - 3) * det + rbar**2 * (1 - r_ab) ** 3))
    return 2 * stats.t.sf(np.abs(t), n - 3)


def _corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    return (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))


def power(n: int, *, rho_a: float = 0.9, rho_b: float = 0.6, rho_ab: float = 0.5, rel: float = 0.75, k: int = 1,
          alpha: float = 0.05, m: int = 1, sims: int = 20000, seed: int = 0) -> float:
    """Share of simulated studies (module docstring) in which Williams' test finds r(A, Y) > r(B, Y)."""
    cov = np.array([[1, rho_ab, rho_a], [rho_ab, 1, rho_b], [rho_a, rho_b, 1]])
    if np.linalg.eigvalsh(cov).min() <= 0:
        raise ValueError(f"correlations {rho_a}, {rho_b}, {rho_ab} are not jointly possible")
    rng = np.random.default_rng(seed)
    a, b, p = np.moveaxis(rng.multivariate_normal(np.zeros(3), cov, size=(sims, n)), 2, 0)
    y = p + rng.normal(scale=np.sqrt((1 / rel - 1) / k), size=(sims, n))
    r_ay, r_by, r_ab = _corr(a, y), _corr(b, y), _corr(a, b)
    return float(((r_ay > r_by) & (williams_p(r_ay, r_by, r_ab, n) < alpha / m)).mean())


def subsets_needed(target: float = 0.8, **kw: float) -> int:
    """The smallest n (steps of 2) with power >= target."""
    n = 8
    while power(n, **kw) < target:
        n += 2
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sims", type=int, default=20000)
    args = ap.parse_args()
    s = args.sims
    rows = {}
    for rho_ab in (0.5, 0.59, 0.75):  # 0.5: the assumption; 0.59: NovelSum vs DistSum-cosine in the
        # mini study without its duplicates (0.90 with them is impossible with 0.9 and 0.6); 0.75: near that bound
        for n in (18, 32, 48, 56, 64, 80, 96):
            rows[f"rho_ab={rho_ab} n={n} k=1"] = power(n, rho_ab=rho_ab, sims=s)
        rows[f"rho_ab={rho_ab} n=32 k=2"] = power(32, rho_ab=rho_ab, k=2, sims=s)
        rows[f"rho_ab={rho_ab} n=64 k=1 bonferroni m=11"] = power(64, rho_ab=rho_ab, m=11, sims=s)
        rows[f"rho_ab={rho_ab} n_for_80%"] = subsets_needed(rho_ab=rho_ab, sims=s)
    rows["rho_ab=0.5 n_for_80% bonferroni m=11"] = subsets_needed(rho_ab=0.5, m=11, sims=s)
    for rel in (0.5, 0.95):
        rows[f"rel={rel} rho_ab=0.5 n=64 k=1"] = power(64, rel=rel, sims=s)
    rows["null rho_a=rho_b=0.6 n=64 (size)"] = power(64, rho_a=0.6, rho_b=0.6, sims=s)
    sys.stdout.write(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
