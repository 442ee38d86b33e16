"""The paper's claim as a test: does a metric correlate with performance more (or less) than the reference metric?

The two correlations share the performance column j and are computed on the same subsets, so they are dependent;
with r_jk = r(performance, metric), r_jh = r(performance, reference), r_kh = r(metric, reference) and n subsets:

- **Williams' t** (Williams 1959, the form Steiger 1980 recommends as T2), df = n - 3:

      |R| = 1 - r_jk^2 - r_jh^2 - r_kh^2 + 2 r_jk r_jh r_kh,   rbar = (r_jk + r_jh) / 2,
      t = (r_jk - r_jh) * sqrt( (n - 1)(1 + r_kh) / ( 2 (n - 1)/(n - 3) |R| + rbar^2 (1 - r_kh)^3 ) ).

- **Steiger's z** (Steiger 1980, Z1* with the pooled rbar), with Fisher's z(r) = atanh(r):

      psi = r_kh (1 - 2 rbar^2) - rbar^2 (1 - 2 rbar^2 - r_kh^2) / 2,   c = psi / (1 - rbar^2)^2,
      z = (z(r_jk) - z(r_jh)) * sqrt(n - 3) / sqrt(2 - 2 c).

Both are two-sided. Spearman's contrast is the same test on ranks (rho is Pearson's r of the ranks; an
approximation, as the tests assume normal data). The family of contrasts (every distinct, defined metric of one
multiplicity family against the reference, per base model) is adjusted by Holm (family-wise error) and
Benjamini-Hochberg (false discovery rate). These tests treat subsets as independent; the block-bootstrap p of
the difference (``*_contrast_p_boot``: twice the smaller share of resampled differences on either side of 0,
whole blocks resampled) does not, and it is the only test of the mean over base models.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

NAN = float("nan")


def williams_t(r_jk: float, r_jh: float, r_kh: float, n: int) -> tuple[float, float]:
    """(t, two-sided p with n - 3 df) of Williams' test of r_jk = r_jh; NaN when undefined (n < 4, |r| = 1)."""
    if n < 4 or not np.isfinite([r_jk, r_jh, r_kh]).all() or max(abs(r_jk), abs(r_jh), abs(r_kh)) >= 1:
        return NAN, NAN
    det = 1 - r_jk**2 - r_jh**2 - r_kh**2 + 2 * r_jk * r_jh * r_kh
    rbar = (r_jk + r_jh) / 2
    den = 2 * (n - 1) / (n - 3) * det + rbar**2 * (1 - r_kh) ** 3
    if den <= 0:
        return NAN, NAN
    t = (r_jk - r_jh) * np.sqrt((n - 1) * (1 + r_kh) / den)
    return float(t), float(2 * stats.t.sf(abs(t), n - 3))


def steiger_z(r_jk: float, r_jh: float, r_kh: float, n: int) -> tuple[float, float]:
    """(z, two-sided normal p) of Steiger's (1980) test of r_jk = r_jh with the pooled correlation."""
    if n < 4 or not np.isfinite([r_jk, r_jh, r_kh]).all() or max(abs(r_jk), abs(r_jh), abs(r_kh)) >= 1:
        return NAN, NAN
    rbar = (r_jk + r_jh) / 2
    psi = r_kh * (1 - 2 * rbar**2) - 0.5 * rbar**2 * (1 - 2 * rbar**2 - r_kh**2)
    c = psi / (1 - rbar**2) ** 2
    if c >= 1:
        return NAN, NAN
    z = (np.arctanh(r_jk) - np.arctanh(r_jh)) * np.sqrt(n - 3) / np.sqrt(2 - 2 * c)
    return float(z), float(2 * stats.norm.sf(abs(z)))


def holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values of the defined entries: p_(i) * (m - i + 1), made monotone, capped at 1;
    NaN entries stay NaN and do not count as tests."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size:
        order = ok[np.argsort(p[ok], kind="stable")]
        m = order.size
        adjusted = np.maximum.accumulate(p[order] * (m - np.arange(m)))
        out[order] = np.minimum(adjusted, 1.0)
    return out


def bootstrap_p(differences: np.ndarray) -> float:
    """Two-sided bootstrap p of a difference being 0: twice the smaller share of defined resampled differences
    at or beyond 0 on either side, capped at 1 (NaN when fewer than half the resamples are defined)."""
    finite = differences[np.isfinite(differences)]
    if finite.size == 0 or finite.size < differences.size / 2:
        return NAN
    return float(min(1.0, 2 * min((finite <= 0).mean(), (finite >= 0).mean())))
