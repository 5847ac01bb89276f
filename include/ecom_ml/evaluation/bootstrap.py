"""Paired bootstrap confidence interval of a difference between two models scored on the same units.

Two recommenders evaluated on one holdout are scored on the *same* customers, so their difference is
judged per customer (paired): resample customers with replacement, recompute the difference of the
two averages on each resample, and read the interval off the resampled differences. Pairing removes
the between-customer variance both models share (a customer with one easy item is easy for both),
which is most of it; an unpaired interval would be several times wider.

The statistic is either a mean of per-unit values (Recall@K, NDCG@K per customer) or, for metrics
that are a ratio of sums such as WAPE (sum |error| / sum actual over products), a ratio whose
per-unit numerator and denominator are resampled together. Nothing here knows about recommenders:
a "unit" is whatever the evaluation averaged over.

``scipy.stats.bootstrap`` does the resampling (vectorised, in batches that bound memory); the
interval is the percentile one. BCa would need a jackknife over every unit (O(n^2) for n customers),
which buys little for a mean of thousands of units.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from ecom_ml.errors import EcomError

DEFAULT_RESAMPLES = 1_000
DEFAULT_CONFIDENCE = 0.95
#: Resampled values held at once (resamples x units), bounding memory for large test sets.
_BATCH_VALUES = 4_000_000


class BootstrapError(EcomError):
    """The values cannot be bootstrapped (different lengths, nothing left to resample, bad settings)."""


@dataclass(frozen=True)
class Interval:
    """``estimate`` (the difference on all units) and its ``[low, high]`` interval at ``confidence``."""

    estimate: float
    low: float
    high: float
    confidence: float
    resamples: int
    n_units: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_settings(confidence: Any, resamples: Any, where: str = "bootstrap") -> tuple[float, int]:
    """``(confidence, resamples)`` validated, or one line naming the bad one."""
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise BootstrapError(f"{where}: confidence level must be a number in (0, 1), e.g. 0.95, got {confidence!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise BootstrapError(f"{where}: resamples must be an integer >= 100, got {resamples!r}")
    return float(confidence), int(resamples)


def _values(name: str, values: Any) -> tuple[np.ndarray, ...]:
    """A 1-d float array (mean statistic) or a (numerator, denominator) pair of them (ratio statistic)."""
    if isinstance(values, (tuple, list)) and len(values) == 2 and all(np.ndim(v) == 1 for v in values):
        parts = tuple(np.asarray(v, dtype=np.float64) for v in values)
        if len(parts[0]) != len(parts[1]):
            raise BootstrapError(f"{name}: numerator and denominator have different lengths")
        return parts
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise BootstrapError(f"{name}: expected one value per unit (1-d), got shape {array.shape}")
    return (array,)


def _statistic(parts: tuple[np.ndarray, ...], axis: int = -1) -> np.ndarray:
    if len(parts) == 1:
        return np.mean(parts[0], axis=axis)
    return np.sum(parts[0], axis=axis) / np.sum(parts[1], axis=axis)


def paired_bootstrap(
    candidate: Any,
    reference: Any,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Interval of ``statistic(candidate) - statistic(reference)`` over units resampled in pairs.

    ``candidate`` / ``reference``: per-unit values aligned by unit (the statistic is their mean), or
    ``(numerator, denominator)`` pairs (the statistic is sum / sum). Units where any value is NaN
    (nothing to score) are left out, as the evaluation's averages leave them out.
    """
    confidence, resamples = check_settings(confidence, resamples)
    cand, ref = _values("candidate", candidate), _values("reference", reference)
    if len(cand) != len(ref):
        raise BootstrapError("candidate and reference must both be per-unit values or both (numerator, denominator)")
    if len(cand[0]) != len(ref[0]):
        raise BootstrapError(f"candidate has {len(cand[0])} units, reference {len(ref[0])}: they are not paired")
    keep = np.all([np.isfinite(v) for v in (*cand, *ref)], axis=0)
    cand, ref = tuple(v[keep] for v in cand), tuple(v[keep] for v in ref)
    n = int(keep.sum())
    if n < 2:
        raise BootstrapError(f"{n} unit(s) with values on both sides: no interval can be estimated")
    width = len(cand)

    def difference(*arrays: np.ndarray, axis: int = -1) -> np.ndarray:
        return _statistic(arrays[:width], axis) - _statistic(arrays[width:], axis)

    estimate = float(difference(*cand, *ref))
    result = stats.bootstrap(
        (*cand, *ref),
        difference,
        n_resamples=resamples,
        batch=max(1, _BATCH_VALUES // n),
        vectorized=True,
        paired=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = (float(x) for x in (result.confidence_interval.low, result.confidence_interval.high))
    if not (math.isfinite(low) and math.isfinite(high)):  # every resample equal (identical models): no spread
        low = high = estimate
    return Interval(estimate=estimate, low=low, high=high, confidence=confidence, resamples=resamples,
                    n_units=n, seed=seed)
