"""orders_ingest over imported history: a day before the DAG's start date must not "succeed" empty.

Airflow creates no task instance for a logical date before ``start_date``; with the old fixed 2024
start, ``airflow dags test orders_ingest 2010-06-02`` ended ``success`` with nothing extracted.
"""

from __future__ import annotations

import gzip
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pendulum
import pytest

from ecom_ml.generator import GeneratorConfig, generate
from ecom_ml.ingest.tasks import DATASET
from ecom_ml.lake import RAW, VALIDATED, Lake

DAGS = Path(__file__).resolve().parents[1] / "dags"


def _bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_the_default_start_date_covers_the_real_imported_history(retail_csv: Path, monkeypatch) -> None:
    monkeypatch.delenv("ECOM_INGEST_START_DATE", raising=False)
    with gzip.open(retail_csv, "rt") as handle:
        next(handle)
        first_day = date.fromisoformat(next(handle).split(",")[4][:10])
    dag = _bag().get_dag("orders_ingest")
    assert dag.start_date <= pendulum.datetime(first_day.year, first_day.month, first_day.day, tz="UTC")


def test_a_day_of_imported_history_runs_its_tasks(orders_db, tmp_path, monkeypatch) -> None:
    """`dags test orders_ingest 2010-06-02` (the day 2010-06-01) extracts and publishes that day."""
    monkeypatch.delenv("ECOM_INGEST_START_DATE", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_ORDERS_DB", orders_db)
    monkeypatch.setenv("ECOM_LAKE_ROOT", (tmp_path / "lake").as_uri())
    monkeypatch.setenv("ECOM_TASK_RETRIES", "0")
    lake = Lake((tmp_path / "lake").as_uri())
    lake.init()
    day = date(2010, 6, 1)
    generate(orders_db, GeneratorConfig(start=day, days=1, orders_per_day=120, seed=5), progress=False)
    bag = _bag()
    assert bag.import_errors == {}
    run = bag.get_dag("orders_ingest").test(logical_date=datetime(2010, 6, 2, tzinfo=timezone.utc))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states == {"extract": "success", "check_quality": "success", "publish": "success"}, states
    assert str(run.state) == "success"
    assert lake.manifest(RAW, DATASET, day).rows["orders"] > 0
    assert lake.manifest(VALIDATED, DATASET, day) is not None


def test_the_start_date_is_configurable_without_a_database(monkeypatch) -> None:
    monkeypatch.setenv("ECOM_INGEST_START_DATE", "2010-06-01")
    dag = _bag().get_dag("orders_ingest")
    assert dag.start_date == pendulum.datetime(2010, 6, 1, tz="UTC")
    assert dag.start_date + timedelta(days=1) == pendulum.datetime(2010, 6, 2, tz="UTC")


def test_a_bad_start_date_is_one_import_error_naming_the_setting(monkeypatch) -> None:
    monkeypatch.setenv("ECOM_INGEST_START_DATE", "2010-13-01")
    errors = _bag().import_errors
    assert len(errors) == 1
    (message,) = errors.values()
    assert "ECOM_INGEST_START_DATE='2010-13-01' is not a date (YYYY-MM-DD)" in message
