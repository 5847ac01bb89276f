"""validate_day: every quality rule on one day's partition, as one report.

Order of work: the schema of each table (Arrow), thresholds that need more than one batch (price
bound, volume band), each table converted to pandas once, the GX suites, then referential integrity
(Arrow). A problem in the data never raises: it becomes a failed rule, so the caller always gets a
report to store and send. Only a wrong call (naive or inverted interval) raises.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta, timezone

import pyarrow as pa

from ecom_ml.errors import EcomError
from ecom_ml.quality.config import QualityConfig
from ecom_ml.quality.frames import to_frame
from ecom_ml.quality.report import DayHistory, QualityReport, RuleResult
from ecom_ml.quality.rules import (
    REFERENCES,
    TABLES,
    check_reference,
    check_schema,
    price_bound,
    usable_columns,
    volume_band,
)
from ecom_ml.quality.suites import SuiteInputs, build_checks, run_checks

log = logging.getLogger(__name__)


class QualityInputError(EcomError):
    """validate_day was called with arguments it cannot interpret (not a data problem)."""


def validate_day(
    tables: Mapping[str, pa.Table],
    *,
    day: date,
    interval_start: datetime,
    interval_end: datetime,
    history: Sequence[DayHistory],
    config: QualityConfig,
) -> QualityReport:
    """Check one day's partition (orders, order_items, customers, products) against every rule."""
    started = time.perf_counter()
    start, end = _utc(interval_start, "interval_start"), _utc(interval_end, "interval_end")
    if end <= start:
        raise QualityInputError(f"quality check {day}: interval_end {end.isoformat()} is not after "
                                f"interval_start {start.isoformat()}")
    present = {name: tables[name] for name in TABLES if tables.get(name) is not None}
    usable = {name: usable_columns(name, present.get(name)) for name in TABLES}

    results: list[RuleResult] = [check_schema(name, present.get(name), config) for name in TABLES]
    inputs = SuiteInputs(
        interval_start=start,
        interval_end=end,
        lookback=timedelta(days=config.lookback_days),
        price_bound=price_bound(present, usable, config),
        volume={
            "orders": volume_band(history, day, "orders", "orders.volume_band", config),
            "order_items": volume_band(history, day, "order_lines", "order_items.volume_band", config),
        },
    )
    frames = {name: to_frame(table) for name, table in present.items()}
    results += run_checks(build_checks(inputs, config), present, frames, usable, config)
    results += [check_reference(ref, present, usable, config) for ref in REFERENCES]

    order = {rule: i for i, rule in enumerate(config.rules)}
    results.sort(key=lambda r: order[r.rule])
    report = QualityReport(
        day=day,
        interval_start=start,
        interval_end=end,
        results=results,
        row_counts={name: table.num_rows for name, table in present.items()},
    )
    log.info("%s (%.2f s)", report.summary_line(), time.perf_counter() - started)
    return report


def _utc(value: datetime, name: str) -> datetime:
    """A plain, timezone-aware UTC datetime (Airflow passes pendulum DateTimes, which GX need not know)."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise QualityInputError(f"quality check: {name}={value!r} must be a timezone-aware datetime")
    v = value.astimezone(timezone.utc)
    return datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, tzinfo=timezone.utc)
