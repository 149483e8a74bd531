"""Statistics over seeds: the paper's mean ± standard error, and beside it the interquartile mean (IQM) with a
percentile-bootstrap confidence interval (Agarwal et al., 2021, "Deep RL at the Edge of the Statistical Precipice"),
which is robust to the one seed that diverged and honest about how little 3 or 10 seeds say. For the mean itself
with few seeds, a Student-t interval (:func:`t_interval`): a bootstrap over 3 values cannot be wider than their range.

The IQM is computed as rliable computes it, ``scipy.stats.trim_mean(x, 0.25)``, so our IQMs compare with published
ones; rliable itself is not a dependency because it does not work with pandas 3
(``docs/reference/dependencies.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t
from scipy.stats import trim_mean

BOOTSTRAP_SAMPLES = 2000  # resamples per confidence interval: percentile ends stable to about ±0.01 s.e.
CONFIDENCE = 0.95  # two-sided level of the IQM and t intervals
BOOTSTRAP_SEED = 0  # fixed, so a report rebuilt from the same runs is identical


@dataclass(frozen=True)
class Summary:
    """One cell (e.g. an algo on a task) summarised over its seeds. NaN where a statistic needs more seeds."""

    n: int  # seeds (runs)
    mean: float
    se: float  # standard error of the mean: sample std (ddof=1) / sqrt(n); NaN for one seed
    iqm: float  # interquartile mean: scipy's trim_mean(x, 0.25), int(n / 4) values dropped from each end
    iqm_low: float  # bootstrap CI of the IQM (resampling seeds); NaN for one seed
    iqm_high: float


def standard_error(values: Sequence[float] | np.ndarray) -> float:
    """Sample standard deviation over sqrt(n); NaN for fewer than two values (one seed says nothing about spread)."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def iqm(values: Sequence[float] | np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean along ``axis``, as rliable and the literature compute it: ``scipy.stats.trim_mean(x,
    0.25)``, the plain mean of what is left after dropping the ``int(n / 4)`` smallest and largest values. So it is
    the mean of all values for n < 4, of the middle two for n = 4, of the middle three for n = 5 and of the 3rd to
    8th sorted values for n = 10."""
    x = np.asarray(values, dtype=np.float64)
    if x.shape[axis] == 0:
        raise ValueError("iqm of no values")
    result = trim_mean(x, 0.25, axis=axis)
    return float(result) if np.ndim(result) == 0 else result


def bootstrap_ci(values: Sequence[float] | np.ndarray, statistic=iqm, samples: int = BOOTSTRAP_SAMPLES,
                 confidence: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over resampled seeds; (NaN, NaN) for fewer than two values."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    resampled = x[rng.integers(0, len(x), size=(samples, len(x)))]  # [samples, n]
    stats = np.asarray(statistic(resampled, axis=1))
    tail = (1 - confidence) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(low), float(high)


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean, mean ± t(n - 1) · s.e., with t the two-sided ``confidence`` quantile of n - 1
    degrees of freedom (4.30 at 3 seeds, 2.26 at 10, against the normal 1.96); (NaN, NaN) for fewer than two
    values."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return math.nan, math.nan
    half = float(student_t.ppf((1 + confidence) / 2, len(x) - 1)) * standard_error(x)
    return float(x.mean()) - half, float(x.mean()) + half


def summarize(values: Sequence[float] | np.ndarray) -> Summary:
    """Mean ± s.e. and IQM [CI] of one cell's per-seed values (NaNs dropped)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    low, high = bootstrap_ci(x)
    return Summary(len(x), float(x.mean()), standard_error(x), iqm(x), low, high)
