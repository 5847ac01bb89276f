"""The paired bootstrap interval the gate decides on: coverage-sized, paired, seeded, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from ecom_ml.evaluation.bootstrap import BootstrapError, paired_bootstrap


def test_interval_matches_the_normal_approximation_for_a_mean_difference():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 1, 5000)
    candidate = reference + 0.01 + rng.normal(0, 0.1, 5000)
    ci = paired_bootstrap(candidate, reference, confidence=0.95, resamples=2000, seed=1)
    diff = candidate - reference
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert ci.estimate == pytest.approx(diff.mean())
    assert ci.low == pytest.approx(diff.mean() - 1.96 * se, abs=0.25 * se)
    assert ci.high == pytest.approx(diff.mean() + 1.96 * se, abs=0.25 * se)
    assert (ci.n_units, ci.resamples, ci.confidence) == (5000, 2000, 0.95)


def test_pairing_removes_the_variance_both_models_share():
    rng = np.random.default_rng(2)
    shared = rng.uniform(0, 1, 2000)  # how easy each customer is: the same for both models
    candidate, reference = shared + 0.02 + rng.normal(0, 0.01, 2000), shared
    paired = paired_bootstrap(candidate, reference, seed=0)
    assert paired.high - paired.low < 0.002  # the shared spread (sd 0.29) does not widen the interval
    assert paired.low > 0.019


def test_seeded_and_identical_models_have_a_zero_interval():
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0, 1, 300), rng.uniform(0, 1, 300)
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    assert paired_bootstrap(a, b, seed=7) != paired_bootstrap(a, b, seed=8)
    same = paired_bootstrap(a, a)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)


def test_ratio_statistic_resamples_numerator_and_denominator_together():
    rng = np.random.default_rng(4)
    actual = rng.gamma(2.0, 5.0, 1000)
    error_a, error_b = actual * 0.3, actual * 0.5
    ci = paired_bootstrap((error_a, actual), (error_b, actual))
    assert ci.estimate == pytest.approx(-0.2) and ci.low == pytest.approx(-0.2) and ci.high == pytest.approx(-0.2)


def test_nan_units_are_left_out_like_the_averages_leave_them_out():
    a = np.array([0.5, np.nan, 0.7, 0.1])
    b = np.array([0.4, 0.3, np.nan, 0.0])
    assert paired_bootstrap(a, b).n_units == 2


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"confidence": 1.5}, "confidence level must be a number in (0, 1)"),
    ({"resamples": 10}, "resamples must be an integer >= 100"),
    ({"reference": np.zeros(5)}, "candidate has 4 units, reference 5: they are not paired"),
    ({"candidate": np.array([np.nan] * 4)}, "0 unit(s) with values on both sides"),
])
def test_bad_input_is_one_line(kwargs, expected):
    args = {"candidate": np.ones(4), "reference": np.zeros(4), **kwargs}
    with pytest.raises(BootstrapError) as info:
        paired_bootstrap(args.pop("candidate"), args.pop("reference"), **args)
    assert expected in str(info.value) and "\n" not in str(info.value)
