"""Confidence intervals, in one place: over random seeds (a run's mean and standard deviation, the paired
difference of two runs with its Student t interval and t-test p-value, Holm-adjusted over a table's
comparisons, said in a sentence, and the steps a task run took to reach an accuracy; experiments.reproduce
and compare) and over sampled windows (a t-interval of paired differences, and a bootstrap band of a curve;
aed_jax.analyze).

Why paired: two runs with the same seed share their initialisation, data order and dropout draws,
so the difference seed by seed cancels much of what the seed alone moves; its interval is
mean ± t_{0.975, n-1} · sd / sqrt(n) over the n seeds both runs have.

Why Holm: a table of many comparisons at 95% each finds some interval that excludes zero by luck (one in
twenty where nothing differs). Holm's step-down adjustment keeps the chance of any false "excludes zero"
in the whole family at 5%, whatever the dependence between the comparisons; a difference whose interval
excludes zero only before it is called suggestive, not shown.
"""
from __future__ import annotations

import dataclasses
import math
import statistics

import numpy as np

from scipy import stats as scipy_stats

CONFIDENCE = 0.95
ALPHA = round(1 - CONFIDENCE, 10)  # the test's level: p < ALPHA exactly when the interval excludes zero


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (n - 1 in the denominator; None for one value) and the count."""
    mean: float
    sd: float | None
    n: int


@dataclasses.dataclass(frozen=True)
class Interval:
    """The mean of `n` values and its two-sided t-interval at CONFIDENCE, and the p-value of the t-test that
    the true mean is zero (`t_test_p`); low, high and p are None for one value."""
    mean: float
    sd: float | None
    n: int
    low: float | None
    high: float | None
    p: float | None = None

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
    return Interval(s.mean, s.sd, s.n, s.mean - half, s.mean + half, t_test_p(s.mean, s.sd, s.n))


def t_test_p(mean: float, sd: float, n: int) -> float | None:
    """The two-sided p-value of the one-sample t-test that the true mean is zero, from the mean, the sample sd
    and the count of the values (a paired test when they are paired differences): 2 P(T_{n-1} > |t|) with
    t = mean / (sd / sqrt(n)). None for one value. With sd 0 (every value the same) it is 1 when they are 0
    and 0 otherwise, as the interval mean ± 0 says."""
    if n < 2:
        return None
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * scipy_stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given. With the m p-values sorted, p_(1) <= ... <= p_(m),
    the i-th adjusted value is max over j <= i of min(1, (m - j + 1) p_(j)): monotone in p, capped at 1, and
    never below p. An adjusted value under ALPHA rejects its hypothesis with the chance of any false rejection
    in the family at most ALPHA."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


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


def p_text(p: float) -> str:
    """A p-value as the sentences write it: three decimals, "< 0.001" below that."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def sentence(a: str, b: str, interval: Interval | None, what: str, digits: int = 3,
             p_holm: float | None = None, family: int | None = None) -> str:
    """The paired difference a - b in words, e.g. "mse_pos_sub - baseline: -0.012 val loss (95% CI -0.020 to
    -0.004, 3 seeds): lower, the interval excludes zero".

    With `p_holm`, its Holm-adjusted p-value in a family of `family` comparisons, the sentence gives p and
    says one of three things: the interval excludes zero after Holm correction (p_holm < ALPHA); suggestive,
    only the unadjusted interval excludes zero; or the interval includes zero."""
    head = f"{a} - {b}"
    if interval is None:
        return f"{head}: no seed has both runs' {what} yet"
    mean = f"{interval.mean:+.{digits}f} {what}"
    if interval.low is None:
        return f"{head}: {mean} (1 seed): no interval from one seed; run more (--seeds 3)"
    p = f", p = {p_text(interval.p)}" if p_holm is not None else ""
    ci = f"({CONFIDENCE:.0%} CI {interval.low:.{digits}f} to {interval.high:.{digits}f}, {interval.n} seeds{p})"
    side = "lower" if interval.mean < 0 else "higher"
    if not interval.excludes_zero():
        return f"{head}: {mean} {ci}: the interval includes zero: no difference shown at {interval.n} seeds"
    if p_holm is None:
        return f"{head}: {mean} {ci}: {side}, the interval excludes zero"
    adjusted = f"Holm-adjusted p = {p_text(p_holm)} over {family} comparison{'' if family == 1 else 's'}"
    if p_holm < ALPHA:
        return f"{head}: {mean} {ci}: {side}, the interval excludes zero after Holm correction ({adjusted})"
    return (f"{head}: {mean} {ci}: suggestive, {side}: only the unadjusted interval excludes zero "
            f"({adjusted})")


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
