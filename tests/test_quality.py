"""ecom_ml.quality: the rules on small hand-made partitions, the report formats, the config file.

No database: each test builds one day's four Arrow tables with the lake's schema, breaks one thing,
and checks that exactly the right rule fails with the right severity, observed value and samples.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from ecom_ml.ingest.schema import arrow_schema
from ecom_ml.quality import DayHistory, QualityConfig, QualityConfigError, QualityReport, validate_day
from ecom_ml.quality.calendar import created_mask
from ecom_ml.quality.drift import drift_inputs
from ecom_ml.quality.history import Reference
from ecom_ml.quality.prices import PriceHistory
from ecom_ml.quality.validate import check_day

UTC = timezone.utc
DAY = date(2024, 1, 15)
START = datetime(2024, 1, 15, tzinfo=UTC)
END = START + timedelta(days=1)
STATUSES = ["placed", "paid", "shipped", "delivered"]

Rows = dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def config() -> QualityConfig:
    return QualityConfig.load()


def clean_rows(orders: int = 40, lines: int = 3) -> Rows:
    """A plausible day: orders created in the interval, plus one older order cancelled during it."""
    out: Rows = {"orders": [], "order_items": [], "customers": [], "products": []}
    for i in range(orders):
        created = START + timedelta(minutes=10 * i)
        out["orders"].append({
            "order_id": 1000 + i, "external_ref": f"INV{1000 + i}", "customer_id": 1 + i % 5,
            "status": STATUSES[i % 4], "currency": "GBP", "country": "GB",
            "created_at": created, "updated_at": created + timedelta(hours=1),
        })
    out["orders"].append({  # late cancellation: created three days earlier, updated today
        "order_id": 900, "external_ref": "INV900", "customer_id": 1, "status": "cancelled", "currency": "GBP",
        "country": "GB", "created_at": START - timedelta(days=3), "updated_at": START + timedelta(hours=2),
    })
    item_id = 1
    for order in out["orders"]:
        for j in range(lines):
            out["order_items"].append({
                "order_item_id": item_id, "order_id": order["order_id"], "line_no": j + 1,
                "product_id": 1 + (order["order_id"] + j) % 7, "quantity": 1 + j,
                "unit_price": Decimal("9.99") + j,
            })
            item_id += 1
    # Refunds: the late cancellation takes back every line of order 900, and one line of order 1003
    # (2 or more ordered) is partly refunded: normal shop life, which no rule may flag.
    out["refund_lines"] = [
        {"refund_line_id": 1 + n, "order_item_id": item["order_item_id"], "quantity": item["quantity"],
         "refunded_at": START + timedelta(hours=2), "source_ref": "C900", "source_line": 1 + n}
        for n, item in enumerate(i for i in out["order_items"] if i["order_id"] == 900)
    ]
    partial = next((i for i in out["order_items"] if i["order_id"] == 1000 + min(3, orders - 1)
                    and i["quantity"] >= 2), None)
    if partial is not None:
        out["refund_lines"].append({"refund_line_id": 10, "order_item_id": partial["order_item_id"], "quantity": 1,
                                    "refunded_at": START + timedelta(hours=5), "source_ref": None,
                                    "source_line": None})
    for c in range(1, 6):
        out["customers"].append({"customer_id": c, "external_ref": f"C{c}", "country": "GB",
                                 "created_at": START - timedelta(days=100), "updated_at": START - timedelta(days=50)})
    for p in range(1, 8):
        out["products"].append({"product_id": p, "sku": f"SKU{p}", "name": f"Product {p}", "category": "home",
                                "price": Decimal("5.00") * p, "created_at": START - timedelta(days=200),
                                "updated_at": START - timedelta(days=20)})
    return out


def to_tables(rows: Rows) -> dict[str, pa.Table]:
    return {name: pa.Table.from_pylist(table_rows, schema=arrow_schema(name)) for name, table_rows in rows.items()}


def run(
    rows: Rows | dict[str, pa.Table], config: QualityConfig, history: list[DayHistory] | None = None,
    reference: Reference | None = None,
) -> QualityReport:
    tables = rows if all(isinstance(t, pa.Table) for t in rows.values()) else to_tables(rows)  # type: ignore[arg-type]
    return validate_day(tables, day=DAY, interval_start=START, interval_end=END, history=history or [], config=config,
                        reference=reference)


def open_history(weeks: int = 8, orders: int = 40, lines: int = 120) -> list[DayHistory]:
    """Every day of the previous ``weeks`` weeks open, with the clean day's created counts."""
    return [DayHistory(DAY - timedelta(days=d), orders, lines, 1) for d in range(1, 7 * weeks + 1)]


def clean_reference(days: int = 14, history: list[DayHistory] | None = None) -> Reference:
    """What the lake would hold after ``days`` clean days: price history and drift reference."""
    tables = to_tables(clean_rows())
    created = created_mask(tables["orders"], START, END)
    items = tables["order_items"]
    lines = pa.table({"product_id": items.column("product_id"),
                      "unit_price": items.column("unit_price").cast(pa.float64())})
    products = tables["products"]
    prices = PriceHistory(pa.concat_tables([lines] * days),
                          pa.table({"product_id": products.column("product_id"),
                                    "price": products.column("price").cast(pa.float64())}))
    return Reference(history=history or open_history(), prices=prices,
                     drift=[drift_inputs(tables, created)] * days, first_lake_day=DAY - timedelta(days=60))


def failed_rules(report: QualityReport) -> set[str]:
    return {r.rule for r in report.failures()}


def steady_history(days: int, orders: int = 41, lines: int = 123) -> list[DayHistory]:
    return [DayHistory(DAY - timedelta(days=d), orders, lines) for d in range(1, days + 1)]


# -- a clean day --------------------------------------------------------------------------------


def test_clean_day_passes_and_reports_every_rule_once(config: QualityConfig) -> None:
    report = run(clean_rows(), config, history=open_history(), reference=clean_reference())

    assert report.status == "pass", report.summary_line()
    assert [r.rule for r in report.results] == list(config.rules)  # every rule once, in config order
    assert all(r.success is True for r in report.results), [r.rule for r in report.results if not r.success]
    assert report.row_counts == {"orders": 41, "order_items": 123, "refund_lines": 4, "customers": 5, "products": 7}
    assert report.metrics == {"created_orders": 40, "created_lines": 120, "late_changes": 1, "cancelled": 0}
    assert report.quarantine is None
    assert report.summary_line() == f"orders {DAY}: all {len(config.rules)} evaluated rules passed"
    assert all(r.severity in ("error", "warning") for r in report.results)


def test_clean_day_passes_after_a_parquet_round_trip(config: QualityConfig, tmp_path: Path) -> None:
    """The lake hands the check what Parquet gives back; the exact Arrow types must survive it."""
    import pyarrow.parquet as pq

    tables = {}
    for name, table in to_tables(clean_rows()).items():
        pq.write_table(table, tmp_path / f"{name}.parquet")
        tables[name] = pq.read_table(tmp_path / f"{name}.parquet")
    assert run(tables, config).status == "pass"


def test_import_is_light() -> None:
    """The DAG imports the package at parse time: no GX, pandas or pyarrow until a day is validated."""
    code = ("import sys, ecom_ml.quality; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'great_expectations', 'pandas', 'pyarrow'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- each rule on a crafted violation -----------------------------------------------------------


def test_negative_quantity_is_an_error_with_count_and_at_most_20_samples(config: QualityConfig) -> None:
    rows = clean_rows()
    bad_ids = set()
    for line in rows["order_items"][:37]:
        line["quantity"] = -1
        bad_ids.add(line["order_item_id"])
    report = run(rows, config)

    r = report.result("order_items.quantity_positive")
    assert (report.status, r.success, r.severity, r.observed) == ("error", False, "error", 37)
    assert len(r.sample) == 20
    assert all(s["quantity"] == -1 and s["order_item_id"] in bad_ids for s in r.sample)
    assert set(r.sample[0]) == {"order_item_id", "order_id", "line_no", "product_id", "quantity", "unit_price"}
    assert r.sample[0]["unit_price"] == "9.99"  # the stored decimal, not a float rendering
    assert failed_rules(report) == {"order_items.quantity_positive"}
    assert (f"orders {DAY}: 1 error rule(s) failed: order_items.quantity_positive "
            "(37 row(s) with quantity ≤ 0, allowed 0)") == report.summary_line()


def test_duplicate_order_line_is_an_error(config: QualityConfig) -> None:
    rows = clean_rows()
    rows["order_items"][1]["line_no"] = 1  # order 1000 now has line 1 twice
    report = run(rows, config)

    r = report.result("order_items.order_line_unique")
    assert (r.success, r.severity, r.observed) == (False, "error", 2)  # both copies are offending rows
    assert {(s["order_id"], s["line_no"]) for s in r.sample} == {(1000, 1)}
    assert failed_rules(report) == {"order_items.order_line_unique"}


def test_null_customer_is_an_error_by_default(config: QualityConfig) -> None:
    rows = clean_rows()
    rows["orders"][3]["customer_id"] = None
    report = run(rows, config)

    r = report.result("orders.customer_id_not_null")
    assert (report.status, r.success, r.severity, r.observed) == ("error", False, "error", 1)
    assert r.sample[0]["order_id"] == 1003 and r.sample[0]["customer_id"] is None
    # A NULL is not an orphan: referential integrity only looks at set keys.
    assert failed_rules(report) == {"orders.customer_id_not_null"}


def test_guest_share_can_be_allowed(config: QualityConfig, tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text("rules:\n  orders:\n    customer_id_not_null: {max_null_share: 0.1}\n")
    rows = clean_rows()
    rows["orders"][3]["customer_id"] = None  # 1 of 41 orders = 2.4%
    assert run(rows, QualityConfig.load(path)).result("orders.customer_id_not_null").success is True
    for order in rows["orders"][:10]:
        order["customer_id"] = None  # 10 of 41 = 24%
    r = run(rows, QualityConfig.load(path)).result("orders.customer_id_not_null")
    assert (r.success, r.observed, r.threshold) == (False, round(10 / 41, 6), "≤ 10.00%")


def test_price_outlier_against_the_products_own_history(config: QualityConfig) -> None:
    rows = clean_rows()
    rows["order_items"][5]["unit_price"] = Decimal("99999.00")
    report = run(rows, config, reference=clean_reference())

    r = report.result("order_items.unit_price_outlier")
    assert (r.success, r.severity, r.observed) == (False, "error", 1)
    assert r.sample[0]["unit_price"] == "99999.00" and r.sample[0]["reference"] == "history"
    assert "checked against the product's history" in r.detail
    assert failed_rules(report) == {"order_items.unit_price_outlier"}
    # One bad line of 123: its order is quarantined, the rest of the day is published with a warning.
    q = report.quarantine
    assert q is not None and (q.decision, q.orders, q.lines) == ("rows", 1, 3)
    assert (report.status, report.published_quality, report.day_quarantined) == ("error", "warning", False)
    assert "1 order(s) with 3 line(s) quarantined" in report.summary_line()


def test_a_huge_price_on_a_small_day_is_caught_without_history(config: QualityConfig) -> None:
    """Issue 13: 1e9 passed because one expensive product inflated the catalogue percentile."""
    rows = clean_rows(orders=3)
    rows["products"][6]["price"] = Decimal("8200000.00")  # one genuinely expensive product in the catalogue
    rows["order_items"][0]["unit_price"] = Decimal("999999999.00")  # product 1, list price 5.00
    r = run(rows, config).result("order_items.unit_price_outlier")
    assert (r.success, r.observed) == (False, 1) and r.sample[0]["reference"] == "list price"


def test_a_product_that_always_sells_at_a_high_price_is_not_an_outlier(config: QualityConfig) -> None:
    """Issue 13: a product really selling at 649.50 was quarantined against the day's list prices."""
    rows = clean_rows()
    reference = clean_reference()
    history = reference.prices.lines
    expensive = pa.table({"product_id": pa.array([7] * 30, pa.int64()),
                          "unit_price": pa.array([649.50] * 30, pa.float64())})
    reference = Reference(reference.history, PriceHistory(pa.concat_tables([history, expensive]),
                                                          reference.prices.list_prices), reference.drift)
    for line in rows["order_items"]:
        if line["product_id"] == 7:
            line["unit_price"] = Decimal("649.50")
    rows["order_items"][1]["unit_price"] = Decimal("10.99") * 3  # a 3x surcharge stays within the floor
    assert run(rows, config, reference=reference).result("order_items.unit_price_outlier").success is True


def test_a_raised_list_price_cannot_launder_a_price_outlier(tmp_path: Path) -> None:
    """Issue 13: raising two products' list prices to 1e9 made a quarantined 1e9 line valid."""
    path = tmp_path / "q.yaml"
    path.write_text("max_bad_row_share: 0.9\n")  # the two products are in many orders: see the rows, not the day
    config = QualityConfig.load(path)
    rows = clean_rows()
    rows["products"][0]["price"] = Decimal("999999999.00")
    rows["products"][1]["price"] = Decimal("999999999.00")
    target = next(line for line in rows["order_items"] if line["product_id"] == 1)
    target["unit_price"] = Decimal("999999999.00")
    for reference in (None, clean_reference()):  # a product without and with a price history
        report = run(rows, config, reference=reference)
        lp = report.result("products.list_price")
        assert (lp.success, lp.severity, lp.observed) == (False, "error", 2)
        assert report.quarantine is not None and report.quarantine.decision == "rows"
        from ecom_ml.quality.validate import check_day

        bad = check_day(to_tables(rows), day=DAY, interval_start=START, interval_end=END, history=[],
                        config=config, reference=reference).bad
        assert target["order_id"] in bad.order_ids and bad.product_ids == {1, 2}


def test_a_list_price_jump_against_the_lake_is_an_error(config: QualityConfig) -> None:
    rows = clean_rows()
    rows["products"][2]["price"] = Decimal("15.00") * 50  # product 3: 15.00 in the lake, now 750.00
    r = run(rows, config, reference=clean_reference()).result("products.list_price")
    assert (r.success, r.observed) == (False, 1)
    assert r.sample[0]["product_id"] == 3 and r.sample[0]["previous_price"] == 15.0


def test_a_negative_price_is_an_error(config: QualityConfig) -> None:
    rows = clean_rows()
    rows["order_items"][5]["unit_price"] = Decimal("-1.00")
    r = run(rows, config).result("order_items.unit_price_non_negative")
    assert (r.success, r.severity, r.observed) == (False, "error", 1)


def test_unknown_status_is_an_error(config: QualityConfig) -> None:
    rows = clean_rows()
    rows["orders"][0]["status"] = "teleported"
    report = run(rows, config)

    r = report.result("orders.status_in_set")
    assert (r.success, r.severity, r.observed) == (False, "error", 1)
    assert r.sample[0]["status"] == "teleported"
    assert failed_rules(report) == {"orders.status_in_set"}


@pytest.mark.parametrize(
    ("created", "updated", "rule"),
    [
        # neither timestamp inside [START, END): the order does not belong to this partition
        (START - timedelta(days=2), START - timedelta(days=1), "orders.in_interval"),
        (END + timedelta(hours=1), END + timedelta(hours=2), "orders.in_interval"),
        # updated before it was created
        (START + timedelta(hours=5), START + timedelta(hours=4), "orders.updated_after_created"),
    ],
)
def test_timestamps_outside_the_window_are_errors(
    config: QualityConfig, created: datetime, updated: datetime, rule: str
) -> None:
    rows = clean_rows()
    rows["orders"][7].update(created_at=created, updated_at=updated)
    report = run(rows, config)

    r = report.result(rule)
    assert (r.success, r.severity, r.observed) == (False, "error", 1)
    assert r.sample[0]["order_id"] == 1007
    assert r.sample[0]["created_at"] == created.isoformat()
    assert report.status == "error"
    if created < END:
        assert failed_rules(report) == {rule}


def test_late_changes_are_judged_against_what_is_normal_for_the_shop(config: QualityConfig) -> None:
    """Issue 13: returns weeks after the order are normal here; one old refund is not a warning."""
    rows = clean_rows()
    created = START - timedelta(days=40)
    rows["orders"][7].update(created_at=created, updated_at=START + timedelta(hours=1), status="refunded")
    history = [DayHistory(DAY - timedelta(days=d), 40, 120, 2 + d % 3) for d in range(1, 29)]
    report = run(rows, config, history=history)
    r = report.result("orders.late_changes")
    assert (r.success, r.observed) == (True, 2)
    assert "1 older than lookback_days=14" in r.detail
    assert r.threshold == "≤ 12 (3 × p90 4.0 of 28 previous days, min 10)"
    # Forty late changes on one day is unusual for a shop that sees 2-4.
    for order in rows["orders"][:40]:
        order.update(created_at=START - timedelta(days=20), updated_at=START + timedelta(hours=2), status="refunded")
    r = run(rows, config, history=history).result("orders.late_changes")
    assert (r.success, r.severity, r.observed) == (False, "warning", 41)
    assert len(r.sample) == 20


def test_late_changes_use_the_configured_share_without_history(config: QualityConfig) -> None:
    rows = clean_rows()
    for order in rows["orders"][:30]:  # 31 of 41 orders (76%) changed late: lenient without history
        order.update(created_at=START - timedelta(days=3), updated_at=START + timedelta(hours=2), status="cancelled")
    assert run(rows, config).result("orders.late_changes").success is True
    for order in rows["orders"][:36]:  # 37 of 41 (90%)
        order.update(created_at=START - timedelta(days=3), updated_at=START + timedelta(hours=2), status="cancelled")
    r = run(rows, config).result("orders.late_changes")
    assert (r.success, r.observed) == (False, 37) and "configured" in r.threshold


def test_changes_older_than_the_lake_are_counted(config: QualityConfig) -> None:
    rows = clean_rows()
    rows["orders"][7].update(created_at=START - timedelta(days=90), updated_at=START + timedelta(hours=1))
    r = run(rows, config, reference=clean_reference()).result("orders.late_changes")
    assert "1 created before the lake's first day" in r.detail


def test_orders_created_earlier_and_updated_today_are_valid(config: QualityConfig) -> None:
    rows = clean_rows()
    rows["orders"][7].update(created_at=START - timedelta(days=14), updated_at=START, status="refunded")
    report = run(rows, config)
    assert report.status == "pass", report.summary_line()


@pytest.mark.parametrize(
    ("table", "column", "value", "rule"),
    [
        ("order_items", "order_id", 123456, "order_items.order_exists"),
        ("order_items", "product_id", 777, "order_items.product_exists"),
        ("orders", "customer_id", 999, "orders.customer_exists"),
    ],
)
def test_dangling_references_are_errors(config: QualityConfig, table: str, column: str, value: int, rule: str) -> None:
    rows = clean_rows()
    rows[table][4][column] = value
    report = run(rows, config)

    r = report.result(rule)
    assert (r.success, r.severity, r.observed) == (False, "error", 1)
    assert r.sample == [json.loads(json.dumps(r.sample[0]))] and r.sample[0][column] == value
    assert failed_rules(report) == {rule}


def test_missing_column_is_a_schema_error_naming_it(config: QualityConfig) -> None:
    tables = to_tables(clean_rows())
    tables["orders"] = tables["orders"].drop_columns(["customer_id"])
    report = run(tables, config)

    r = report.result("orders.schema")
    assert (report.status, r.success, r.severity) == ("error", False, "error")
    assert r.detail == "missing column(s): customer_id"
    assert "orders.schema (missing column(s): customer_id, allowed no differences)" in report.summary_line()
    assert r.sample == [{"column": "customer_id", "problem": "missing", "expected": "int64", "actual": None}]
    # Rules that read the column are not evaluated (instead of crashing or failing twice).
    for rule in ("orders.customer_id_not_null", "orders.customer_exists"):
        assert report.result(rule).success is None
        assert "customer_id" in report.result(rule).detail
    assert failed_rules(report) == {"orders.schema"}


def test_renamed_and_retyped_columns_are_named(config: QualityConfig) -> None:
    tables = to_tables(clean_rows())
    items = tables["order_items"]
    items = items.rename_columns(["qty" if n == "quantity" else n for n in items.column_names])
    line_no = items.schema.get_field_index("line_no")
    items = items.set_column(line_no, "line_no", items.column("line_no").cast(pa.int64()))
    tables["order_items"] = items
    r = run(tables, config).result("order_items.schema")

    assert r.success is False and r.observed == 3
    assert r.detail == ("missing column(s): quantity; unexpected column(s): qty; "
                        "type mismatch: line_no is int64, expected int32")


def test_missing_table_is_a_schema_error(config: QualityConfig) -> None:
    tables = to_tables(clean_rows())
    del tables["products"]
    report = run(tables, config)
    assert report.result("products.schema").detail == "table missing from the partition"
    assert report.result("order_items.product_exists").success is None
    assert report.status == "error"


def test_volume_far_outside_the_same_weekday_band_is_a_warning(config: QualityConfig) -> None:
    report = run(clean_rows(), config, history=open_history(orders=1000, lines=3000))

    r = report.result("orders.volume_band")
    assert (report.status, r.success, r.severity, r.observed) == ("warning", False, "warning", 40)
    assert r.threshold == "[500, 2,000] orders (median 1,000 of 8 previous open Mondays)"
    assert failed_rules(report) == {"orders.volume_band", "order_items.volume_band"}
    assert "2 warning rule(s) failed: orders.volume_band (40 orders, allowed [500, 2,000]" in report.summary_line()


def test_volume_says_no_reference_instead_of_a_zero_band(config: QualityConfig) -> None:
    """Issue 13: after a closure the band was [0, 0] and every normal day was flagged."""
    history = [DayHistory(DAY - timedelta(days=d), 0 if d <= 14 else 40, 0 if d <= 14 else 120) for d in range(1, 57)]
    history = [h for h in history if h.day > DAY - timedelta(days=22)]  # 2 closed Mondays, 1 open one
    r = run(clean_rows(), config, history=history).result("orders.volume_band")
    assert (r.success, r.outcome, r.threshold) == (None, "not evaluated", "no reference")
    assert r.detail == "not evaluated: no reference, 1 open Mondays in the previous 8 weeks (need 3)"


def test_quiet_sundays_are_compared_with_sundays(config: QualityConfig) -> None:
    sunday = date(2024, 1, 14)
    history = [DayHistory(sunday - timedelta(days=d), 8 if (sunday - timedelta(days=d)).weekday() == 6 else 40,
                          24 if (sunday - timedelta(days=d)).weekday() == 6 else 120) for d in range(1, 57)]
    rows = clean_rows(orders=10)
    start = datetime(2024, 1, 14, tzinfo=UTC)
    for order in rows["orders"]:
        order["created_at"] -= timedelta(days=1)
        order["updated_at"] -= timedelta(days=1)
    report = validate_day(to_tables(rows), day=sunday, interval_start=start, interval_end=start + timedelta(days=1),
                          history=history, config=config)
    r = report.result("orders.volume_band")
    assert r.success is True and "median 8 of 8 previous open Sundays" in r.threshold


def test_a_closed_weekday_learned_from_the_data_is_not_a_warning(config: QualityConfig) -> None:
    saturday = date(2024, 1, 13)
    history = [DayHistory(saturday - timedelta(days=d), 0 if (saturday - timedelta(days=d)).weekday() == 5 else 40,
                          0 if (saturday - timedelta(days=d)).weekday() == 5 else 120) for d in range(1, 57)]
    start = datetime(2024, 1, 13, tzinfo=UTC)
    report = validate_day(_empty_tables(), day=saturday, interval_start=start, interval_end=start + timedelta(days=1),
                          history=history, config=config)
    assert report.status == "pass", report.summary_line()
    assert report.result("orders.not_empty").detail == \
        "0 orders: expected closed day (Saturdays closed in 8 of the last 8 weeks)"
    # A normally open weekday with no orders is a warning.
    friday = saturday - timedelta(days=1)
    start = datetime(2024, 1, 12, tzinfo=UTC)
    report = validate_day(_empty_tables(), day=friday, interval_start=start, interval_end=start + timedelta(days=1),
                          history=[h for h in history if h.day < friday], config=config)
    assert failed_rules(report) == {"orders.not_empty"} and report.status == "warning"


def test_a_closure_run_warns_once(config: QualityConfig) -> None:
    """The first empty open day of a holiday closure warns; the following days of the run do not."""
    history = [DayHistory(DAY - timedelta(days=d), 40, 120) for d in range(3, 57)]
    history.append(DayHistory(DAY - timedelta(days=2), 0, 0))  # the closure began on Saturday 13th
    history.append(DayHistory(DAY - timedelta(days=1), 0, 0))
    report = run(_empty_tables(), config, history=history)
    assert report.status == "pass", report.summary_line()
    assert "closure since 2024-01-13 continues" in report.result("orders.not_empty").detail


def test_announced_closures_are_expected(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text(f"closed_dates: ['{DAY.isoformat()}']\n")
    report = run(_empty_tables(), QualityConfig.load(path), history=open_history())
    assert report.status == "pass" and "listed in closed_dates" in report.result("orders.not_empty").detail


def _empty_tables() -> dict[str, pa.Table]:
    return {name: arrow_schema(name).empty_table() for name in ("orders", "order_items", "customers", "products")}


def test_empty_day_is_a_warning_by_default(config: QualityConfig) -> None:
    report = run(_empty_tables(), config)

    r = report.result("orders.not_empty")
    assert (report.status, r.success, r.severity, r.observed) == ("warning", False, "warning", 0)
    assert failed_rules(report) == {"orders.not_empty"}


def test_empty_day_is_an_error_when_configured(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text("empty_day: error\n")
    report = run(_empty_tables(), QualityConfig.load(path))
    assert report.status == "error"
    assert report.result("orders.not_empty").severity == "error"


def test_duplicate_line_share_above_threshold_is_a_warning(config: QualityConfig) -> None:
    rows = clean_rows()
    copies = []
    for line in rows["order_items"][::6]:  # 21 of 123 lines get a copy under a new line number
        copies.append({**line, "order_item_id": line["order_item_id"] + 10_000, "line_no": line["line_no"] + 10})
    rows["order_items"] += copies
    report = run(rows, config)

    r = report.result("order_items.duplicate_lines")
    assert (report.status, r.success, r.severity) == ("warning", False, "warning")
    assert r.observed == round(42 / 144, 6) and r.threshold == "≤ 5.00%"
    assert len(r.sample) == 20
    assert failed_rules(report) == {"order_items.duplicate_lines"}


def test_cancellation_share_counts_orders_created_in_the_interval(config: QualityConfig) -> None:
    rows = clean_rows()
    for order in rows["orders"][:20]:
        order["status"] = "cancelled" if order["order_id"] % 2 else "refunded"
    report = run(rows, config)

    r = report.result("orders.cancellation_share")
    # 20 of the 40 orders created today; the older cancelled order is not in the denominator.
    assert (report.status, r.success, r.severity, r.observed) == ("warning", False, "warning", 0.5)
    assert failed_rules(report) == {"orders.cancellation_share"}


def test_cancellation_share_learns_what_is_normal_for_the_shop(config: QualityConfig) -> None:
    """A shop where a quarter of the new orders are cancelled every day: 30% is not unusual there."""
    rows = clean_rows()
    for order in rows["orders"][:12]:  # 12 of 40 = 30%
        order["status"] = "cancelled"
    assert run(rows, config).result("orders.cancellation_share").success is False  # configured 25%
    history = [DayHistory(DAY - timedelta(days=d), 40, 120, 1, 9 + d % 3) for d in range(1, 29)]
    r = run(rows, config, history=history).result("orders.cancellation_share")
    assert r.success is True and r.threshold.startswith("≤ 41.25% (max of 25% and 1.5 × p90 27.5% of 28")
    for order in rows["orders"][:24]:  # 60%: unusual even here
        order["status"] = "refunded"
    assert run(rows, config, history=history).result("orders.cancellation_share").success is False


def test_naive_interval_is_rejected_with_one_line() -> None:
    from ecom_ml.quality import QualityInputError

    with pytest.raises(QualityInputError, match="interval_start=.* timezone-aware"):
        validate_day(to_tables(clean_rows()), day=DAY, interval_start=START.replace(tzinfo=None), interval_end=END,
                     history=[], config=QualityConfig.load())


# -- report formats -----------------------------------------------------------------------------


def test_markdown_has_summary_rule_table_and_samples(config: QualityConfig) -> None:
    rows = clean_rows()
    rows["order_items"][2]["quantity"] = 0
    rows["orders"][0]["status"] = "odd|value"
    md = run(rows, config).to_markdown()

    assert md.startswith(f"# Data quality: orders {DAY}\n")
    assert "**Status: ERROR** - orders 2024-01-15: 2 error rule(s) failed:" in md
    assert "| Rule | Severity | Result | Observed | Threshold | Description |" in md
    assert ("| `order_items.quantity_positive` | error | **FAIL** | 1 row(s) with quantity ≤ 0 | 0 "
            "| quantity > 0 |") in md
    assert "| `orders.order_id_unique` | error | pass |" in md
    assert md.count("\n| `") == len(config.rules)  # one table row per rule
    assert "### `order_items.quantity_positive` (error)" in md
    assert "| order_item_id | order_id | line_no | product_id | quantity | unit_price |" in md
    assert "| 3 | 1000 | 3 | 2 | 0 | 11.99 |" in md
    assert "odd\\|value" in md  # a pipe in the data does not break the table


def test_json_round_trip(config: QualityConfig) -> None:
    rows = clean_rows()
    rows["order_items"][0]["quantity"] = -5
    rows["orders"][2]["created_at"] = START - timedelta(days=30)
    report = run(rows, config, history=steady_history(3))

    text = report.to_json()
    again = QualityReport.from_json(text)
    assert again == report
    assert again.to_json() == text
    data = json.loads(text)
    assert data["status"] == "error" and data["summary"] == report.summary_line()
    # Created today: 39 orders (one was moved 30 days back) with 117 lines; 2 older orders changed.
    assert report.history_entry() == DayHistory(DAY, 39, 117, 2)


def test_unreadable_report_is_a_one_line_error() -> None:
    from ecom_ml.quality import QualityReportError

    with pytest.raises(QualityReportError, match="^quality report: not JSON"):
        QualityReport.from_json("{nope")


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [unclosed\n", r"not valid YAML at line 2"),
        ("empty_day: maybe\n", r"empty_day: expected 'error' or 'warning', got 'maybe'"),
        ("lookback: 3\n", r"unknown key 'lookback' \(known here: lookback_days, "),
        ("rules:\n  orders:\n    volume_band: {lo: 0.1}\n", r"unknown key 'rules.orders.volume_band.lo'"),
        ("rules:\n  orders:\n    volume_band: {low: many}\n", r"rules.orders.volume_band.low: expected a number"),
        ("rules:\n  orders:\n    volume_band: {low: 3.0}\n", r"low \(3.0\) > high \(2.0\)"),
        ("rules:\n  orders:\n    cancellation_share: {max_share: 1.5}\n", r"max_share: expected a share in \[0, 1\]"),
        ("rules:\n  order_items:\n    quantity_positive: {severity: fatal}\n",
         r"quantity_positive.severity: expected 'error' or 'warning'"),
        ("- just\n- a list\n", r"top level: expected a mapping"),
    ],
)
def test_bad_config_file_is_a_one_line_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "quality.yaml"
    path.write_text(text)
    with pytest.raises(QualityConfigError, match=message) as err:
        QualityConfig.load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_missing_config_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(QualityConfigError, match=r"quality config .*nope.yaml: no such file$"):
        QualityConfig.load(tmp_path / "nope.yaml")


def test_config_overrides_merge_over_the_packaged_defaults(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text("lookback_days: 30\nrules:\n  orders:\n    volume_band: {severity: error, low: 0.8}\n")
    cfg = QualityConfig.load(path)
    assert cfg.lookback_days == 30 and cfg.source == str(path)
    assert cfg.rule("orders.volume_band").severity == "error"
    assert dict(cfg.rule("orders.volume_band").params) == {
        "low": 0.8, "high": 2.0, "weeks": 8, "min_reference_days": 3, "closed_share": 0.75,
    }
    assert cfg.rules.keys() == QualityConfig.load().rules.keys()


def test_packaged_defaults_follow_the_severity_policy(config: QualityConfig) -> None:
    warnings = {name for name, rule in config.rules.items() if rule.severity == "warning"}
    drift = {name for name in config.rules if name.startswith("drift.")}
    assert len(drift) == 7
    assert warnings == {"orders.not_empty", "orders.volume_band", "orders.cancellation_share", "orders.late_changes",
                        "order_items.duplicate_lines", "order_items.volume_band"} | drift


# -- scale --------------------------------------------------------------------------------------


def _money(cents: np.ndarray) -> pa.Array:
    return pa.array(cents / 100.0).cast(pa.decimal128(12, 2))


def realistic_day(lines: int = 200_000, seed: int = 0) -> dict[str, pa.Table]:
    """A day of about ``lines`` order lines built column-wise (the shape of the generator's days)."""
    rng = np.random.default_rng(seed)
    orders = lines // 4
    order_ids = np.arange(1, orders + 1, dtype=np.int64)
    created_us = int(START.timestamp() * 1e6) + rng.integers(0, 86_400_000_000, orders)
    statuses = np.array(["placed", "paid", "shipped", "delivered", "cancelled", "refunded"])
    n_customers, n_products = orders // 3, 5_000
    per_order = rng.integers(1, 8, orders)
    item_order = np.repeat(order_ids, per_order)
    n = len(item_order)
    starts = np.repeat(np.cumsum(per_order) - per_order, per_order)
    line_no = (np.arange(n) - starts + 1).astype(np.int32)
    product_price_cents = rng.integers(50, 20_000, n_products)
    item_product = rng.integers(1, n_products + 1, n)
    ts = pa.timestamp("us", tz="UTC")
    tables = {
        "orders": pa.table({
            "order_id": order_ids,
            "external_ref": pa.array([f"INV{i}" for i in order_ids]),
            "customer_id": rng.integers(1, n_customers + 1, orders),
            "status": statuses[rng.choice(6, orders, p=[0.2, 0.3, 0.2, 0.25, 0.03, 0.02])],
            "currency": np.full(orders, "GBP"),
            "country": np.full(orders, "GB"),
            "created_at": pa.array(created_us, ts),
            "updated_at": pa.array(created_us + rng.integers(0, 3_600_000_000, orders), ts),
        }),
        "order_items": pa.table({
            "order_item_id": np.arange(1, n + 1, dtype=np.int64),
            "order_id": item_order,
            "line_no": line_no,
            "product_id": item_product.astype(np.int64),
            "quantity": rng.integers(1, 10, n).astype(np.int32),
            "unit_price": _money(product_price_cents[item_product - 1]),
        }),
        "customers": pa.table({
            "customer_id": np.arange(1, n_customers + 1, dtype=np.int64),
            "external_ref": pa.array([f"C{i}" for i in range(1, n_customers + 1)]),
            "country": np.full(n_customers, "GB"),
            "created_at": pa.array(np.full(n_customers, int(START.timestamp() * 1e6) - 10**12), ts),
            "updated_at": pa.array(np.full(n_customers, int(START.timestamp() * 1e6) - 10**11), ts),
        }),
        "products": pa.table({
            "product_id": np.arange(1, n_products + 1, dtype=np.int64),
            "sku": pa.array([f"SKU{i}" for i in range(1, n_products + 1)]),
            "name": pa.array([f"P{i}" for i in range(1, n_products + 1)]),
            "category": np.full(n_products, "home"),
            "price": _money(product_price_cents),
            "created_at": pa.array(np.full(n_products, int(START.timestamp() * 1e6) - 10**12), ts),
            "updated_at": pa.array(np.full(n_products, int(START.timestamp() * 1e6) - 10**11), ts),
        }),
    }
    return {name: t.cast(arrow_schema(name)) for name, t in tables.items()}


def test_realistic_day_of_200k_lines_completes(config: QualityConfig) -> None:
    tables = realistic_day(200_000)
    items = tables["order_items"]
    # three faults among 200k lines: they must be found and sampled, not drowned
    quantity = items.column("quantity").to_numpy().copy()
    quantity[[10, 50_000, 150_000]] = -2
    tables["order_items"] = items.set_column(items.schema.get_field_index("quantity"), "quantity",
                                             pa.array(quantity, pa.int32()))
    report = run(tables, config, history=steady_history(14, orders=tables["orders"].num_rows,
                                                         lines=tables["order_items"].num_rows))

    assert report.row_counts["order_items"] == tables["order_items"].num_rows > 150_000
    assert failed_rules(report) == {"order_items.quantity_positive"}, report.summary_line()
    r = report.result("order_items.quantity_positive")
    assert r.observed == 3 and [s["order_item_id"] for s in r.sample] == [11, 50_001, 150_001]


def test_config_is_not_mutated_by_a_run(config: QualityConfig) -> None:
    before = copy.deepcopy(dict(config.rules))
    run(clean_rows(), config)
    assert dict(config.rules) == before


def test_refunds_beyond_the_ordered_quantity_quarantine_their_order(config: QualityConfig) -> None:
    """Refunds of one line adding up to more than it ordered are a bad row: its order goes, the day stays."""
    from ecom_ml.quality.quarantine import split

    rows = clean_rows()
    line = next(i for i in rows["order_items"] if i["order_id"] == 1010 and i["quantity"] == 2)
    rows["refund_lines"] += [
        {"refund_line_id": 20, "order_item_id": line["order_item_id"], "quantity": 2,
         "refunded_at": START + timedelta(hours=3), "source_ref": None, "source_line": None},
        {"refund_line_id": 21, "order_item_id": line["order_item_id"], "quantity": 1,
         "refunded_at": START + timedelta(hours=4), "source_ref": None, "source_line": None},
    ]
    tables = to_tables(rows)
    checked = check_day(tables, day=DAY, interval_start=START, interval_end=END, history=open_history(),
                        config=config, reference=clean_reference())
    rule = checked.report.result("refund_lines.within_ordered")
    assert rule.success is False and rule.observed == 2
    assert checked.report.quarantine is not None and checked.report.quarantine.decision == "rows"
    assert checked.bad.order_ids == frozenset({1010})
    kept, bad = split(tables, checked.bad)
    assert set(bad["refund_lines"].column("refund_line_id").to_pylist()) == {20, 21}
    assert kept["refund_lines"].num_rows == 4


def test_a_partition_from_before_line_level_refunds_still_passes(config: QualityConfig) -> None:
    """An older lake's partition has no refund_lines table: its rules are not evaluated, the day passes."""
    rows = clean_rows()
    del rows["refund_lines"]
    report = run(rows, config, history=open_history(), reference=clean_reference())
    assert report.status == "pass", report.summary_line()
    skipped = [r for r in report.results if r.table == "refund_lines"]
    assert skipped and all(r.success is None for r in skipped)
    assert "before it existed" in report.result("refund_lines.schema").detail
