"""Confidence intervals, in one place: over random seeds (a run's mean and standard deviation, the paired
difference of two runs with its Student t interval, said in a sentence, and the steps a task run took to
reach an accuracy; experiments.reproduce and compare) and over sampled windows (a t-interval of paired
differences, and a bootstrap band of a curve; aed_jax.analyze).

Why paired: two runs with the same seed share their initialisation, data order and dropout draws,
so the difference seed by seed cancels much of what the seed alone moves; its interval is
mean ± t_{0.975, n-1} · sd / sqrt(n) over the n seeds both runs have.
"""
from __future__ import annotations

import dataclasses
import math
import statistics

import numpy as np

from scipy import stats as scipy_stats

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (n - 1 in the denominator; None for one value) and the count."""
    mean: float
    sd: float | None
    n: int


@dataclasses.dataclass(frozen=True)
class Interval:
    """The mean of `n` values and its two-sided t-interval at CONFIDENCE; low and high are None for one value."""
    mean: float
    sd: float | None
    n: int
    low: float | None
    high: float | None

    def excludes_zero(self) -> bool | None:
        return None if self.low is None else self.low > 0 or self.high < 0


def summary(values: list[float]) -> Summary | None:
    """None for no values."""
    if not values:
        return None
    return Summary(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> Interval | None:
    """mean ± t_{(1 + confidence) / 2, n - 1} · sd / sqrt(n); None for no values."""
    s = summary(values)
    if s is None:
        return None
    if s.sd is None:
        return Interval(s.mean, None, 1, None, None)
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, s.n - 1)) * s.sd / math.sqrt(s.n)
    return Interval(s.mean, s.sd, s.n, s.mean - half, s.mean + half)


LEVELS = (0.5, 0.9, 0.99)  # the accuracies whose first step a task run's table gives (steps to 50%, 90%, 99%)
STEPS_TO = {f"steps_to_{100 * level:g}": level for level in LEVELS}  # each level's column: "steps_to_50", ...


def first_step_at(curve: list[tuple[int, float]], level: float) -> int | None:
    """The step of the first point of `curve` ((step, value) pairs, in any order) whose value is at least
    `level`: the first crossing, even where the curve falls back below it later; None when none reaches it."""
    return next((step for step, value in sorted(curve) if value >= level), None)


@dataclasses.dataclass(frozen=True)
class Crossing:
    """When the seeds of one configuration first reached a level: each seed's step (None: never, by its
    last estimate, `last`), and their t-interval only when every seed reached it; a mean over the seeds that
    did would flatter the configuration, so a table says how many did instead."""
    steps: tuple[int | None, ...]
    last: tuple[int, ...]  # each seed's last estimated step
    interval: Interval | None  # over `steps` when every seed has one; else None

    @property
    def reached(self) -> int:
        return sum(step is not None for step in self.steps)

    def text(self) -> str:
        """"1,200 (95% CI 900 to 1,500, 3 seeds)", "400" (one seed), "> 3,000" (no seed reached it by its
        last estimate: the earliest such), "2 of 3 seeds: 400, 600; > 3,000"."""
        if not self.steps:
            return "–"
        never = [last for step, last in zip(self.steps, self.last) if step is None]
        beyond = f"> {min(never):,}" if never else ""
        if not self.reached:
            return beyond
        if never:
            reached = ", ".join(f"{step:,}" for step in self.steps if step is not None)
            return f"{self.reached} of {len(self.steps)} seeds: {reached}; {beyond}"
        i = self.interval
        if i.low is None:
            return f"{i.mean:,.0f}"
        return f"{i.mean:,.0f} ({CONFIDENCE:.0%} CI {i.low:,.0f} to {i.high:,.0f}, {i.n} seeds)"

    def columns(self, key: str) -> dict:
        """A CSV's columns of this crossing, named from `key` ("steps_to_50"): the mean and `_ci_low`/`_ci_high`
        its interval, only when every seed reached the level; `_reached`, how many did ("2/3"); `_seeds`, each
        seed's step (">N": not by its last estimate N). None where there is nothing to say."""
        i = self.interval
        return {key: i and i.mean, f"{key}_ci_low": i and i.low, f"{key}_ci_high": i and i.high,
                f"{key}_reached": f"{self.reached}/{len(self.steps)}" if self.steps else None,
                f"{key}_seeds": " ".join(f">{last}" if step is None else str(step)
                                         for step, last in zip(self.steps, self.last)) or None}


CROSSING_COLUMNS = tuple(f"{key}{part}" for key in STEPS_TO
                         for part in ("", "_ci_low", "_ci_high", "_reached", "_seeds"))  # Crossing.columns' names
STEPS_TO_TEXT = (f"Steps to 50%, 90%, 99%: the first estimate whose val token accuracy reached it (estimates are "
                 f"est_interval steps apart), the mean over the seeds with its {CONFIDENCE:.0%} t-interval when "
                 "every seed reached it, else how many did and when; > N: not by the last estimate, step N.")


def crossing(curves: list[list[tuple[int, float]]], level: float) -> Crossing:
    """`first_step_at` each seed's curve (one a seed; a seed without a point is left out)."""
    curves = [curve for curve in curves if curve]
    steps = tuple(first_step_at(curve, level) for curve in curves)
    interval = t_interval([float(s) for s in steps]) if steps and None not in steps else None
    return Crossing(steps, tuple(max(step for step, _ in curve) for curve in curves), interval)


def paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    """a[seed] - b[seed] for each seed both have, in seed order."""
    return [a[seed] - b[seed] for seed in sorted(a.keys() & b.keys())]


def sentence(a: str, b: str, interval: Interval | None, what: str, digits: int = 3) -> str:
    """The paired difference a - b in words, e.g. "mse_pos_sub - baseline: -0.012 val loss (95% CI -0.020 to
    -0.004, 3 seeds): lower, the interval excludes zero"."""
    head = f"{a} - {b}"
    if interval is None:
        return f"{head}: no seed has both runs' {what} yet"
    mean = f"{interval.mean:+.{digits}f} {what}"
    if interval.low is None:
        return f"{head}: {mean} (1 seed): no interval from one seed; run more (--seeds 3)"
    ci = (f"({CONFIDENCE:.0%} CI {interval.low:.{digits}f} to {interval.high:.{digits}f}, "
          f"{interval.n} seeds)")
    if interval.excludes_zero():
        return f"{head}: {mean} {ci}: {'lower' if interval.mean < 0 else 'higher'}, the interval excludes zero"
    return f"{head}: {mean} {ci}: the interval includes zero: no difference shown at {interval.n} seeds"


def bootstrap_band(samples_NxK: np.ndarray, seed: int, resamples: int = 1000,
                   confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """(low_K, high_K): the percentile bootstrap band of the mean over the N rows of each of K columns
    (a curve measured on N sampled windows): `resamples` draws of N rows with replacement, the same rows
    for every column, and the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of their means.

    NaN marks a value a row does not have (a task's sequence has no answer at that position): a
    resample's mean of a column is then over the values its rows have, the resamples with none are left
    out of the quantiles, and a column no row has a value in gets NaN bounds."""
    samples_NxK = np.asarray(samples_NxK, np.float64)
    rng, n = np.random.default_rng(seed), len(samples_NxK)
    # The resampled rows a chunk of draws at a time, about 2^25 numbers (256 MB), not R x N x K at once
    # (8 GB for 1,000 windows of 1,024 positions); drawn chunk after chunk, they are the rows of one draw.
    chunk = max(1, 2**25 // max(1, samples_NxK.size))
    tail = (1 - confidence) / 2
    present_NxK = ~np.isnan(samples_NxK)
    if present_NxK.all():
        means_RxK = np.concatenate([samples_NxK[rng.integers(0, n, (min(chunk, resamples - i), n))].mean(axis=1)
                                    for i in range(0, resamples, chunk)])
        return np.quantile(means_RxK, tail, axis=0), np.quantile(means_RxK, 1 - tail, axis=0)
    values_NxK, counts_NxK = np.where(present_NxK, samples_NxK, 0.0), present_NxK.astype(np.float64)
    means = []
    for i in range(0, resamples, chunk):
        rows_RxN = rng.integers(0, n, (min(chunk, resamples - i), n))
        sums_RxK, counts_RxK = values_NxK[rows_RxN].sum(axis=1), counts_NxK[rows_RxN].sum(axis=1)
        means.append(np.where(counts_RxK > 0, sums_RxK / np.maximum(counts_RxK, 1.0), np.nan))
    means_RxK = np.concatenate(means)
    low_K, high_K = np.full(samples_NxK.shape[1], np.nan), np.full(samples_NxK.shape[1], np.nan)
    for k, means_R in enumerate(means_RxK.T):
        kept_R = means_R[~np.isnan(means_R)]
        if len(kept_R):
            low_K[k], high_K[k] = np.quantile(kept_R, tail), np.quantile(kept_R, 1 - tail)
    return low_K, high_K
