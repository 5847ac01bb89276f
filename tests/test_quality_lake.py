"""Row-level quarantine, withdrawal and the history-based rules through the orders_ingest task functions.

Real PostgreSQL (the generator writes a throwaway orders DB), a real lake on disk, and the exact
functions the DAG's tasks call (``extract_to_raw`` -> ``check_quality`` -> ``publish``); the
scheduler is left out because what is decided here does not depend on it (tests/test_ingest.py runs
the same steps through ``dag.test()``).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import psycopg2
import pytest

from ecom_ml.generator import GeneratorConfig, generate, parse_injections
from ecom_ml.ingest.current import current_orders
from ecom_ml.ingest.tasks import (
    DATASET,
    REPORT_JSON,
    IngestConfig,
    QualityGateFailed,
    check_quality,
    extract_to_raw,
    publish,
)
from ecom_ml.lake import QUARANTINE, RAW, VALIDATED, Lake
from ecom_ml.quality import QualityReport
from ecom_ml.quality.quarantine import IDS_DOCUMENT

START = date(2024, 1, 1)


def _generate(url: str, start: date, days: int, inject: str = "", per_day: int = 300) -> None:
    generate(url, GeneratorConfig(start=start, days=days, orders_per_day=per_day, seed=11, customers=None,
                                  products=None, injections=parse_injections(inject)), progress=False)


def _interval(day: date) -> tuple[datetime, datetime]:
    begin = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return begin, begin + timedelta(days=1)


def run_day(cfg: IngestConfig, day: date) -> dict:
    """One day as the DAG runs it; returns check_quality's result, or {"decision": "day", "error": ...}."""
    extract_to_raw(cfg, *_interval(day))
    try:
        checked = check_quality(cfg, *_interval(day))
    except QualityGateFailed as exc:
        return {"decision": "day", "error": str(exc)}
    publish(cfg, checked)
    return checked


def _report(lake: Lake, day: date) -> QualityReport:
    return QualityReport.from_json((Path(lake.partition(RAW, DATASET, day).path) / REPORT_JSON).read_text())


def _files(lake: Lake, zone: str, day: date) -> dict[str, bytes]:
    folder = Path(lake.partition(zone, DATASET, day).path)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def lake_cfg(orders_db: str, tmp_path: Path) -> tuple[IngestConfig, Lake, str]:
    root = (tmp_path / "lake").as_uri()
    Lake(root).init()
    return IngestConfig(lake_root=root, orders_url=orders_db), Lake(root), orders_db


def test_injected_faults_are_caught_and_only_their_orders_quarantined(lake_cfg) -> None:
    cfg, lake, url = lake_cfg
    _generate(url, START, 10)
    _generate(url, START + timedelta(days=10), 1,
              inject="null_customer=0.01,negative_quantity=0.001,duplicate_items=0.001,price_outlier=0.002")
    for offset in range(10):
        checked = run_day(cfg, START + timedelta(days=offset))
        assert checked["decision"] == "none", checked.get("summary")
    bad_day = START + timedelta(days=10)
    checked = run_day(cfg, bad_day)
    report = _report(lake, bad_day)
    assert checked["decision"] == "rows", report.summary_line()
    for rule in ("orders.customer_id_not_null", "order_items.quantity_positive", "order_items.order_line_unique",
                 "order_items.unit_price_outlier"):
        r = report.result(rule)
        assert (r.success, r.severity) == (False, "error"), (rule, r.detail)
    # Training never sees a quarantined row: none of the quarantined orders is in the validated lake.
    quarantined = lake.read(QUARANTINE, DATASET, bad_day)
    validated = lake.read(VALIDATED, DATASET, bad_day)
    bad_ids = set(quarantined["orders"].column("order_id").to_pylist())
    assert bad_ids and not bad_ids & set(validated["orders"].column("order_id").to_pylist())
    assert not bad_ids & set(validated["order_items"].column("order_id").to_pylist())
    # Whole orders: every line of a quarantined order is in quarantine.
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM order_items WHERE order_id = ANY(%s)", (sorted(bad_ids),))
        assert cur.fetchone()[0] == quarantined["order_items"].num_rows
    validated_items = validated["order_items"].to_pandas()
    assert (validated_items.quantity > 0).all()
    assert validated["orders"].column("customer_id").null_count == 0
    manifest = lake.manifest(VALIDATED, DATASET, bad_day)
    assert manifest.extra["quality"] == "warning" and manifest.extra["quarantined_rows"] is True
    assert report.quarantine.orders == len(bad_ids)
    # The Models view tells a day published without its bad rows from a quarantined one.
    from ecom_ml.ui.models_data import quality_days

    newest = quality_days(lake)[0]
    assert (newest.day, newest.published) == (bad_day.isoformat(), "validated, rows quarantined")
    # Re-running the day gives byte-identical validated and quarantined files.
    before = (_files(lake, VALIDATED, bad_day), _files(lake, QUARANTINE, bad_day))
    assert run_day(cfg, bad_day)["decision"] == "rows"
    assert (_files(lake, VALIDATED, bad_day), _files(lake, QUARANTINE, bad_day)) == before
    assert IDS_DOCUMENT in before[1]


def test_a_validated_day_that_fails_on_rerun_is_withdrawn(lake_cfg) -> None:
    """Issue 13: the old validated manifest stayed, so the day was both validated and quarantined."""
    cfg, lake, url = lake_cfg
    _generate(url, START, 3)
    day = START + timedelta(days=1)
    assert run_day(cfg, day)["decision"] == "none"
    assert lake.manifest(VALIDATED, DATASET, day) is not None
    begin, end = _interval(day)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE orders SET customer_id = NULL WHERE created_at >= %s AND created_at < %s", (begin, end))
    result = run_day(cfg, day)
    assert result["decision"] == "day"
    # The partition also holds older orders changed that day, so not every order is bad - but far
    # more than max_bad_row_share of them.
    assert "orders.customer_id_not_null" in result["error"] and "more than max_bad_row_share" in result["error"]
    assert lake.manifest(VALIDATED, DATASET, day) is None
    assert not Path(lake.partition(VALIDATED, DATASET, day).path).exists()
    assert lake.manifest(QUARANTINE, DATASET, day).extra["scope"] == "day"
    assert day not in lake.days(VALIDATED, DATASET)
    assert current_orders(lake, START, START + timedelta(days=2))["orders"].num_rows == 0


def test_a_day_whose_every_row_is_bad_publishes_nothing(lake_cfg) -> None:
    cfg, lake, url = lake_cfg
    _generate(url, START, 2)
    begin, end = _interval(START)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE order_items SET quantity = -1 WHERE order_id IN "
                    "(SELECT order_id FROM orders WHERE created_at >= %s AND created_at < %s)", (begin, end))
    result = run_day(cfg, START)
    assert result["decision"] == "day" and "every order of the day is bad" in result["error"]
    assert result["error"].endswith(f"report: {lake.partition(QUARANTINE, DATASET, START) / 'quality_report.md'}")
    assert lake.days(VALIDATED, DATASET) == []
    assert lake.read(QUARANTINE, DATASET, START)["order_items"].num_rows > 0


def test_a_day_with_few_bad_rows_that_is_fixed_leaves_quarantine(lake_cfg) -> None:
    cfg, lake, url = lake_cfg
    _generate(url, START, 2)
    begin, end = _interval(START)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT min(order_item_id) FROM order_items JOIN orders USING (order_id) "
                    "WHERE created_at >= %s AND created_at < %s", (begin, end))
        item = cur.fetchone()[0]
        cur.execute("UPDATE order_items SET quantity = 0 WHERE order_item_id = %s", (item,))
    assert run_day(cfg, START)["decision"] == "rows"
    assert lake.manifest(QUARANTINE, DATASET, START).extra["scope"] == "rows"
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE order_items SET quantity = 1 WHERE order_item_id = %s", (item,))
    assert run_day(cfg, START)["decision"] == "none"
    assert lake.manifest(QUARANTINE, DATASET, START) is None
    assert lake.manifest(VALIDATED, DATASET, START).extra["quality"] in ("pass", "warning")


def test_normal_generated_days_are_not_flagged(lake_cfg) -> None:
    """Four weeks of clean generated days, the demo's shape: no error, no quarantine, warnings rare."""
    cfg, lake, url = lake_cfg
    _generate(url, START, 28, per_day=400)
    warnings = []
    for offset in range(28):
        day = START + timedelta(days=offset)
        checked = run_day(cfg, day)
        assert checked["decision"] == "none", checked.get("summary") or checked.get("error")
        if checked["status"] != "pass":
            warnings.append(checked["summary"])
    assert len(warnings) <= 2, warnings
    # The history-based rules did run on the later days.
    last = _report(lake, START + timedelta(days=27))
    assert last.result("orders.volume_band").success is True
    assert last.result("drift.unit_price").success is True
    assert last.result("order_items.unit_price_outlier").success is True
    assert "against the product's history" in last.result("order_items.unit_price_outlier").detail
