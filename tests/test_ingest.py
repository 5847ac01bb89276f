"""orders_ingest end to end: real orders DB, real Airflow (`dag.test()`), real lake on disk."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import psycopg2
import pytest

from ecom_ml.generator import GeneratorConfig, generate, parse_injections
from ecom_ml.ingest.current import current_orders
from ecom_ml.ingest.tasks import DATASET, REPORT_JSON, REPORT_MD
from ecom_ml.lake import QUARANTINE, RAW, VALIDATED, Lake

START = date(2024, 1, 1)


def _generate(url: str, start: date, days: int, inject: str = "", per_day: int = 300) -> None:
    generate(
        url,
        GeneratorConfig(start=start, days=days, orders_per_day=per_day, seed=11, customers=None, products=None,
                        injections=parse_injections(inject)),
        progress=False,
    )


@pytest.fixture
def ingest(orders_db, tmp_path, monkeypatch):
    """Point the DAG at a fresh orders DB and a lake of its own; return (dag, lake, url)."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("AIRFLOW_CONN_ORDERS_DB", orders_db)
    monkeypatch.setenv("ECOM_LAKE_ROOT", (tmp_path / "lake").as_uri())
    Lake((tmp_path / "lake").as_uri()).init()  # lake roots are created on purpose, never by a write
    monkeypatch.setenv("ECOM_TASK_RETRIES", "1")
    monkeypatch.setenv("ECOM_RETRY_DELAY_SECONDS", "1")
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags"))
    assert bag.import_errors == {}
    return bag.get_dag("orders_ingest"), Lake((tmp_path / "lake").as_uri()), orders_db


def run_day(dag, day: date):
    """A manual run's data interval is the day that ends at its logical date, so day D runs at D+1."""
    end = day + timedelta(days=1)
    return dag.test(logical_date=datetime(end.year, end.month, end.day, tzinfo=timezone.utc))


def _task_states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _db_count(url: str, day: date) -> tuple[int, int]:
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            """SELECT count(DISTINCT o.order_id), count(i.order_item_id) FROM orders o
               LEFT JOIN order_items i USING (order_id)
               WHERE (o.created_at >= %(s)s AND o.created_at < %(e)s) OR (o.updated_at >= %(s)s AND o.updated_at < %(e)s)""",
            {"s": start, "e": start + timedelta(days=1)},
        )
        return cur.fetchone()


def test_a_day_is_extracted_checked_and_published(ingest):
    dag, lake, url = ingest
    _generate(url, START, 4)
    day = START + timedelta(days=2)
    run = run_day(dag, day)
    assert str(run.state) == "success", _task_states(run)
    manifest = lake.manifest(VALIDATED, DATASET, day)
    assert manifest is not None and manifest.extra["quality"] in ("pass", "warning")
    assert (manifest.rows["orders"], manifest.rows["order_items"]) == _db_count(url, day)
    tables = lake.read(VALIDATED, DATASET, day)
    assert str(tables["orders"].schema.field("created_at").type) == "timestamp[us, tz=UTC]"
    assert str(tables["order_items"].schema.field("unit_price").type) == "decimal128(12, 2)"
    partition = Path(lake.partition(VALIDATED, DATASET, day).path)
    assert (partition / REPORT_JSON).exists() and "| rule" in (partition / REPORT_MD).read_text().lower()
    assert lake.manifest(QUARANTINE, DATASET, day) is None

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = (
            session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "orders_validated").all()
        )
        extras = [e.extra for e in events if e.extra.get("day") == day.isoformat()]
    assert extras and extras[-1]["rows"]["orders"] == manifest.rows["orders"]


def test_rerunning_a_day_gives_byte_identical_files(ingest):
    dag, lake, url = ingest
    _generate(url, START, 3)
    day = START + timedelta(days=1)
    assert str(run_day(dag, day).state) == "success"
    folder = Path(lake.partition(VALIDATED, DATASET, day).path)
    first = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*.parquet")}
    assert str(run_day(dag, day).state) == "success"
    second = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*.parquet")}
    assert first and first == second


def test_a_late_cancellation_reaches_the_lake(ingest):
    """An order placed on day D and cancelled/refunded days later, as the nightly runs see it."""
    dag, lake, url = ingest
    _generate(url, START, 6)
    for offset in range(6):
        assert str(run_day(dag, START + timedelta(days=offset)).state) == "success"
    before = current_orders(lake, START, START + timedelta(days=5))["orders"].to_pandas()
    # The next nights arrive: the generator continues the world and changes past orders.
    _generate(url, START + timedelta(days=6), 8)
    for offset in range(6, 14):
        assert str(run_day(dag, START + timedelta(days=offset)).state) == "success"
    after = current_orders(lake, START, START + timedelta(days=13))["orders"].to_pandas()
    merged = before.merge(after, on="order_id", suffixes=("_then", "_now"))
    changed = merged[(merged.status_then != merged.status_now) & merged.status_now.isin(["cancelled", "refunded"])]
    assert len(changed) > 0, "no order placed in the first nights was cancelled or refunded later"
    lag = (changed.updated_at_now - changed.created_at_then).dt.days
    assert lag.max() <= 14 and (changed.updated_at_now > changed.updated_at_then).all()
    # The lake agrees with the database on the final state of each of those orders.
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT order_id, status FROM orders WHERE order_id = ANY(%s)", (changed.order_id.tolist(),))
        assert dict(cur.fetchall()) == dict(zip(changed.order_id, changed.status_now))


def test_a_bad_day_is_quarantined_and_fails_with_a_readable_reason(ingest, caplog):
    dag, lake, url = ingest
    _generate(url, START, 3, inject="negative_quantity=0.05")
    day = START + timedelta(days=1)
    with caplog.at_level(logging.ERROR):
        run = run_day(dag, day)
    states = _task_states(run)
    assert states["check_quality"] == "failed" and states["publish"] == "upstream_failed"
    assert lake.manifest(VALIDATED, DATASET, day) is None, "a failing day must not be published"
    assert lake.manifest(QUARANTINE, DATASET, day) is not None
    report = (Path(lake.partition(QUARANTINE, DATASET, day).path) / REPORT_MD).read_text()
    assert "quantity" in report
    alerts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT")]
    assert any("orders_ingest 2024-01-02: task check_quality failed" in a and "quantity" in a for a in alerts), alerts


def test_an_empty_day_publishes_an_empty_partition_with_a_warning(ingest):
    dag, lake, url = ingest
    day = START + timedelta(days=1)
    _generate(url, START, 3, inject=f"empty_day={day.isoformat()}")
    run = run_day(dag, day)
    assert str(run.state) == "success", _task_states(run)
    manifest = lake.manifest(VALIDATED, DATASET, day)
    assert manifest.extra["quality"] == "warning"
    orders = lake.read(VALIDATED, DATASET, day)["orders"].to_pandas()
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    assert (orders.created_at >= start).sum() == 0, "no order may be created on the empty day"
    # Earlier orders that changed status that day are still captured (change capture by updated_at).
    assert (orders.updated_at >= start).all()


def test_a_renamed_source_column_fails_clearly_and_publishes_nothing(ingest, caplog):
    dag, lake, url = ingest
    _generate(url, START, 2)
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE orders RENAME COLUMN status TO order_state")
    with caplog.at_level(logging.ERROR):
        run = run_day(dag, START)
    assert _task_states(run)["extract"] == "failed"
    assert lake.days(RAW, DATASET) == [] and lake.days(VALIDATED, DATASET) == []
    alerts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT")]
    assert any("orders.status missing (renamed or dropped in the source?)" in a for a in alerts), alerts


def test_an_unreachable_database_is_retried_then_fails_clearly(ingest, monkeypatch, caplog):
    dag, lake, _ = ingest
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_ORDERS_DB", f"postgresql://postgres@127.0.0.1:{dead_port}/orders")
    with caplog.at_level(logging.INFO):
        run = run_day(dag, START)
    extract = next(ti for ti in run.get_task_instances() if ti.task_id == "extract")
    assert str(extract.state) == "failed"
    assert extract.try_number == 2, "the task must be retried (ECOM_TASK_RETRIES=1) before it fails"
    alerts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT")]
    assert any(f"127.0.0.1:{dead_port}/orders is unreachable" in a for a in alerts), alerts
    assert lake.days(RAW, DATASET) == []


def test_a_day_without_any_order_or_change_publishes_an_empty_partition(ingest):
    """The shop was closed and nothing changed: zero rows everywhere, a warning, no crash."""
    dag, lake, url = ingest
    _generate(url, START, 2)
    quiet = START + timedelta(days=40)
    run = run_day(dag, quiet)
    assert str(run.state) == "success", _task_states(run)
    manifest = lake.manifest(VALIDATED, DATASET, quiet)
    assert manifest.rows == {"customers": 0, "order_items": 0, "orders": 0, "products": 0, "refund_lines": 0}
    assert manifest.extra["quality"] == "warning"
    tables = lake.read(VALIDATED, DATASET, quiet)
    assert str(tables["orders"].schema.field("created_at").type) == "timestamp[us, tz=UTC]"


def test_a_manual_run_processes_the_day_in_its_param(ingest):
    """What a user triggers from the UI with {"day": …}: that day, whatever the run's own interval."""
    dag, lake, url = ingest
    _generate(url, START, 3)
    day = START + timedelta(days=2)
    run = dag.test(run_conf={"day": day.isoformat()})
    assert str(run.state) == "success", _task_states(run)
    assert lake.days(VALIDATED, DATASET) == [day]
    assert (lake.manifest(VALIDATED, DATASET, day).rows["orders"], lake.manifest(
        VALIDATED, DATASET, day).rows["order_items"]) == _db_count(url, day)


def test_late_line_refunds_reach_the_lake_once(orders_db, tmp_path):
    """Refunds recorded days after the order's day arrive with the partition of the day they happened;
    the lake's current view holds exactly the database's refunds, also after a day is extracted again.
    (The pipeline's task functions directly, without the DAG: the DAG runs them in the tests above.)"""
    from ecom_ml.ingest.tasks import IngestConfig, check_quality, extract_to_raw, publish

    lake_root = (tmp_path / "lake").as_uri()
    Lake(lake_root).init()
    cfg = IngestConfig(lake_root=lake_root, orders_url=orders_db)

    def night(day: date) -> None:
        start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        extract_to_raw(cfg, start, start + timedelta(days=1))
        publish(cfg, check_quality(cfg, start, start + timedelta(days=1)))

    _generate(orders_db, START, 6)
    for offset in range(6):
        night(START + timedelta(days=offset))
    lake = Lake(lake_root)
    early = current_orders(lake, START, START + timedelta(days=5))["refund_lines"]
    _generate(orders_db, START + timedelta(days=6), 10)  # the next nights: refunds of the first days arrive
    for offset in range(6, 16):
        night(START + timedelta(days=offset))
    night(START + timedelta(days=9))  # a re-run of one night changes nothing
    now = current_orders(lake, START, START + timedelta(days=15))
    with psycopg2.connect(orders_db) as conn, conn.cursor() as cur:
        cur.execute("""SELECT f.refund_line_id, f.order_item_id, f.quantity FROM refund_lines f
                       JOIN order_items i USING (order_item_id) JOIN orders o USING (order_id)
                       WHERE o.created_at < %s ORDER BY 1""",
                    (datetime(2024, 1, 17, tzinfo=timezone.utc),))
        in_db = cur.fetchall()
        cur.execute("""SELECT count(*) FROM refund_lines f JOIN order_items i USING (order_item_id)
                       JOIN orders o USING (order_id) WHERE o.created_at < %s AND f.refunded_at >= %s""",
                    (datetime(2024, 1, 7, tzinfo=timezone.utc), datetime(2024, 1, 7, tzinfo=timezone.utc)))
        (late,) = cur.fetchone()
    refunds = now["refund_lines"]
    in_lake = sorted(zip(refunds.column("refund_line_id").to_pylist(), refunds.column("order_item_id").to_pylist(),
                         refunds.column("quantity").to_pylist(), strict=True))
    assert late > 0 and in_lake == in_db  # every refund once, the late ones included
    assert early.num_rows < len(in_db)
    assert set(refunds.column("order_item_id").to_pylist()) <= set(now["order_items"].column("order_item_id").to_pylist())
