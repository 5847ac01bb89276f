"""What the checks of day D read from the validated lake before it: the day's reference.

Only validated days count (a quarantined day is nobody's baseline), only days strictly before D (a
re-run never compares a day with itself), and only through the Lake's public API. Day metrics (orders
and lines created, late changes) come from the validated manifests, which ``publish`` writes them
into, so the calendar rules read one small file per day; the price history and the drift reference
read the partitions of the trailing window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ecom_ml.lake import VALIDATED, Lake
from ecom_ml.quality.calendar import created_mask
from ecom_ml.quality.config import QualityConfig
from ecom_ml.quality.drift import drift_inputs
from ecom_ml.quality.prices import PriceHistory
from ecom_ml.quality.report import DayHistory

DATASET = "orders"


@dataclass(frozen=True)
class Reference:
    """Everything a day's check compares with, besides its own partition."""

    history: list[DayHistory]
    prices: PriceHistory = field(default_factory=PriceHistory.empty)
    #: Drift inputs of each open reference day, newest first.
    drift: list[dict[str, np.ndarray]] = field(default_factory=list)
    first_lake_day: date | None = None


def _interval(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


def day_history(lake: Lake, day: date) -> DayHistory | None:
    """A validated day's metrics from its manifest (older manifests: its row counts)."""
    manifest = lake.manifest(VALIDATED, DATASET, day)
    if manifest is None:
        return None
    extra = manifest.extra
    return DayHistory(day, int(extra.get("created_orders", manifest.rows.get("orders", 0))),
                      int(extra.get("created_lines", manifest.rows.get("order_items", 0))),
                      int(extra.get("late_changes", 0)), int(extra.get("cancelled", 0)))


def load_reference(lake: Lake, day: date, config: QualityConfig) -> Reference:
    """The validated history before ``day`` the rules need (bounded by the longest configured window)."""
    days = [d for d in lake.days(VALIDATED, DATASET) if d < day]
    weeks = max(config.rule("orders.volume_band")["weeks"], config.rule("order_items.volume_band")["weeks"])
    horizon = max(7 * weeks, config.rule("orders.late_changes")["window_days"],
                  config.rule("orders.cancellation_share")["window_days"])
    history = [h for d in days if d >= day - timedelta(days=horizon) if (h := day_history(lake, d)) is not None]
    open_days = {h.day for h in history if h.orders > 0}

    price_window = config.rule("order_items.unit_price_outlier")["window_days"]
    drift_window = config.drift.window_days
    lines, list_prices, drift = [], [], []
    for d in sorted((d for d in days if d >= day - timedelta(days=max(price_window, drift_window))), reverse=True):
        want_drift = d >= day - timedelta(days=drift_window) and d in open_days and len(drift) < config.drift.reference_days
        # Only the tables the rules read (customers only for the drift reference's new-customer share).
        tables = lake.read(VALIDATED, DATASET, d, ["orders", "order_items", "products"]
                           + (["customers"] if want_drift else []))
        created = created_mask(tables["orders"], *_interval(d))
        if d >= day - timedelta(days=price_window):
            created_ids = tables["orders"].filter(created).column("order_id")
            items = tables["order_items"].filter(pc.is_in(tables["order_items"].column("order_id"), value_set=created_ids))
            lines.append(pa.table({"product_id": items.column("product_id"),
                                   "unit_price": pc.cast(items.column("unit_price"), pa.float64())}))
            products = tables["products"]
            list_prices.append(pa.table({"product_id": products.column("product_id"),
                                         "price": pc.cast(products.column("price"), pa.float64())}))
        if want_drift:
            drift.append(drift_inputs(tables, created))
    # Newest partition first, so the first occurrence of a product is its latest list price.
    price_history = PriceHistory.empty()
    if lines:
        latest = pa.concat_tables(list_prices)
        seen: set[int] = set()
        keep = [not (p in seen or seen.add(p)) for p in latest.column("product_id").to_pylist()]  # type: ignore[func-returns-value]
        price_history = PriceHistory(pa.concat_tables(lines), latest.filter(pa.array(keep)))
    return Reference(history=history, prices=price_history, drift=drift, first_lake_day=days[0] if days else None)
