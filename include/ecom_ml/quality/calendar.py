"""Rules that need the shop's calendar: the empty-day rule, the volume bands and late changes.

A real shop is closed on some weekdays and for holidays, and has a quiet Sunday. Comparing a day
with the median of *all* previous days makes every closure drag the band to ``[0, 0]`` and flags
every normal Sunday, so a day is compared with the same weekday over the trailing weeks, open days
only. Closed weekdays and closure runs are learned from the validated history (a weekday with no
orders in most recent weeks; the days following a closure that began on a normally open day), and
``closed_dates`` in ``quality.yaml`` names announced closures. Where too few comparable open days
exist the rule says "no reference" instead of inventing a band.

All counts are of orders *created* in a day (and their lines): a partition also carries older orders
changed that day, which do not make a closed day open.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ecom_ml.quality.config import QualityConfig, table_of
from ecom_ml.quality.frames import sample_rows
from ecom_ml.quality.report import DayHistory, RuleResult

_WEEKDAYS = ("Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays", "Sundays")
#: A closure run longer than this is no longer "expected": the empty days warn again.
MAX_CLOSURE_RUN_DAYS = 21


@dataclass(frozen=True)
class DayCounts:
    """What the day's partition holds, split into created-today and changed-today."""

    created_orders: int
    created_lines: int
    late_changes: int
    partition_orders: int
    cancelled: int = 0

    def metrics(self) -> dict[str, int]:
        return {"created_orders": self.created_orders, "created_lines": self.created_lines,
                "late_changes": self.late_changes, "cancelled": self.cancelled}


def created_mask(orders: pa.Table, start: datetime, end: datetime) -> pa.ChunkedArray:
    created = orders.column("created_at")
    return pc.fill_null(pc.and_(pc.greater_equal(created, pa.scalar(start, created.type)),
                                pc.less(created, pa.scalar(end, created.type))), False)


def day_counts(tables: Mapping[str, pa.Table], start: datetime, end: datetime) -> DayCounts:
    orders = tables["orders"]
    mask = created_mask(orders, start, end)
    created_ids = orders.filter(mask).column("order_id")
    lines = tables.get("order_items")
    created_lines = 0 if lines is None else int(pc.sum(pc.is_in(lines.column("order_id"),
                                                                 value_set=created_ids)).as_py() or 0)
    created = int(pc.sum(mask).as_py() or 0)
    late = pc.fill_null(pc.less(orders.column("created_at"), pa.scalar(start, orders.column("created_at").type)), False)
    cancelled = 0
    if "status" in orders.column_names:
        gone = pc.fill_null(pc.is_in(orders.column("status"), value_set=pa.array(["cancelled", "refunded"])), False)
        cancelled = int(pc.sum(pc.and_(mask, gone)).as_py() or 0)
    return DayCounts(created, created_lines, int(pc.sum(late).as_py() or 0), orders.num_rows, cancelled)


def cancellation_bound(history: Sequence[DayHistory], day: date, config: QualityConfig) -> tuple[float, str]:
    """The allowed cancelled share of the day's new orders: configured, or learned from the open days before."""
    s = config.rule("orders.cancellation_share")
    window = [h.cancelled / h.orders for h in history
              if day - timedelta(days=s["window_days"]) <= h.day < day and h.orders > 0]
    if len(window) < s["min_history_days"]:
        return s["max_share"], f"≤ {s['max_share']:.2%} (configured; {len(window)} of {s['min_history_days']} " \
                               "open days of history)"
    p90 = float(np.quantile(window, 0.9))
    bound = min(1.0, max(s["max_share"], s["multiplier"] * p90))
    return bound, f"≤ {bound:.2%} (max of {s['max_share']:.0%} and {s['multiplier']:g} × p90 {p90:.1%} of " \
                  f"{len(window)} previous open days)"


@dataclass(frozen=True)
class Calendar:
    """What the history says about ``day``: an expected closure, or its comparable open days."""

    expected_closed: str | None  # why the day is expected to be closed, or None
    closed_weekday: str | None  # "Saturdays closed in 8 of the last 8 weeks", or None
    same_weekday: list[DayHistory]  # the same weekday in the trailing weeks that has history
    reference: list[DayHistory]  # ... of them the open ones


def calendar(day: date, history: Mapping[date, DayHistory], config: QualityConfig, rule: str) -> Calendar:
    settings = config.rule(rule)
    weeks, closed_share = settings["weeks"], settings["closed_share"]
    same = [history[d] for k in range(1, weeks + 1) if (d := day - timedelta(days=7 * k)) in history]
    closed = sum(h.orders == 0 for h in same)
    closed_weekday = None
    if same and closed / len(same) >= closed_share:
        closed_weekday = f"{_WEEKDAYS[day.weekday()]} closed in {closed} of the last {len(same)} weeks"
    expected = None
    if day in config.closed_dates:
        expected = "listed in closed_dates"
    elif closed_weekday:
        expected = closed_weekday
    elif (run := _closure_run_start(day, history, config, rule)) is not None:
        expected = f"closure since {run.isoformat()} continues"
    reference = [h for h in same if h.orders > 0 and h.day not in config.closed_dates]
    return Calendar(expected, closed_weekday, same, reference)


def _closure_run_start(day: date, history: Mapping[date, DayHistory], config: QualityConfig,
                       rule: str) -> date | None:
    """The first day of a closure that began on a normally open day and lasts until yesterday.

    The first empty open day of a closure is a warning (nobody announced it); the following days of
    the same run are expected, so a two-week holiday warns once, not ten times.
    """
    run: list[date] = []
    current = day - timedelta(days=1)
    while (h := history.get(current)) is not None and h.orders == 0 and len(run) < MAX_CLOSURE_RUN_DAYS:
        run.append(current)
        current -= timedelta(days=1)
    if not run or len(run) >= MAX_CLOSURE_RUN_DAYS:
        return None
    for d in reversed(run):  # oldest first: did the run start on a day the shop is normally open?
        if d in config.closed_dates:
            return d
        if calendar_closed_weekday(d, history, config, rule) is None:
            return d
    return None


def calendar_closed_weekday(day: date, history: Mapping[date, DayHistory], config: QualityConfig,
                            rule: str) -> str | None:
    s = config.rule(rule)
    same = [history[d] for k in range(1, s["weeks"] + 1) if (d := day - timedelta(days=7 * k)) in history]
    closed = sum(h.orders == 0 for h in same)
    return "closed weekday" if same and closed / len(same) >= s["closed_share"] else None


def not_empty(counts: DayCounts, cal: Calendar, config: QualityConfig) -> RuleResult:
    rule = "orders.not_empty"
    description = "the day has at least one order created in it, unless the shop is expected to be closed"
    base = {"rule": rule, "table": "orders", "severity": config.severity(rule), "threshold": "≥ 1",
            "description": description, "observed": counts.created_orders}
    if counts.created_orders > 0:
        return RuleResult(success=True, detail=f"{counts.created_orders:,} orders", **base)
    if cal.expected_closed:
        return RuleResult(success=True, detail=f"0 orders: expected closed day ({cal.expected_closed})", **base)
    return RuleResult(success=False, detail="0 orders on a day the shop is normally open", **base)


def volume(counts: DayCounts, cal: Calendar, config: QualityConfig, table: str) -> RuleResult:
    rule = f"{table}.volume_band"
    s = config.rule(rule)
    unit, observed = ("orders", counts.created_orders) if table == "orders" else ("order lines", counts.created_lines)
    description = f"{unit} created in the day within [{s['low']:g}, {s['high']:g}] × the median of the same weekday" \
                  f" over the previous {s['weeks']} weeks (open days)"

    def result(success: bool | None, threshold: str, detail: str) -> RuleResult:
        return RuleResult(rule=rule, table=table_of(rule), severity=config.severity(rule), success=success,
                          observed=observed if success is not None else None, threshold=threshold,
                          description=description, detail=detail)

    if observed == 0 and counts.created_orders == 0:
        if cal.expected_closed:
            return result(True, "closed", f"0 {unit}: expected closed day ({cal.expected_closed})")
        return result(None, "", "not evaluated: no orders created (see orders.not_empty)")
    if cal.closed_weekday:
        return result(None, "no reference", f"not evaluated: no reference, {cal.closed_weekday}")
    if len(cal.reference) < s["min_reference_days"]:
        return result(None, "no reference",
                      f"not evaluated: no reference, {len(cal.reference)} open {_WEEKDAYS[_weekday(cal)]} in the "
                      f"previous {s['weeks']} weeks (need {s['min_reference_days']})")
    values = [h.orders if table == "orders" else h.order_lines for h in cal.reference]
    median = statistics.median(values)
    low, high = math.ceil(s["low"] * median - 1e-9), math.floor(s["high"] * median + 1e-9)
    threshold = f"[{low:,}, {high:,}] {unit} (median {median:,.0f} of {len(values)} previous open " \
                f"{_WEEKDAYS[_weekday(cal)]})"
    return result(low <= observed <= high, threshold, f"{observed:,} {unit}")


def _weekday(cal: Calendar) -> int:
    return cal.same_weekday[0].day.weekday() if cal.same_weekday else 0


def late_changes(orders: pa.Table, counts: DayCounts, start: datetime, history: Sequence[DayHistory],
                 day: date, first_lake_day: date | None, config: QualityConfig) -> RuleResult:
    """Older orders changed today, against what is normal for this shop (learned from history)."""
    rule = "orders.late_changes"
    s = config.rule(rule)
    created = orders.column("created_at")
    ages = np.array([], dtype=float)
    late_positions: list[int] = []
    if counts.late_changes:
        mask = pc.fill_null(pc.less(created, pa.scalar(start, created.type)), False)
        late_positions = pc.indices_nonzero(mask).to_pylist()
        late = orders.take(pa.array(late_positions, pa.int64())).column("created_at")
        ages = (np.datetime64(start.replace(tzinfo=None), "us")
                - late.cast(pa.timestamp("us")).to_numpy()).astype("timedelta64[h]").astype(float) / 24.0
    older = int((ages > config.lookback_days).sum())
    predates = 0
    if first_lake_day is not None and len(ages):
        first = datetime(first_lake_day.year, first_lake_day.month, first_lake_day.day, tzinfo=start.tzinfo)
        predates = int((ages > (start - first).total_seconds() / 86400).sum())
    window = [h.late_changes for h in history if day - timedelta(days=s["window_days"]) <= h.day < day]
    n = counts.late_changes
    if len(window) >= s["min_history_days"]:
        p90 = float(np.quantile(window, 0.9))
        bound = max(s["min_count"], math.floor(s["multiplier"] * p90 + 1e-9))
        ok = n <= bound
        threshold = f"≤ {bound:,} ({s['multiplier']:g} × p90 {p90:,.1f} of {len(window)} previous days, min {s['min_count']})"
    else:
        bound_share = s["max_share"]
        share = n / counts.partition_orders if counts.partition_orders else 0.0
        ok = n <= s["min_count"] or share <= bound_share
        threshold = f"≤ {bound_share:.0%} of the partition's orders (configured; {len(window)} of " \
                    f"{s['min_history_days']} days of history)"
    median_age = float(np.median(ages)) if len(ages) else 0.0
    detail = (f"{n:,} older order(s) changed (median age {median_age:,.0f} days; {older:,} older than "
              f"lookback_days={config.lookback_days}; {predates:,} created before the lake's first day)")
    oldest = [late_positions[i] for i in np.argsort(ages)[::-1][: config.sample_rows]] if len(ages) else []
    return RuleResult(rule=rule, table="orders", severity=config.severity(rule), success=ok, observed=n,
                      threshold=threshold, description="orders created before the interval and changed in it, "
                      "against this shop's normal", detail=detail,
                      sample=[] if ok else sample_rows(orders, oldest, config.sample_rows))


def history_by_day(history: Sequence[DayHistory], day: date) -> dict[date, DayHistory]:
    """Days strictly before ``day``; a day listed twice counts once (the later entry wins)."""
    return {h.day: h for h in history if h.day < day}

