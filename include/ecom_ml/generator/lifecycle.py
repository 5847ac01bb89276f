"""Customer lifecycles: customers lapse, slow down before they go, and some buy mostly in their season.

Without a lifecycle every customer orders at a constant rate for ever (a memoryless Poisson
process), so "will they buy in the next 30 days" depends only on their rate, which recency and
frequency estimate; nothing about *how* their behaviour moved carries more. Real retail customers
are not like that. The standard model of customer bases (Pareto/NBD, Schmittlein, Morrison &
Colombo 1987; BG/NBD, Fader, Hardie & Lee 2005) is "purchases at a customer-specific rate while
alive, an unobserved moment of dropping out", and CRM data shows a slowing-down before customers go.
So, per customer, when the lifecycle is on:

* **lifetime**: exponential with mean ``mean_lifetime_days`` from sign-up (a constant churn hazard,
  Pareto/NBD's assumption); after it the customer never orders again;
* **fade**: over the ``fade_days`` (times a per-customer factor in [0.5, 1.5]) before the end, their
  order rate falls linearly to zero, so the frequency drifts down before they go;
* **season**: a share ``seasonal_share`` of customers has a peak day of the year (a gift shop's
  seasonal buyers: drawn around ``season_peak_doy``, spread ``season_spread_days``); their rate is
  ``seasonal_boost`` times the usual within ``season_width_days`` of it and ``off_season`` times it
  otherwise;
* **rhythm**: a share ``regular_share`` of customers re-stock on a cycle (a shop that sells to
  retailers has many: they order every few weeks), with a period drawn from ``period_days`` and a
  phase of their own; their rate is ``regular_boost`` times the usual within ``due_window_days``
  of each due date and ``regular_off`` times it between. For them *when* they last bought, against
  their own cycle, says more than how often: the "overdue" of a CRM analyst.

A day's returning orders are then drawn by ``activity x alive/fade factor x season factor`` of every
customer signed up before the day (:func:`day_weights`) instead of by activity alone. Every draw
comes from its own stream (``customer_lifecycle``, keyed like the customer blocks), so switching the
lifecycle on leaves the catalogue, the customers' tastes and staples, the day volumes and the
baskets' randomness as they were; with it off (the default) the generated data is exactly what it
was before this module existed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ecom_ml.generator.streams import stream

_US_PER_DAY = 86_400_000_000
#: Factors are quantised to 1/1024 so that the day's weights stay exact integers (see ``day_weights``).
_QUANT = 1024
_NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True)
class CustomerLifecycle:
    """How customers lapse and which are seasonal (see the module docstring); stored with the database.

    Defaults, and why: a mean lifetime of 18 months and a 90-day fade give a gift/home shop's
    picture - about half of a year's customers still active a year later, slowing down over a
    quarter before they stop; a fifth of the customers buy mostly in the four weeks around early
    December (the Christmas season of Online Retail II), at 3x their rate then and 0.4x otherwise;
    three in ten re-stock every one to three months, mostly within two days of their due date (a
    shorter cycle than the 30-day label window makes them near-certain buyers, where timing says nothing).
    """

    mean_lifetime_days: float = 540.0
    fade_days: float = 90.0
    seasonal_share: float = 0.2
    season_peak_doy: int = 340
    season_spread_days: float = 20.0
    season_width_days: float = 14.0
    seasonal_boost: float = 3.0
    off_season: float = 0.4
    regular_share: float = 0.3
    period_days: tuple[int, int] = (30, 90)
    due_window_days: int = 2
    regular_boost: float = 6.0
    regular_off: float = 0.1

    def __post_init__(self) -> None:
        from ecom_ml.generator.config import GeneratorError

        checks = {"mean_lifetime_days": (1.0, 36_500.0), "fade_days": (0.0, 3_650.0), "seasonal_share": (0.0, 1.0),
                  "season_peak_doy": (1, 366), "season_spread_days": (0.0, 183.0),
                  "season_width_days": (1.0, 183.0), "seasonal_boost": (0.0, 100.0), "off_season": (0.0, 100.0),
                  "regular_share": (0.0, 1.0), "due_window_days": (0, 365), "regular_boost": (0.0, 100.0),
                  "regular_off": (0.0, 100.0)}
        low_p, high_p = self.period_days if isinstance(self.period_days, tuple | list) and len(self.period_days) == 2 \
            else (0, -1)
        if not (isinstance(low_p, int) and isinstance(high_p, int) and 1 <= low_p <= high_p <= 365):
            raise GeneratorError(f"customer lifecycle period_days={self.period_days!r}: must be two whole numbers of "
                                 f"days, 1 <= low <= high <= 365")
        for name, (low, high) in checks.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise GeneratorError(f"customer lifecycle {name}={value!r}: must be a number from {low:g} to {high:g}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> CustomerLifecycle:
        doc = dict(doc)
        if "period_days" in doc:
            doc["period_days"] = tuple(doc["period_days"])
        return cls(**doc)


@dataclass(frozen=True)
class Lives:
    """Per customer (index = id - 1): when their fade starts and their life ends (µs), their peak day
    of the year (0 = not seasonal), their re-stocking period and phase in days (period 0 = not on a
    cycle), and their activity (the relative rate, as in ``Population``)."""

    fade_start_us: np.ndarray
    end_us: np.ndarray
    peak_doy: np.ndarray
    period: np.ndarray
    phase: np.ndarray
    activity: np.ndarray


def draw_lives(seed: int, key: int, created_us: np.ndarray, cfg: CustomerLifecycle) -> dict[str, np.ndarray]:
    """One customer block's lifetimes, fades and seasons, from the block's own ``customer_lifecycle`` stream."""
    rng = stream(seed, "customer_lifecycle", key)
    n = len(created_us)
    life = rng.exponential(cfg.mean_lifetime_days, n) * _US_PER_DAY
    fade = cfg.fade_days * rng.uniform(0.5, 1.5, n) * _US_PER_DAY
    seasonal = rng.random(n) < cfg.seasonal_share
    peak = np.round(cfg.season_peak_doy + cfg.season_spread_days * rng.standard_normal(n))
    peak = (peak - 1) % 365 + 1
    regular = rng.random(n) < cfg.regular_share
    period = rng.integers(cfg.period_days[0], cfg.period_days[1] + 1, n)
    phase = rng.integers(0, period)
    end = created_us + np.minimum(life, 1e17).astype(np.int64)
    fade_start = end - np.minimum(fade, life).astype(np.int64)
    return {"fade_start_us": fade_start.astype(np.int64), "end_us": end.astype(np.int64),
            "peak_doy": np.where(seasonal, peak, 0).astype(np.int64),
            "period": np.where(regular, period, 0).astype(np.int64), "phase": phase.astype(np.int64)}


def day_weights(lives: Lives, customers: int, at_us: int, day_of_year: int, cfg: CustomerLifecycle) -> np.ndarray:
    """Integer weights of customers 1..``customers`` at the moment ``at_us``: activity x life x season x rhythm."""
    end = lives.end_us[:customers]
    fade_start = lives.fade_start_us[:customers]
    span = np.maximum(end - fade_start, 1).astype(np.float64)
    alive = np.clip((end - at_us) / span, 0.0, 1.0)  # 1 before the fade, falling to 0 at the end
    peak = lives.peak_doy[:customers]
    distance = np.abs(day_of_year - peak)
    distance = np.minimum(distance, 365 - distance)
    season = np.where(peak == 0, 1.0, np.where(distance <= cfg.season_width_days, cfg.seasonal_boost, cfg.off_season))
    period = lives.period[:customers]
    offset = (at_us // _US_PER_DAY + lives.phase[:customers]) % np.maximum(period, 1)
    due = np.minimum(offset, period - offset) <= cfg.due_window_days
    rhythm = np.where(period == 0, 1.0, np.where(due, cfg.regular_boost, cfg.regular_off))
    factor = np.round(alive * season * rhythm * _QUANT).astype(np.int64)
    return lives.activity[:customers] * factor
