"""A connection lost in the middle of an extraction (issue 12, item 8): one line naming the database
(password masked), the same form as a failed connect, and a retry that gives the same files.

Both faults are real: the extracting backend is terminated with ``pg_terminate_backend`` from another
session, and a whole server (one of its own, so the shared one is not disturbed) is stopped in
``immediate`` mode, which is what a crash or an OOM kill of PostgreSQL looks like to a client. The
extraction is held inside its ``order_items`` COPY by a lock another session holds, so the fault
lands mid-query every time rather than by luck of timing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import psycopg2
import pytest

from ecom_ml import alerts
from ecom_ml import settings as settings_mod
from ecom_ml.db import redact_url, server
from ecom_ml.db.migrate import migrate
from ecom_ml.generator import GeneratorConfig, generate, parse_injections
from ecom_ml.ingest.extract import SourceUnavailableError
from ecom_ml.ingest.tasks import DATASET, IngestConfig, extract_to_raw
from ecom_ml.lake import RAW, Lake
from ecom_ml.localhost import free_port

DAY = date(2024, 1, 2)
START = datetime(DAY.year, DAY.month, DAY.day, tzinfo=timezone.utc)
END = START + timedelta(days=1)


def _fill(url: str) -> None:
    generate(url, GeneratorConfig(start=DAY - timedelta(days=1), days=3, orders_per_day=200, seed=5, customers=None,
                                  products=None, injections=parse_injections("")), progress=False)


def _files(lake_root: Path) -> dict[Path, bytes]:
    lake = Lake(lake_root.as_uri())
    folder = Path(lake.partition(RAW, DATASET, DAY).path)
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.parquet"))}


def _extract_held_in_copy(url: str, lake_root: Path, fault) -> BaseException | None:
    """Run ``extract_to_raw`` while another session locks ``order_items``; once the extraction waits
    inside that COPY, call ``fault(pid)``; return what the extraction raised."""
    holder = psycopg2.connect(url)
    holder.cursor().execute("LOCK TABLE order_items IN ACCESS EXCLUSIVE MODE")
    raised: list[BaseException] = []

    def work() -> None:
        try:
            extract_to_raw(IngestConfig(lake_root.as_uri(), url), START, END)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        pid = None
        while pid is None and time.monotonic() < deadline:
            with psycopg2.connect(url) as probe, probe.cursor() as cur:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'ecom-ml extract' "
                            "AND wait_event_type = 'Lock' AND query LIKE 'COPY%%order_items%%'")
                row = cur.fetchone()
            probe.close()
            pid = row[0] if row else None
            time.sleep(0.05)
        assert pid is not None, "the extraction never reached its order_items COPY"
        fault(pid)
    finally:
        try:
            holder.rollback()
            holder.close()
        except psycopg2.Error:
            pass  # the server itself was stopped
        worker.join(60)
    assert not worker.is_alive()
    return raised[0] if raised else None


def _assert_one_line_naming(exc: BaseException | None, url: str) -> str:
    assert isinstance(exc, SourceUnavailableError), repr(exc)
    message = str(exc)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"orders database {redact_url(url)} lost the connection while extracting order_items: ")
    password = psycopg2.extensions.parse_dsn(url).get("password")
    if password:
        assert password not in message
    # The alert names the database, as it does for a failed connect.
    ti = type("TI", (), {"dag_id": "orders_ingest", "task_id": "extract", "run_id": "r1"})()
    line = alerts.alert_from_context({"task_instance": ti, "exception": exc, "params": {"day": DAY.isoformat()}}).line()
    assert line.startswith(f"orders_ingest {DAY}: task extract failed: orders database {redact_url(url)} lost")
    return message


def test_a_backend_terminated_mid_copy_is_one_line_and_the_retry_gives_the_same_files(orders_db, tmp_path):
    _fill(orders_db)
    for name in ("clean", "faulted"):
        Lake((tmp_path / name).as_uri()).init()
    extract_to_raw(IngestConfig((tmp_path / "clean").as_uri(), orders_db), START, END)

    def terminate(pid: int) -> None:
        with psycopg2.connect(orders_db) as admin, admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert cur.fetchone()[0] is True
        admin.close()

    exc = _extract_held_in_copy(orders_db, tmp_path / "faulted", terminate)
    _assert_one_line_naming(exc, orders_db)
    assert Lake((tmp_path / "faulted").as_uri()).days(RAW, DATASET) == [], "nothing half-written"

    extract_to_raw(IngestConfig((tmp_path / "faulted").as_uri(), orders_db), START, END)  # the retry
    clean = _files(tmp_path / "clean")
    assert clean and _files(tmp_path / "faulted") == clean


@pytest.fixture
def own_server(tmp_path: Path):
    cfg = replace(settings_mod.load(), home=tmp_path / "home", pg_port=free_port())
    server.start(cfg)
    yield cfg
    server.stop(cfg)


def test_a_server_stopped_mid_copy_is_one_line_and_the_retry_gives_the_same_files(own_server, tmp_path):
    url = own_server.orders_db_url
    migrate(url)
    _fill(url)
    for name in ("clean", "faulted"):
        Lake((tmp_path / name).as_uri()).init()
    extract_to_raw(IngestConfig((tmp_path / "clean").as_uri(), url), START, END)

    def crash(_pid: int) -> None:
        done = server._pg("pg_ctl", ["-D", str(own_server.pgdata), "-m", "immediate", "-w", "stop"])
        assert done.returncode == 0, done.stderr

    exc = _extract_held_in_copy(url, tmp_path / "faulted", crash)
    _assert_one_line_naming(exc, url)
    assert Lake((tmp_path / "faulted").as_uri()).days(RAW, DATASET) == []

    server.start(own_server)  # the server is back (crash recovery), the task retries
    extract_to_raw(IngestConfig((tmp_path / "faulted").as_uri(), url), START, END)
    clean = _files(tmp_path / "clean")
    assert clean and _files(tmp_path / "faulted") == clean
