"""aed_jax/stats.py: the paired t-interval and the bootstrap band against hand-worked examples, and the
sentences that say them."""
import math

import numpy as np
import pytest

from aed_jax import stats

T_975_2DF = 4.302653  # Student t quantile 0.975 with 2 degrees of freedom (3 seeds), from a table


def test_three_seed_interval_by_hand():
    """AED and baseline val losses at seeds 1337, 1338, 1339; a third seed the AED alone has is left out.

    differences: 3.10 - 3.12 = -0.02, 3.05 - 3.09 = -0.04, 3.20 - 3.21 = -0.01
    mean: -0.07 / 3 = -0.0233333
    deviations: 0.0033333, -0.0166667, 0.0133333; squares 0.0000111 + 0.0002778 + 0.0001778 = 0.0004667
    sd: sqrt(0.0004667 / 2) = sqrt(0.00023333) = 0.0152753
    half width: 4.302653 * 0.0152753 / sqrt(3) = 4.302653 * 0.0088192 = 0.0379460
    interval: -0.0233333 -+ 0.0379460 = -0.0612793 to 0.0146127: includes zero
    """
    aed = {1337: 3.10, 1338: 3.05, 1339: 3.20, 1340: 2.0}
    baseline = {1337: 3.12, 1338: 3.09, 1339: 3.21}
    differences = stats.paired(aed, baseline)
    assert differences == pytest.approx([-0.02, -0.04, -0.01])
    interval = stats.t_interval(differences)
    assert interval.n == 3
    assert interval.mean == pytest.approx(-0.0233333, abs=1e-7)
    assert interval.sd == pytest.approx(0.0152753, abs=1e-7)
    assert interval.low == pytest.approx(-0.0612793, abs=1e-6)
    assert interval.high == pytest.approx(0.0146127, abs=1e-6)
    assert interval.high - interval.mean == pytest.approx(T_975_2DF * 0.0152753 / math.sqrt(3), abs=1e-6)
    assert interval.excludes_zero() is False
    assert stats.sentence("mse_pos_sub", "baseline", interval, "val loss") == (
        "mse_pos_sub - baseline: -0.023 val loss (95% CI -0.061 to 0.015, 3 seeds): the interval includes zero: "
        "no difference shown at 3 seeds")


def test_an_interval_that_excludes_zero_by_hand():
    """differences -0.02, -0.03, -0.025: mean -0.025, deviations 0.005, -0.005, 0, sd sqrt(0.00005 / 2) = 0.005,
    half width 4.302653 * 0.005 / sqrt(3) = 0.0124207: -0.0374207 to -0.0125793, below zero."""
    interval = stats.t_interval([-0.02, -0.03, -0.025])
    assert (interval.mean, interval.sd) == (pytest.approx(-0.025), pytest.approx(0.005))
    assert (interval.low, interval.high) == (pytest.approx(-0.0374207, abs=1e-6), pytest.approx(-0.0125793, abs=1e-6))
    assert interval.excludes_zero() is True
    assert stats.sentence("mse_pos_sub", "baseline", interval, "val loss") == (
        "mse_pos_sub - baseline: -0.025 val loss (95% CI -0.037 to -0.013, 3 seeds): lower, the interval excludes zero")
    higher = stats.t_interval([0.5, 0.4, 0.45])
    assert stats.sentence("a", "b", higher, "val token accuracy").endswith(": higher, the interval excludes zero")


def test_one_seed_and_none():
    one = stats.t_interval([0.25])
    assert (one.mean, one.sd, one.n, one.low, one.high, one.excludes_zero()) == (0.25, None, 1, None, None, None)
    assert stats.sentence("a", "b", one, "val loss") == (
        "a - b: +0.250 val loss (1 seed): no interval from one seed; run more (--seeds 3)")
    assert stats.t_interval([]) is None and stats.summary([]) is None
    assert stats.paired({1: 1.0}, {2: 1.0}) == []
    assert stats.sentence("a", "b", None, "val loss") == "a - b: no seed has both runs' val loss yet"
    assert stats.summary([1.0, 2.0, 4.0]) == stats.Summary(pytest.approx(7 / 3), pytest.approx(math.sqrt(7 / 3)), 3)


def test_bootstrap_band_by_hand():
    """Two windows a and b: a resample's mean is a (1/4), (a+b)/2 (1/2) or b (1/4), so with enough
    resamples the 95% band is [a, b] exactly; one window: its value on both sides."""
    low, high = stats.bootstrap_band(np.array([[1.0, 5.0], [3.0, -1.0]]), seed=0, resamples=4000)
    np.testing.assert_array_equal(low, [1.0, -1.0])
    np.testing.assert_array_equal(high, [3.0, 5.0])
    low, high = stats.bootstrap_band(np.array([[2.5]]), seed=0)
    assert (low[0], high[0]) == (2.5, 2.5)
    # The same seed gives the same band; a band narrows as the windows grow.
    rng = np.random.default_rng(1)
    few, many = rng.normal(size=(10, 1)), rng.normal(size=(1000, 1))
    np.testing.assert_array_equal(stats.bootstrap_band(few, 3), stats.bootstrap_band(few, 3))
    width = lambda band: float(band[1][0] - band[0][0])
    assert width(stats.bootstrap_band(many, 3)) < width(stats.bootstrap_band(few, 3)) / 3


def test_bootstrap_band_leaves_out_missing_values():
    """NaN marks a value a row lacks (a task's position without an answer): a column with every value has
    the band it has alone, one with some is resampled over the values it has, one with none has NaN bounds."""
    rng = np.random.default_rng(0)
    full = rng.normal(size=8)
    some = np.where(np.arange(8) % 2, rng.normal(10.0, 1.0, 8), np.nan)
    low, high = stats.bootstrap_band(np.stack([full, some, np.full(8, np.nan)], axis=1), seed=4, resamples=500)
    alone = stats.bootstrap_band(full[:, None], seed=4, resamples=500)
    assert (low[0], high[0]) == (alone[0][0], alone[1][0])
    present = some[~np.isnan(some)]
    assert present.min() <= low[1] < np.mean(present) < high[1] <= present.max()
    assert np.isnan(low[2]) and np.isnan(high[2])


def test_holm_by_hand():
    """p = 0.01, 0.04, 0.03, 0.005 (m = 4). Sorted: 0.005, 0.01, 0.03, 0.04; times 4, 3, 2, 1: 0.02, 0.03, 0.06,
    0.04; the running maximum keeps them monotone: 0.02, 0.03, 0.06, 0.06. In the order given: 0.03, 0.06, 0.06,
    0.02."""
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.6, 0.9]) == [1.0, 1.0]  # 1.2 and 0.9, capped at 1, kept monotone
    assert stats.holm([0.01, 0.01]) == pytest.approx([0.02, 0.02])  # ties: 0.02, then max(0.02, 0.01)
    assert stats.holm([0.2]) == [0.2] and stats.holm([]) == []


def test_t_test_p_by_hand_and_against_the_interval():
    """differences -0.02, -0.03, -0.025 (above): t = -0.025 / (0.005 / sqrt(3)) = -8.660254; with 2 degrees of
    freedom P(|T| > t) = 1 - t / sqrt(2 + t^2) = 1 - 8.660254 / sqrt(77) = 0.0130736 (the t distribution with
    2 degrees of freedom has that closed form)."""
    interval = stats.t_interval([-0.02, -0.03, -0.025])
    assert interval.p == pytest.approx(1 - 8.660254 / math.sqrt(77), rel=1e-6)
    assert stats.t_test_p(-0.025, 0.005, 3) == interval.p
    # The interval excludes zero exactly when p < 0.05: its bounds at p = 0.05 sit on zero.
    for values in ([3.10 - 3.12, 3.05 - 3.09, 3.20 - 3.21], [0.5, 0.4, 0.45], [0.1, -0.2, 0.3, 0.05]):
        i = stats.t_interval(values)
        assert (i.p < stats.ALPHA) == i.excludes_zero(), values
    assert stats.t_test_p(0.0, 0.0, 3) == 1.0 and stats.t_test_p(0.2, 0.0, 3) == 0.0
    assert stats.t_test_p(0.2, 0.1, 1) is None and stats.t_interval([0.25]).p is None


def test_sentences_say_what_holm_leaves():
    """The three verdicts: excludes zero after Holm, suggestive (the unadjusted interval alone), includes zero."""
    below = stats.t_interval([-0.02, -0.03, -0.025])  # p = 0.0131
    assert stats.sentence("a", "b", below, "val loss", p_holm=0.0131, family=1) == (
        "a - b: -0.025 val loss (95% CI -0.037 to -0.013, 3 seeds, p = 0.013): lower, the interval excludes zero "
        "after Holm correction (Holm-adjusted p = 0.013 over 1 comparison)")
    assert stats.sentence("a", "b", below, "val loss", p_holm=0.0524, family=4) == (
        "a - b: -0.025 val loss (95% CI -0.037 to -0.013, 3 seeds, p = 0.013): suggestive, lower: only the "
        "unadjusted interval excludes zero (Holm-adjusted p = 0.052 over 4 comparisons)")
    wide = stats.t_interval([3.10 - 3.12, 3.05 - 3.09, 3.20 - 3.21])
    assert stats.sentence("a", "b", wide, "val loss", p_holm=1.0, family=4).endswith(
        f"3 seeds, p = {wide.p:.3f}): the interval includes zero: no difference shown at 3 seeds")
    assert stats.p_text(0.0004) == "< 0.001" and stats.p_text(0.0386) == "0.039"


def test_steps_to_a_level_count_the_first_crossing():
    """A curve that rises, falls back and rises again: the first estimate at or above each level counts."""
    curve = [(100, 0.2), (200, 0.55), (300, 0.4), (400, 0.91), (500, 0.85), (600, 0.95)]
    assert [stats.first_step_at(curve, level) for level in stats.LEVELS] == [200, 400, None]
    assert stats.first_step_at(list(reversed(curve)), 0.5) == 200  # by step, whatever the order given
    assert stats.first_step_at(curve, 0.55) == 200  # at the level counts
    assert stats.first_step_at([], 0.5) is None


def test_steps_to_a_level_over_seeds():
    """Three seeds reaching 0.5 at 200, 300, 400: mean 300, sd 100, half width 4.302653 * 100 / sqrt(3) =
    248.413; a seed that never reaches a level makes it a count, not a mean."""
    curves = [[(100, 0.1), (200, 0.6), (300, 0.95)], [(100, 0.2), (300, 0.7), (500, 0.8)],
              [(200, 0.3), (400, 0.5), (600, 0.92)]]
    half = T_975_2DF * 100 / math.sqrt(3)
    at_half = stats.crossing(curves, 0.5)
    assert at_half.steps == (200, 300, 400) and at_half.last == (300, 500, 600) and at_half.reached == 3
    assert at_half.interval.mean == pytest.approx(300) and at_half.interval.low == pytest.approx(300 - half, abs=1e-3)
    assert at_half.text() == f"300 (95% CI {300 - half:,.0f} to {300 + half:,.0f}, 3 seeds)" == \
        "300 (95% CI 52 to 548, 3 seeds)"
    at_90 = stats.crossing(curves, 0.9)
    assert at_90.steps == (300, None, 600) and at_90.interval is None
    assert at_90.text() == "2 of 3 seeds: 300, 600; > 500"
    assert stats.crossing(curves, 0.99).text() == "> 300"  # none: the earliest last estimate bounds them all
    assert stats.crossing([[(1000, 0.7)]], 0.5).text() == "1,000"  # one seed: no interval
    assert stats.crossing([[]], 0.5).text() == "–"  # no estimate
