"""Deadline alerts: the morning stand-up must hear when last night produced no champion decision.

A task failure already alerts (``ecom_ml.alerts``); what it cannot catch is a night where nothing
failed but nothing finished either: a run stuck in the queue, a worker gone, a GPU pod Pending
for hours. Airflow 3's deadline alerts watch the clock for that, and the scheduler fires them even
when no task of the run ever started. Two deadlines cover the nightly chain:

* ``orders_ingest``: day D must be validated by ``ECOM_DECISION_DEADLINE`` (``HH:MM`` UTC, default
  ``06:00``) on day D+1 — the reference is the run's logical date, D 00:00, so the deadline is
  ``1 day + HH:MM`` after it. No validated day, no training, no decision.
* ``train_<model>``: a training run must end within ``ECOM_TRAINING_DEADLINE_HOURS`` (default 6)
  of being queued. A run whose gate *rejected* the candidate did decide (keep the champion) and
  has already alerted through its failed ``gate`` task, so the callback looks the run up in the
  registry and stays quiet when a verdict is on record.

Airflow prunes a run's deadlines when the run succeeds, so the callback only ever sees runs that
failed or have not finished. Backfill runs get no deadline at all: their logical dates are in the
past, so a deadline on them would fire the moment the run is created, and each firing is a
callback workload that takes an executor slot — a 374-day backfill once spent its first 4 minutes
running 374 callbacks that had nothing to say. The ingestion deadline is therefore measured from
:class:`NightlyRunLogicalDate`, a custom deadline reference (registered by the ``ecom_deadlines``
plugin in ``plugins/``, which the scheduler needs to evaluate it) that gives a backfill run no
reference time, so Airflow creates no deadline for it. The callback still checks the run type, as a
second guard. The settings are read at parse time from the environment (cheap, no database), like
the retry policy in ``ecom_ml.dag_defaults``.

``ECOM_DEADLINE_ALERTS=off`` leaves the deadlines out. ``dag.test()`` / ``airflow dags test`` need
that in Airflow 3.3.2: a test run that *succeeds* looks its DAG's deadline alerts up by their
definitions instead of their ids and fails with "can't adapt type 'dict'" (the scheduler's own
path is not affected). The project's tests that use ``dag.test()`` run with it off.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.definitions.deadline import BaseDeadlineReference

from ecom_ml.settings import ConfigError

if TYPE_CHECKING:
    from datetime import datetime

    from airflow.sdk import DeadlineAlert
    from sqlalchemy.orm import Session

log = logging.getLogger("ecom_ml.alerts")

CALLBACK = "ecom_ml.deadlines.no_champion_decision"
_HH_MM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def decision_time() -> timedelta:
    """``ECOM_DECISION_DEADLINE`` as the time after midnight UTC of the day after the data day."""
    raw = os.environ.get("ECOM_DECISION_DEADLINE", "") or "06:00"
    match = _HH_MM.match(raw.strip())
    if not match:
        raise ConfigError(f"ECOM_DECISION_DEADLINE={raw!r} is not a time of day HH:MM (UTC), e.g. 06:00")
    return timedelta(hours=int(match.group(1)), minutes=int(match.group(2)))


def training_hours() -> float:
    raw = os.environ.get("ECOM_TRAINING_DEADLINE_HOURS", "") or "6"
    try:
        hours = float(raw)
    except ValueError:
        hours = -1.0
    if not hours > 0:
        raise ConfigError(f"ECOM_TRAINING_DEADLINE_HOURS={raw!r} is not a positive number of hours")
    return hours


def enabled() -> bool:
    raw = (os.environ.get("ECOM_DEADLINE_ALERTS", "") or "on").strip().lower()
    if raw not in ("on", "off", "true", "false", "1", "0"):
        raise ConfigError(f"ECOM_DEADLINE_ALERTS={raw!r} is not on or off")
    return raw in ("on", "true", "1")


class NightlyRunLogicalDate(BaseDeadlineReference):
    """The run's logical date, like ``DeadlineReference.DAGRUN_LOGICAL_DATE``, except that a
    backfill run has none, so Airflow creates no deadline (and runs no callback) for it.

    Evaluated by the scheduler when the run is created (it needs the ``ecom_deadlines`` plugin to
    find this class); the query reads two columns of the new run's own row.
    """

    required_kwargs = {"dag_id", "run_id"}

    def _evaluate_with(self, *, session: Session, **kwargs: Any) -> datetime | None:
        from airflow.models import DagRun
        from airflow.utils.types import DagRunType
        from sqlalchemy import select

        row = session.execute(
            select(DagRun.logical_date, DagRun.run_type).where(
                DagRun.dag_id == kwargs["dag_id"], DagRun.run_id == kwargs["run_id"])
        ).one_or_none()
        if row is None or row.logical_date is None or row.run_type == DagRunType.BACKFILL_JOB:
            return None
        return row.logical_date


def ingestion_deadlines() -> list[DeadlineAlert]:
    if not enabled():
        return []
    from airflow.sdk import DeadlineAlert, SyncCallback

    return [DeadlineAlert(
        reference=NightlyRunLogicalDate(),
        interval=timedelta(days=1) + decision_time(),
        callback=SyncCallback(CALLBACK, kwargs={"stage": "ingestion"}),
        name="champion decision (ingestion)",
    )]


def training_deadlines(model: str) -> list[DeadlineAlert]:
    if not enabled():
        return []
    from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback

    return [DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(hours=training_hours()),
        callback=SyncCallback(CALLBACK, kwargs={"stage": "training", "model": model}),
        name="champion decision (training)",
    )]


def _run_day(run: dict[str, Any]) -> str:
    chosen = (run.get("conf") or {}).get("day")
    start = run.get("data_interval_start") or run.get("logical_date")
    return str(chosen) if chosen else str(start)[:10] if start else "?"


def _verdict_on_record(model: str, run_id: str) -> str | None:
    """The gate verdict the registry holds for this Airflow run, if its gate got that far."""
    from ecom_ml import registry

    client = registry.get_registry().client
    quoted = run_id.replace("'", "\\'")
    versions = client.search_model_versions(f"name = '{model}' and tags.airflow_run_id = '{quoted}'")
    verdicts = [v.tags.get("gate") for v in versions if (v.tags or {}).get("gate")]
    return verdicts[0] if verdicts else None


def no_champion_decision(context: dict[str, Any], stage: str, model: str | None = None) -> None:
    """The deadline callback (run by the executor): alert unless the run did decide after all."""
    from ecom_ml.alerts import Alert, deliver, run_url

    run = context.get("dag_run") or {}
    dag_id, run_id = str(run.get("dag_id", "?")), str(run.get("dag_run_id") or run.get("run_id") or "?")
    if run.get("run_type") == "backfill":
        log.info("deadline of backfill run %s of %s passed; backfills are not held to the nightly deadline",
                 run_id, dag_id)
        return
    if stage == "training" and model:
        try:
            verdict = _verdict_on_record(model, run_id)
        except Exception as exc:  # noqa: BLE001 - cannot tell: alert rather than stay silent
            log.warning("could not read the registry for %s run %s (%s); alerting", model, run_id, exc)
            verdict = None
        if verdict:
            log.info("%s run %s: gate verdict %r is on record, so a decision was made; no deadline alert",
                     dag_id, run_id, verdict)
            return
    by = str((context.get("deadline") or {}).get("deadline_time", "the deadline"))[:16].replace("T", " ")
    state = run.get("state") or "unknown"
    what = "the day's orders were not validated" if stage == "ingestion" else "training did not reach its gate"
    alert = Alert(
        dag_id=dag_id,
        day=_run_day(run),
        task_id="",
        reason=f"{what}: run {run_id} is {state}",
        run_url=run_url(dag_id, run_id),
        report=None,
        headline=f"no champion decision by {by} UTC",
    )
    log.error("ALERT %s", alert.line())
    deliver(alert, alert.text(), context)
