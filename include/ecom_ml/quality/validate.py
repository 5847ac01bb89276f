"""validate_day: every quality rule on one day's partition, as one report.

Order of work: the schema of each table (Arrow), each table converted to pandas once, the GX suites,
referential integrity (Arrow), then the rules that compare with the validated history (calendar,
prices, drift; see ``history.Reference``), and finally the quarantine decision: which rows the failed
row rules take out, and whether the rest of the day may be published. A problem in the data never
raises: it becomes a failed rule, so the caller always gets a report to store and send. Only a wrong
call (naive or inverted interval) raises.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone

import pyarrow as pa

from ecom_ml.errors import EcomError
from ecom_ml.quality.config import QualityConfig
from ecom_ml.quality.frames import to_frame
from ecom_ml.quality.report import DayHistory, QualityReport, RuleResult
from ecom_ml.quality import calendar, drift, prices
from ecom_ml.quality.history import Reference
from ecom_ml.quality.quarantine import BadRows, bad_rows, decide
from ecom_ml.quality.rules import (
    REFERENCES,
    TABLES,
    check_reference,
    check_schema,
    not_evaluated,
    refunds_within_ordered,
    usable_columns,
)
from ecom_ml.quality.suites import SuiteInputs, build_checks, run_checks

log = logging.getLogger(__name__)


class QualityInputError(EcomError):
    """validate_day was called with arguments it cannot interpret (not a data problem)."""


@dataclass(frozen=True)
class DayCheck:
    """A day's report and the rows its failed row rules take out (empty unless rows are quarantined)."""

    report: QualityReport
    bad: BadRows


def validate_day(
    tables: Mapping[str, pa.Table],
    *,
    day: date,
    interval_start: datetime,
    interval_end: datetime,
    history: Sequence[DayHistory],
    config: QualityConfig,
    reference: Reference | None = None,
) -> QualityReport:
    """Check one day's partition (orders, order_items, refund_lines, customers, products) against every rule."""
    return check_day(tables, day=day, interval_start=interval_start, interval_end=interval_end, history=history,
                     config=config, reference=reference).report


def check_day(
    tables: Mapping[str, pa.Table],
    *,
    day: date,
    interval_start: datetime,
    interval_end: datetime,
    history: Sequence[DayHistory],
    config: QualityConfig,
    reference: Reference | None = None,
) -> DayCheck:
    """The report of one day and the rows to quarantine; ``history`` is the calendar rules' baseline,
    ``reference`` (price history, drift reference) comes from ``history.load_reference``."""
    started = time.perf_counter()
    start, end = _utc(interval_start, "interval_start"), _utc(interval_end, "interval_end")
    if end <= start:
        raise QualityInputError(f"quality check {day}: interval_end {end.isoformat()} is not after "
                                f"interval_start {start.isoformat()}")
    reference = reference or Reference(history=list(history))
    present = {name: tables[name] for name in TABLES if tables.get(name) is not None}
    usable = {name: usable_columns(name, present.get(name)) for name in TABLES}

    results: list[RuleResult] = [check_schema(name, present.get(name), config) for name in TABLES]
    frames = {name: to_frame(table) for name, table in present.items()}
    past = calendar.history_by_day(history, day)
    inputs = SuiteInputs(start, end, calendar.cancellation_bound(list(past.values()), day, config))
    results += run_checks(build_checks(inputs, config), present, frames, usable, config)
    results += [check_reference(ref, present, usable, config) for ref in REFERENCES]
    results.append(refunds_within_ordered(present, usable, config))
    metrics: dict[str, int] = {}
    if {"created_at", "order_id"} <= usable["orders"] and "order_id" in usable["order_items"]:
        counts = calendar.day_counts(present, start, end)
        metrics = counts.metrics()
        cal_orders = calendar.calendar(day, past, config, "orders.volume_band")
        cal_lines = calendar.calendar(day, past, config, "order_items.volume_band")
        results += [
            calendar.not_empty(counts, cal_orders, config),
            calendar.volume(counts, cal_orders, config, "orders"),
            calendar.volume(counts, cal_lines, config, "order_items"),
            calendar.late_changes(present["orders"], counts, start, list(past.values()), day,
                                  reference.first_lake_day, config),
        ]
    else:
        why = "orders.created_at or order ids missing or mistyped (see the schema rules)"
        results += [not_evaluated(rule, config, "needs the created-at timestamps", why)
                    for rule in ("orders.not_empty", "orders.volume_band", "order_items.volume_band",
                                 "orders.late_changes")]
    price_cols = {"order_items": {"product_id", "unit_price"}, "products": {"product_id", "price"}}
    if all(cols <= usable[t] for t, cols in price_cols.items()):
        results += [prices.price_outliers(present, reference.prices, config),
                    prices.list_prices(present, reference.prices, config)]
    else:
        why = "price or product id columns missing or mistyped (see the schema rules)"
        results += [not_evaluated(rule, config, "needs prices and product ids", why)
                    for rule in ("order_items.unit_price_outlier", "products.list_price")]
    if all(not r.failed for r in results if r.table != "drift" and r.rule.endswith(".schema")) and metrics:
        current = drift.drift_inputs(present, calendar.created_mask(present["orders"], start, end))
        results += drift.drift_results(current, reference.drift, config)
    else:
        results += drift.drift_results({"unit_price": []}, [], config, why_none="the partition's schema is wrong")

    order = {rule: i for i, rule in enumerate(config.rules)}
    results.sort(key=lambda r: order[r.rule])
    bad = bad_rows(results, present)
    quarantine = decide(results, bad, present, config)
    report = QualityReport(
        day=day,
        interval_start=start,
        interval_end=end,
        results=results,
        row_counts={name: table.num_rows for name, table in present.items()},
        quarantine=quarantine,
        metrics=metrics,
    )
    log.info("%s (%.2f s)", report.summary_line(), time.perf_counter() - started)
    keep = quarantine is not None and quarantine.decision == "rows"
    return DayCheck(report, bad if keep else BadRows(frozenset(), frozenset(), frozenset()))


def _utc(value: datetime, name: str) -> datetime:
    """A plain, timezone-aware UTC datetime (Airflow passes pendulum DateTimes, which GX need not know)."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise QualityInputError(f"quality check: {name}={value!r} must be a timezone-aware datetime")
    v = value.astimezone(timezone.utc)
    return datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, tzinfo=timezone.utc)
