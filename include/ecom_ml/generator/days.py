"""One day of the shop: who orders when, what they put in the basket, and how each order's life goes on.

``plan_orders`` and ``plan_lines`` are pure functions of (world, day): vectorised numpy over the
whole day, no per-row Python. An order's lifecycle (paid, shipped, delivered, or cancelled or
refunded) is drawn in full when it is placed; ``order_states`` then reads off its state at any
moment, which is how a run writes "the state as of the end of the generated range" and how a later
run finds the late changes it must apply to earlier days.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Self

import numpy as np

from ecom_ml.generator.lifecycle import day_weights
from ecom_ml.generator.streams import stream
from ecom_ml.generator.timeline import US_PER_DAY, DayHeader, intraday_us
from ecom_ml.generator.world import STAPLE_SLOTS, World, taste_categories

STATUSES = ("placed", "paid", "shipped", "delivered", "cancelled", "refunded")
CANCELLED, REFUNDED = 4, 5
#: Sentinel for lifecycle events that never happen, and for a NULL customer id (ids start at 1).
NEVER = np.iinfo(np.int64).max
NO_CUSTOMER = 0

_MINUTE = 60_000_000
_HOUR = 60 * _MINUTE

#: Share of orders cancelled (within 2 days) and refunded (3-14 days after the order).
CANCEL_RATE = 0.03
REFUND_RATE = 0.04
#: A refunded order takes back each of its lines with this probability (at least one line), a line
#: in full with FULL_LINE_REFUND, else part of its quantity: partial refunds as well as full ones.
REFUND_LINE_SHARE = 0.5
FULL_LINE_REFUND = 0.5
#: Share of orders paid slowly (bank transfer, retried card: 1-48 h) instead of within minutes.
SLOW_PAYMENT_RATE = 0.03

#: Lines per order 1..8, most baskets small.
BASKET_SIZES = np.array([0.35, 0.25, 0.15, 0.10, 0.06, 0.04, 0.03, 0.02])
#: Where a line comes from: one of the customer's staples (a re-buy once bought before), the "new in"
#: shelf, or else browsing by taste and popularity.
STAPLE_RATE = 0.32
NEW_IN_RATE = 0.03
#: On promotion days, this share of browsing goes to the promoted categories.
PROMO_PULL = 0.35
#: Quantities: geometric (mostly 1), capped.
QUANTITY_P = 0.68
QUANTITY_CAP = 12

_BASKET_CUM = np.cumsum(BASKET_SIZES) / BASKET_SIZES.sum()
_STAPLE_CUM = np.cumsum(STAPLE_SLOTS) / STAPLE_SLOTS.sum()


class _Columns:
    """Row selection for the dataclasses below, whose array fields are columns of equal length."""

    def _arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)  # type: ignore[arg-type]
                if isinstance(getattr(self, f.name), np.ndarray)}

    def subset(self, rows: np.ndarray) -> Self:
        """The rows picked by a boolean mask or an index array."""
        picked = {name: column[rows] for name, column in self._arrays().items()}
        return replace(self, **picked)  # type: ignore[type-var]

    def concat(self, other: Self) -> Self:
        theirs = other._arrays()
        return replace(self, **{name: np.concatenate([column, theirs[name]])  # type: ignore[type-var]
                                for name, column in self._arrays().items()})


@dataclass(frozen=True)
class DayOrders(_Columns):
    """A day's orders, sorted by time; ids are the day's block base + 1, 2, ..."""

    header: DayHeader
    order_id: np.ndarray     # int64
    customer_id: np.ndarray  # int64, NO_CUSTOMER = NULL
    country: np.ndarray      # int64 index into COUNTRIES
    created_us: np.ndarray   # int64
    events: np.ndarray       # (n, 5) int64: placed, paid, shipped, delivered, cancelled/refunded; NEVER if not
    terminal: np.ndarray     # int64: 0, CANCELLED or REFUNDED

    def __len__(self) -> int:
        return len(self.order_id)


@dataclass(frozen=True)
class DayLines(_Columns):
    """A day's order lines, grouped by order."""

    order_item_id: np.ndarray  # int64
    order_id: np.ndarray       # int64
    line_no: np.ndarray        # int64, 1-based within the order
    product_id: np.ndarray     # int64
    quantity: np.ndarray       # int64
    unit_cents: np.ndarray     # int64

    def __len__(self) -> int:
        return len(self.order_item_id)


def plan_orders(world: World, header: DayHeader) -> DayOrders:
    """Who orders on the day and when, and each order's whole lifecycle."""
    rng = stream(world.params.seed, "orders", header.day.toordinal())
    population = world.population
    returning = header.orders - header.new_customers
    # Returning customers are drawn by activity among everyone signed up before today.
    returning_ids = _returning(world, header, rng, returning)
    returning_at = header.start_us + intraday_us(rng, returning)
    # Each customer who signs up today places their first order a few minutes later.
    new_ids = np.arange(header.customers_before + 1, header.customers_before + header.new_customers + 1)
    new_at = np.minimum(population.created_us[new_ids - 1] + rng.integers(_MINUTE, 20 * _MINUTE, len(new_ids)),
                        header.start_us + US_PER_DAY - 1)
    customer_id = np.concatenate([returning_ids, new_ids]).astype(np.int64)
    created = np.concatenate([returning_at, new_at]).astype(np.int64)
    order = np.argsort(created, kind="stable")
    customer_id, created = customer_id[order], created[order]
    events, terminal = _lifecycle(stream(world.params.seed, "lifecycle", header.day.toordinal()), created)
    return DayOrders(
        header=header,
        order_id=header.order_id_base + np.arange(1, len(created) + 1, dtype=np.int64),
        customer_id=customer_id,
        country=population.country[customer_id - 1],
        created_us=created,
        events=events,
        terminal=terminal,
    )


def _returning(world: World, header: DayHeader, rng: np.random.Generator, count: int) -> np.ndarray:
    """Ids of the day's returning customers, by activity (times life and season with a customer lifecycle).

    With a lifecycle but nobody left alive (a degenerate setting), activity alone decides: the day's
    volume is fixed by the timeline.
    """
    population = world.population
    cum = population.activity_cum[: header.customers_before]
    lifecycle = world.params.lifecycle
    if population.lives is not None and lifecycle is not None:
        weights = day_weights(population.lives, header.customers_before, header.start_us + US_PER_DAY // 2,
                              header.day.timetuple().tm_yday, lifecycle)
        alive = np.cumsum(weights)
        if alive[-1] > 0:
            cum = alive
    picks = rng.integers(0, cum[-1], count)
    return np.searchsorted(cum, picks, side="right") + 1


def _lifecycle(rng: np.random.Generator, created: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(created)
    fate = rng.random(n)
    terminal = np.where(fate < CANCEL_RATE, CANCELLED, np.where(fate < CANCEL_RATE + REFUND_RATE, REFUNDED, 0))
    slow = rng.random(n) < SLOW_PAYMENT_RATE
    paid = created + np.where(slow, rng.integers(_HOUR, 48 * _HOUR, n), rng.integers(_MINUTE // 3, 20 * _MINUTE, n))
    shipped = paid + rng.integers(8 * _HOUR, 48 * _HOUR, n)
    delivered = shipped + rng.integers(US_PER_DAY, 4 * US_PER_DAY, n)
    cancel_at = created + rng.integers(5 * _MINUTE, 2 * US_PER_DAY, n)
    refund_at = created + rng.integers(3 * US_PER_DAY, 14 * US_PER_DAY, n)
    events = np.stack([created, paid, shipped, delivered, np.full(n, NEVER)], axis=1)
    cancelled = terminal == CANCELLED
    events[cancelled, 4] = cancel_at[cancelled]
    events[cancelled, 2:4] = NEVER  # a cancellation stops the parcel
    refunded = terminal == REFUNDED
    events[refunded, 4] = refund_at[refunded]
    # Anything that would come after the cancellation or refund does not happen.
    ended = cancelled | refunded
    after_end = ended[:, None] & (events[:, 1:4] >= events[:, 4:5])
    events[:, 1:4][after_end] = NEVER
    return events, terminal


def order_states(orders: DayOrders, as_of_us: int) -> tuple[np.ndarray, np.ndarray]:
    """Each order's status code (index into STATUSES) and updated_at just before ``as_of_us``."""
    happened = orders.events < as_of_us
    last = orders.events.shape[1] - 1 - np.argmax(happened[:, ::-1], axis=1)
    updated = orders.events[np.arange(len(orders)), last]
    status = np.where(last < 4, last, orders.terminal)
    return status.astype(np.int64), updated


@dataclass(frozen=True)
class DayRefunds(_Columns):
    """The line-level refunds of a day's refunded orders (``refund_lines``), whenever they happen.

    A line is refunded at most once, so its refund takes the line's id (unique, and the same on
    every re-derivation). All refunds of an order happen at its refund event (3-14 days after it was
    placed): the parcel comes back once.
    """

    refund_line_id: np.ndarray  # int64
    order_item_id: np.ndarray   # int64
    quantity: np.ndarray        # int64, 1..the line's quantity
    refunded_us: np.ndarray     # int64

    def __len__(self) -> int:
        return len(self.refund_line_id)


def plan_refunds(world: World, orders: DayOrders, lines: DayLines) -> DayRefunds:
    """Which lines of the day's refunded orders come back, and how many units (own random stream,
    so orders and lines are exactly what they were before refunds were recorded per line)."""
    rng = stream(world.params.seed, "refunds", orders.header.day.toordinal())
    refunded = orders.terminal == REFUNDED
    position = np.searchsorted(orders.order_id, lines.order_id)
    n = len(lines)
    draw, whole, share = rng.random(n), rng.random(n), rng.random(n)
    candidate = refunded[position] & (lines.quantity > 0) if n else np.zeros(0, dtype=bool)
    picked = candidate & (draw < REFUND_LINE_SHARE)
    # Every refunded order returns something: its candidate line with the lowest draw when none was picked.
    if candidate.any():
        key = np.where(candidate, draw, np.inf)
        best = np.full(len(orders), np.inf)
        np.minimum.at(best, position[candidate], key[candidate])
        none_picked = np.bincount(position[picked], minlength=len(orders)) == 0
        picked |= candidate & none_picked[position] & (key == best[position])
    quantity = np.where(whole < FULL_LINE_REFUND, lines.quantity,
                        1 + np.floor(share * np.maximum(lines.quantity - 1, 1)).astype(np.int64))
    quantity = np.minimum(quantity, lines.quantity)
    return DayRefunds(
        refund_line_id=lines.order_item_id[picked],
        order_item_id=lines.order_item_id[picked],
        quantity=quantity[picked].astype(np.int64),
        refunded_us=orders.events[position[picked], 4],
    )


def plan_lines(world: World, orders: DayOrders) -> DayLines:
    """The day's baskets: staples re-bought, "new in" products tried, and browsing by taste and popularity."""
    header = orders.header
    population = world.population
    rng = stream(world.params.seed, "lines", header.day.toordinal())
    sizes = np.searchsorted(_BASKET_CUM, rng.random(len(orders)), side="right") + 1
    order_index = np.repeat(np.arange(len(orders)), sizes)
    n = len(order_index)
    customer = orders.customer_id[order_index] - 1
    channel = rng.random(n)

    staple = population.staples[customer, np.searchsorted(_STAPLE_CUM, rng.random(n), side="right")]
    category = taste_categories(rng, population.favourites[customer], population.taste_cum[customer])
    promo = header.promo
    if promo is not None:
        pulled = rng.random(n) < PROMO_PULL
        promoted = np.array(promo.categories)[rng.integers(0, len(promo.categories), n)]
        category = np.where(pulled, promoted, category)
    browsed = world.sampler.sample(rng, category, header.products_before)
    product = np.where(channel < STAPLE_RATE, staple, browsed)
    if header.products_before > header.products_new_in:
        new_in = rng.integers(header.products_new_in, header.products_before, n) + 1
        product = np.where((channel >= STAPLE_RATE) & (channel < STAPLE_RATE + NEW_IN_RATE), new_in, product)
    quantity = np.minimum(rng.geometric(QUANTITY_P, n), QUANTITY_CAP)

    # One line per product in an order, as a checkout would merge them; first occurrence wins.
    _, first = np.unique((order_index.astype(np.int64) << 32) | product, return_index=True)
    keep = np.sort(first)
    order_index, product, quantity = order_index[keep], product[keep], quantity[keep]
    starts = np.searchsorted(order_index, np.arange(len(orders)))
    line_no = np.arange(len(keep)) - starts[order_index] + 1

    unit_cents = world.catalogue.price_cents[product - 1]
    if promo is not None:
        on_promo = np.isin(world.catalogue.category[product - 1], promo.categories)
        unit_cents = np.where(on_promo, np.round(unit_cents * (1.0 - promo.discount)).astype(np.int64), unit_cents)
    return DayLines(
        order_item_id=header.item_id_base + np.arange(1, len(keep) + 1, dtype=np.int64),
        order_id=orders.order_id[order_index],
        line_no=line_no.astype(np.int64),
        product_id=product.astype(np.int64),
        quantity=quantity.astype(np.int64),
        unit_cents=unit_cents.astype(np.int64),
    )
