"""Quality alerts through real Airflow runs (`dag.test()`) to real local receivers (SMTP and a webhook).

A day with only warnings sends nothing; a day published without more of its rows than
``alert_bad_row_share`` sends one message naming the rule, the observed value, the threshold and the
report, as a whole quarantined day does (tests/test_alerts.py).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from test_alerts import receivers  # noqa: F401 - the SMTP + webhook receivers fixture

from ecom_ml.generator import GeneratorConfig, generate, parse_injections
from ecom_ml.ingest.tasks import DATASET
from ecom_ml.lake import QUARANTINE, VALIDATED, Lake

START = date(2024, 1, 1)


@pytest.fixture
def ingest(orders_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("AIRFLOW_CONN_ORDERS_DB", orders_db)
    monkeypatch.setenv("ECOM_LAKE_ROOT", (tmp_path / "lake").as_uri())
    Lake((tmp_path / "lake").as_uri()).init()
    monkeypatch.setenv("ECOM_TASK_RETRIES", "0")
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags"))
    return bag.get_dag("orders_ingest"), Lake((tmp_path / "lake").as_uri()), orders_db


def _generate(url: str, days: int, inject: str) -> None:
    generate(url, GeneratorConfig(start=START, days=days, orders_per_day=300, seed=5, customers=None, products=None,
                                  injections=parse_injections(inject)), progress=False)


def _run(dag, day: date):
    end = day + timedelta(days=1)
    return dag.test(logical_date=datetime(end.year, end.month, end.day, tzinfo=timezone.utc))


def test_rows_quarantined_over_the_threshold_send_one_alert(receivers, ingest):  # noqa: F811
    inbox, posts = receivers
    dag, lake, url = ingest
    _generate(url, 2, "negative_quantity=0.012")
    run = _run(dag, START)
    assert str(run.state) == "success", "the rest of the day is published"
    assert lake.manifest(VALIDATED, DATASET, START).extra["quality"] == "warning"
    assert lake.manifest(QUARANTINE, DATASET, START).extra["scope"] == "rows"
    assert len(posts) == 1 and len(inbox.messages) == 1
    text = posts[0]["text"]
    assert "orders_ingest 2024-01-01: rows quarantined, rest published" in text
    assert "order_items.quantity_positive (" in text and "allowed 0" in text  # rule, observed, threshold
    assert "alert above 1.00%" in text
    assert "quarantine/orders/dt=2024-01-01/quality_report.md" in text
    assert [a.get_filename() for a in inbox.messages[0].iter_attachments()] == ["quality_report.md"]


def test_a_day_with_only_warnings_sends_nothing(receivers, ingest):  # noqa: F811
    inbox, posts = receivers
    dag, lake, url = ingest
    day = START + timedelta(days=1)
    _generate(url, 3, f"empty_day={day.isoformat()}")
    run = _run(dag, day)
    assert str(run.state) == "success"
    assert lake.manifest(VALIDATED, DATASET, day).extra["quality"] == "warning"
    assert posts == [] and inbox.messages == []
