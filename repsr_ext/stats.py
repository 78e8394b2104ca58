"""Statistics of the paired arm comparisons of the experiment grid.

A comparison of arm A with arm B is a set of paired differences, one per (seed, test image) cell:
both arms trained with the same seed (same sample stream, same initial random state) and scored on
the same image. With 2-fold cross-validation the seeds are nested in folds (a fold's seeds all test
the other fold's images), so each fold is a crossed seeds x images table of differences.

- ``bootstrap_ci``: a two-way (seeds and images resampled independently, within each fold)
  percentile bootstrap interval of the mean difference: it counts both the spread between
  training runs and the spread between images, which a bootstrap over cells alone would not.
- ``sign_flip_test``: the exact permutation test over seeds: under "A and B do not differ", each
  seed's mean difference is as likely positive as negative, so all 2^n sign patterns are equally
  likely. With n seeds the smallest two-sided p is 2 / 2^n (1/32 for 6 seeds).
- ``holm``: Holm's step-down adjustment over the comparisons of one table (family-wise error).
- ``seed_t_interval``: a t interval over the seeds' mean differences (the spread between training
  runs, the test images fixed): the percentile bootstrap is too narrow with a handful of seeds
  (with n seeds its variance is (n - 1) / n of the true one, and it never reaches past the
  extreme seeds), so the verdict asks both intervals.
- ``verdict``: supported / reversed / no difference / undecided, from the union of the two-way
  bootstrap interval and the seeds' t interval, both at the family level (Bonferroni: level 1 - 0.05 / m for m comparisons), so that the m
  verdicts of one table are together wrong with probability about 0.05 at most, and an
  equivalence margin. The sign-flip test is reported beside it but cannot decide alone: with 6
  seeds its floor, 1/32, is above 0.05 / m for any m > 1 (it counts seeds only, not images).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

EQUIVALENCE_DB = 0.02  # |effect| below this many dB is too small to matter at this scale
ALPHA = 0.05


@dataclass(frozen=True)
class Cell:
    seed: int
    image: str
    fold: int
    difference: float


def fold_tables(cells: list[Cell]) -> list[np.ndarray]:
    """Per fold, the seeds x images table of differences (only complete rows and columns: a seed
    missing an image drops that image for the fold)."""
    tables = []
    for fold in sorted({c.fold for c in cells}):
        mine = [c for c in cells if c.fold == fold]
        seeds = sorted({c.seed for c in mine})
        images = sorted({c.image for c in mine})
        value = {(c.seed, c.image): c.difference for c in mine}
        images = [i for i in images if all((s, i) in value for s in seeds)]
        if seeds and images:
            tables.append(np.array([[value[s, i] for i in images] for s in seeds], np.float64))
    return tables


def mean_difference(tables: list[np.ndarray]) -> float:
    """The mean over every cell of every fold."""
    total = sum(t.sum() for t in tables)
    return float(total / sum(t.size for t in tables))


def bootstrap_ci(tables: list[np.ndarray], samples: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Two-way percentile bootstrap interval of ``mean_difference``: in every fold, seeds (rows)
    and images (columns) resampled with replacement, independently."""
    rng = np.random.default_rng(seed)
    sizes = [t.size for t in tables]
    means = np.zeros(samples)
    for t, size in zip(tables, sizes):
        rows = rng.integers(0, t.shape[0], (samples, t.shape[0]))
        cols = rng.integers(0, t.shape[1], (samples, t.shape[1]))
        # mean of t[rows][:, cols] for each sample, via per-row sums over the chosen columns
        col_sums = np.stack([t[:, c].sum(axis=1) for c in cols])  # samples x seeds
        sums = np.take_along_axis(col_sums, rows, axis=1).sum(axis=1)
        means += sums
    means /= sum(sizes)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def seed_means(cells: list[Cell]) -> dict[int, float]:
    """Each seed's mean difference over its images."""
    by_seed: dict[int, list[float]] = {}
    for c in cells:
        by_seed.setdefault(c.seed, []).append(c.difference)
    return {s: float(np.mean(v)) for s, v in sorted(by_seed.items())}


def sign_flip_test(values) -> float:
    """Exact two-sided sign-flip permutation p-value of mean(values) == 0 (values: one per seed)."""
    values = np.asarray(list(values), np.float64)
    n = len(values)
    if n == 0:
        return float("nan")
    observed = abs(values.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    stats = np.abs((signs * values).mean(axis=1))
    return float(np.mean(stats >= observed - 1e-12))


def holm(p_values: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given; NaN stays NaN)."""
    indexed = [(p, i) for i, p in enumerate(p_values) if not np.isnan(p)]
    indexed.sort()
    m = len(indexed)
    adjusted = [float("nan")] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(ci: tuple[float, float], margin: float = EQUIVALENCE_DB) -> str:
    """"supported" (A better: the family-level interval above 0), "reversed" (B better: below 0),
    "no difference" (the interval inside +-margin), else "undecided"."""
    low, high = ci
    if low > 0:
        return "supported"
    if high < 0:
        return "reversed"
    if -margin < low and high < margin:
        return "no difference"
    return "undecided"


def seed_t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (one per seed); infinite for fewer than 2."""
    from scipy.stats import t as student_t

    values = np.asarray(list(values), np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return -math.inf, math.inf
    half = float(student_t.ppf((1 + level) / 2, len(values) - 1)) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean - half, mean + half


def union(*intervals: tuple[float, float]) -> tuple[float, float]:
    return min(i[0] for i in intervals), max(i[1] for i in intervals)


def family_level(comparisons: int, alpha: float = ALPHA) -> float:
    """The Bonferroni interval level for a family of ``comparisons``."""
    return 1 - alpha / max(comparisons, 1)


def compare_cells(cells: list[Cell], samples: int = 10_000, family: int = 1) -> dict:
    """Mean difference, its two-way bootstrap 95% interval and the interval at the level of a
    family of ``family`` comparisons united with the seeds' t interval at that level
    (``ci_family``), the seeds' means, how many seeds favour A,
    and the sign-flip p over seeds."""
    tables = fold_tables(cells)
    if not tables:
        return {}
    means = seed_means(cells)
    return dict(mean=mean_difference(tables), ci=bootstrap_ci(tables, samples),
                ci_family=union(bootstrap_ci(tables, samples, family_level(family)),
                                seed_t_interval(means.values(), family_level(family))), seed_means=means,
                seeds=len(means), images=sum(t.shape[1] for t in tables), a_better=sum(v > 0 for v in means.values()),
                p=sign_flip_test(list(means.values())))


def padding_share(lr_patch: int, depth: int) -> float:
    """The share of positions a BN sees, averaged over BNs at depths 1..``depth`` (the k-th BN
    follows k 3x3 convs), whose receptive field reaches the zero padding of an ``lr_patch`` square
    input: a position is in reach at depth k when it is within k pixels of the border."""
    shares = []
    for k in range(1, depth + 1):
        interior = max(lr_patch - 2 * k, 0) / lr_patch
        shares.append(1 - interior * interior)
    return float(np.mean(shares))
