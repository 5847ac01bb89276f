"""Injected faults: the kinds of bad rows real shop databases hold, written on purpose so the
pipeline's quality checks have something to catch.

Each fault draws from its own stream keyed by (seed, fault, day), so a day's faults are as
reproducible as its orders, and the faulty data equals the clean data plus exactly the rows touched.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from ecom_ml.generator.config import Injections
from ecom_ml.generator.days import NO_CUSTOMER, DayLines, DayOrders
from ecom_ml.generator.streams import stream

#: price_outlier multiplies the unit price by a factor drawn from this range.
OUTLIER_FACTOR = (50.0, 500.0)
#: negative_quantity writes 0 this often, else the negated quantity (a return keyed in as a sale).
ZERO_QUANTITY_SHARE = 0.2


@dataclass
class FaultCounts:
    """How many of each fault were written: orders for null_customer, lines for the line faults, days for empty_day."""

    null_customer: int = 0
    negative_quantity: int = 0
    duplicate_items: int = 0
    price_outlier: int = 0
    empty_day: int = 0

    def add(self, other: FaultCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def inject(injections: Injections, seed: int, orders: DayOrders, lines: DayLines
           ) -> tuple[DayOrders, DayLines, FaultCounts]:
    """The day's orders and lines with the requested faults written into them."""
    counts = FaultCounts()
    day = orders.header.day
    if day in injections.empty_days:
        counts.empty_day = 1
        return orders.subset(np.zeros(len(orders), dtype=bool)), lines.subset(np.zeros(len(lines), dtype=bool)), counts

    def hits(fault: str, n: int) -> tuple[np.ndarray, np.random.Generator]:
        rng = stream(seed, f"fault:{fault}", day.toordinal())
        return rng.random(n) < getattr(injections, fault), rng

    if injections.null_customer > 0:
        hit, _ = hits("null_customer", len(orders))
        orders = replace(orders, customer_id=np.where(hit, NO_CUSTOMER, orders.customer_id))
        counts.null_customer = int(hit.sum())
    if injections.negative_quantity > 0:
        hit, rng = hits("negative_quantity", len(lines))
        bad = np.where(rng.random(len(lines)) < ZERO_QUANTITY_SHARE, 0, -lines.quantity)
        lines = replace(lines, quantity=np.where(hit, bad, lines.quantity))
        counts.negative_quantity = int(hit.sum())
    if injections.price_outlier > 0:
        hit, rng = hits("price_outlier", len(lines))
        inflated = np.round(lines.unit_cents * rng.uniform(*OUTLIER_FACTOR, len(lines))).astype(np.int64)
        lines = replace(lines, unit_cents=np.where(hit, inflated, lines.unit_cents))
        counts.price_outlier = int(hit.sum())
    if injections.duplicate_items > 0:
        # A duplicate is the same line written twice (same order, line_no, product, quantity, price):
        # only the surrogate key differs, taken from the free ids after the day's last line.
        hit, _ = hits("duplicate_items", len(lines))
        copies = lines.subset(hit)
        next_id = orders.header.item_id_base + len(lines) + 1
        copies = replace(copies, order_item_id=np.arange(next_id, next_id + len(copies), dtype=np.int64))
        lines = lines.concat(copies)
        counts.duplicate_items = len(copies)
    return orders, lines, counts
