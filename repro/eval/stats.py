"""Intervals for pass rates and for differences between models on the same problems, and pass@k
from several samples per problem."""

from __future__ import annotations

import math


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a pass rate (sensible at 0/n and n/n, unlike the normal one)."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    # min/max with p: at 0/n and n/n the bounds land on p only up to rounding (0/27 gave a lower
    # bound of 7e-18), and a bound past the rate made the report's error bars negative.
    return (max(0.0, min(p, c - h)), min(1.0, max(p, c + h)))


def paired_bootstrap(a: list[bool], b: list[bool], n_boot: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """pass@1(a) - pass@1(b) on the same problems, with a percentile bootstrap interval.

    Problems are resampled with replacement and both models keep their own result on each drawn
    problem: the pairing removes the problems' difficulty from the spread, so the interval is
    narrower than two separate intervals would suggest (and honest about it).
    """
    import numpy as np

    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap: {len(a)} results against {len(b)}")
    if not a:
        return (0.0, 0.0, 0.0)
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(d.mean()), float(lo), float(hi))


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of pass@k from n samples of which c passed (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), computed as the Codex paper's numpy snippet does, as a product that
    neither overflows nor loses precision: 1 - prod_{i=n-c+1..n} (1 - k/i). Needs k <= n."""
    import numpy as np

    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass_at_k: needs 0 < k <= n and 0 <= c <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def bootstrap_mean(values: list[float], n_boot: int = 10_000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean of per-problem scores (problems resampled): for
    pass@1 from several samples per problem, whose samples are not independent trials, where a
    Wilson interval over all samples would be too narrow."""
    import numpy as np

    if not values:
        return (0.0, 0.0)
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))
