"""The shop's calendar: how busy each day is, which days are promotions, and who arrives when.

A day's header depends only on (params, day), so the cumulative counts that fix ids (customer ids
allocated before a day, products launched before it) can be recomputed from the anchor for any
range without generating a single order. Order and line ids live in a fixed block per day, so a
day's ids never depend on how many orders other days had.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

import numpy as np

from ecom_ml.generator.catalogue import CATEGORIES, HOURLY_PROFILE, WEEKDAY_PROFILE
from ecom_ml.generator.config import ShopParams
from ecom_ml.generator.streams import stream

US_PER_DAY = 86_400_000_000
_UNIX_EPOCH = date(1970, 1, 1)

#: Ids of day ``i`` (0 = the anchor day) are ``(i + 1) * BLOCK + 1 ...``: fixed per day, readable.
ORDER_ID_BLOCK = 10**7
ITEM_ID_BLOCK = 10**8

#: An order's status can still change this many days after the day it was placed (refunds: 14).
LIFECYCLE_DAYS = 15

#: Share of a day's orders that are the first order of a customer who signs up that day.
NEW_CUSTOMER_SHARE = 0.06
#: Products launched per day, as a share of the initial catalogue.
NEW_PRODUCT_RATE = 0.002
#: Day-to-day volume noise (log-normal sigma) on top of the weekly pattern and promotions.
VOLUME_NOISE = 0.05
#: Products launched within this many days count as "new in" and get their own shelf.
NEW_IN_DAYS = 14
#: Categories put on promotion on a promotion day.
PROMO_CATEGORIES = 3


def day_start_us(day: date) -> int:
    """Microseconds since the Unix epoch at 00:00 UTC of ``day``."""
    return (day - _UNIX_EPOCH).days * US_PER_DAY


@dataclass(frozen=True)
class Promo:
    multiplier: float          # volume relative to an ordinary day of the same weekday
    discount: float            # price cut on the promoted categories, e.g. 0.2 = 20 % off
    categories: tuple[int, ...]


@lru_cache(maxsize=512)
def promotions(seed: int, year: int, month: int) -> tuple[tuple[date, Promo], ...]:
    """The month's 1-3 promotion days, fixed by (seed, month) alone so any day can look itself up."""
    rng = stream(seed, "promotions", year * 12 + month)
    count = int(rng.integers(1, 4))
    days = np.sort(rng.choice(calendar.monthrange(year, month)[1], size=count, replace=False)) + 1
    found = []
    for day in days:
        multiplier = float(np.round(rng.uniform(1.5, 3.0), 2))
        discount = float(np.round(rng.uniform(0.10, 0.30) * 20) / 20)
        categories = tuple(int(c) for c in np.sort(rng.choice(len(CATEGORIES), PROMO_CATEGORIES, replace=False)))
        found.append((date(year, month, int(day)), Promo(multiplier, discount, categories)))
    return tuple(found)


def promotion_on(seed: int, day: date) -> Promo | None:
    return dict(promotions(seed, day.year, day.month)).get(day)


@dataclass(frozen=True)
class DayHeader:
    """Everything about a day that is fixed before its orders are drawn."""

    day: date
    index: int               # days since the anchor
    orders: int
    new_customers: int       # sign up today; each places one of today's orders
    new_products: int        # launched today, on sale from tomorrow
    promo: Promo | None
    customers_before: int    # customer ids 1..customers_before exist when the day starts
    products_before: int     # product ids 1..products_before are on sale today
    products_new_in: int     # ids above this were launched in the last NEW_IN_DAYS days

    @property
    def start_us(self) -> int:
        return day_start_us(self.day)

    @property
    def order_id_base(self) -> int:
        return (self.index + 1) * ORDER_ID_BLOCK

    @property
    def item_id_base(self) -> int:
        return (self.index + 1) * ITEM_ID_BLOCK


def _volume(params: ShopParams, day: date) -> tuple[int, int, int, Promo | None]:
    rng = stream(params.seed, "volume", day.toordinal())
    promo = promotion_on(params.seed, day)
    mean = params.orders_per_day * WEEKDAY_PROFILE[day.weekday()] * (promo.multiplier if promo else 1.0)
    orders = int(round(mean * np.exp(rng.normal(0.0, VOLUME_NOISE))))
    new_customers = int(rng.binomial(orders, NEW_CUSTOMER_SHARE))
    new_products = int(rng.poisson(params.products * NEW_PRODUCT_RATE))
    return orders, new_customers, new_products, promo


class Timeline:
    """Day headers for ``[params.anchor, end)`` with the cumulative id counts that need the whole past."""

    def __init__(self, params: ShopParams, end: date) -> None:
        if end <= params.anchor:
            raise ValueError(f"timeline end {end} is not after the anchor {params.anchor}")
        self.params = params
        self.end = end
        count = (end - params.anchor).days
        volumes = [_volume(params, params.anchor + timedelta(days=i)) for i in range(count)]
        new_customers = np.array([v[1] for v in volumes], dtype=np.int64)
        new_products = np.array([v[2] for v in volumes], dtype=np.int64)
        customers_before = params.customers + np.concatenate([[0], np.cumsum(new_customers)])
        products_before = params.products + np.concatenate([[0], np.cumsum(new_products)])
        self._headers = [
            DayHeader(
                day=params.anchor + timedelta(days=i),
                index=i,
                orders=volumes[i][0],
                new_customers=volumes[i][1],
                new_products=volumes[i][2],
                promo=volumes[i][3],
                customers_before=int(customers_before[i]),
                products_before=int(products_before[i]),
                products_new_in=int(products_before[max(0, i - NEW_IN_DAYS)]),
            )
            for i in range(count)
        ]
        #: Total customers and products once the last day is over.
        self.customers_total = int(customers_before[-1])
        self.products_total = int(products_before[-1])

    def header(self, day: date) -> DayHeader:
        index = (day - self.params.anchor).days
        if not 0 <= index < len(self._headers):
            raise ValueError(f"{day} is outside the timeline [{self.params.anchor}, {self.end})")
        return self._headers[index]

    def headers(self, start: date, end: date) -> list[DayHeader]:
        return [self.header(start + timedelta(days=i)) for i in range((end - start).days)]


_HOUR_CUM = np.cumsum(HOURLY_PROFILE) / HOURLY_PROFILE.sum()
_US_PER_HOUR = US_PER_DAY // 24


def intraday_us(rng: np.random.Generator, n: int) -> np.ndarray:
    """Offsets into a day (microseconds) that follow the shop's hourly profile."""
    hours = np.searchsorted(_HOUR_CUM, rng.random(n), side="right")
    return hours * _US_PER_HOUR + rng.integers(0, _US_PER_HOUR, n)
