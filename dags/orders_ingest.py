"""
### orders_ingest — one day of orders into the validated lake

`extract` → `check_quality` → `publish`

* **extract** pulls the orders *created or updated* in the run's data interval (so late
  cancellations and refunds arrive with the day they happened), their lines, customers and products
  from the `orders_db` Connection into `lake/raw/orders/dt=YYYY-MM-DD/` (Parquet, atomic).
* **check_quality** runs the Great Expectations suites; the report (JSON + Markdown) is written
  next to the partition. Orders that break a row rule (with all their lines) go to
  `lake/quarantine/orders/` and the rest of the day is published with a warning, as long as they
  stay under `max_bad_row_share`; above it, or on a structural failure (schema, keys, references, an
  unexpected empty day), the whole day is quarantined and the run fails. `warning`s are recorded.
* **publish** copies the partition into `lake/validated/orders/` and emits the
  `orders_validated` Asset the training DAGs are scheduled on.

If day D is not validated by `ECOM_DECISION_DEADLINE` (default 06:00 UTC) on D+1, a deadline alert
says so (`ecom_ml.deadlines`). Re-running or backfilling a day replaces exactly that day's partitions. A manual run processes the
day given in its `day` param (e.g. `{"day": "2024-01-16"}`), else its data interval. The first day
it covers is `ECOM_INGEST_START_DATE` (default 2009-12-01); Airflow runs no task for an earlier
logical date.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task
from airflow.timetables.interval import CronDataIntervalTimetable

from ecom_ml.assets import ORDERS_VALIDATED
from ecom_ml.dag_defaults import default_args
from ecom_ml.deadlines import ingestion_deadlines
from ecom_ml.ingest.schedule import ingest_start_date


@dag(
    dag_id="orders_ingest",
    # Data-interval semantics: the run for day D covers [D, D+1) and starts after D ends. (Airflow 3's
    # default for cron strings, CronTriggerTimetable, would give zero-length intervals.)
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    # ECOM_INGEST_START_DATE (default 2009-12-01, the imported history's first day): Airflow runs no
    # task for a logical date before it, so an earlier day would "succeed" having done nothing.
    start_date=ingest_start_date(),
    catchup=False,
    max_active_runs=3,
    doc_md=__doc__,
    tags=["ecom-ml", "ingestion", "data-quality"],
    default_args=default_args(owner="data-engineering"),
    deadline=ingestion_deadlines(),
    params={"day": Param(None, type=["null", "string"], format="date",
                         description="Process this day (default: the run's data interval)")},
)
def orders_ingest():
    @task
    def extract(params=None, data_interval_start=None, data_interval_end=None) -> dict:
        from ecom_ml.ingest.tasks import IngestConfig, extract_to_raw, interval_of

        return extract_to_raw(IngestConfig.from_airflow(), *interval_of(params, data_interval_start, data_interval_end))

    @task(retries=0)
    def check_quality(extracted: dict, params=None, data_interval_start=None, data_interval_end=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from ecom_ml.ingest.tasks import IngestConfig, QualityGateFailed, check_quality, interval_of

        try:
            return check_quality(IngestConfig.from_airflow(), *interval_of(params, data_interval_start,
                                                                            data_interval_end))
        except QualityGateFailed as exc:
            raise AirflowFailException(str(exc)) from None

    @task(outlets=[ORDERS_VALIDATED])
    def publish(checked: dict, outlet_events=None) -> dict:
        from ecom_ml.ingest.tasks import IngestConfig, publish

        published = publish(IngestConfig.from_airflow(), checked)
        outlet_events[ORDERS_VALIDATED].extra = published
        return published

    publish(check_quality(extract()))


orders_ingest()
