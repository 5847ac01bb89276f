"""What the orders_ingest DAG's tasks do, as plain functions the DAG calls and the tests can call.

Each step reads only the lake partition of its own day and writes only that day's outputs, so a
re-run or a backfill of day D never changes another day.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from ecom_ml.errors import EcomError
from ecom_ml.lake import QUARANTINE, RAW, VALIDATED, Lake

log = logging.getLogger(__name__)

DATASET = "orders"
REPORT_JSON = "quality_report.json"
REPORT_MD = "quality_report.md"
HISTORY_DAYS = 14


class QualityGateFailed(EcomError):
    """A day's data failed an error-severity quality rule; it was quarantined, not published."""


@dataclass(frozen=True)
class IngestConfig:
    lake_root: str
    orders_url: str
    quality_config: str | None = None

    @classmethod
    def from_airflow(cls) -> IngestConfig:
        """Lake root from the `ecom_lake_root` Variable or ECOM_LAKE_ROOT; the DB from the `orders_db` Connection."""
        from airflow.sdk import Connection, Variable

        from ecom_ml import settings

        lake_root = Variable.get("ecom_lake_root", default=None) or settings.load().lake_root
        quality = Variable.get("ecom_quality_config", default=None)
        url = libpq_url(Connection.get("orders_db"))
        return cls(lake_root=lake_root, orders_url=url, quality_config=quality)


def libpq_url(conn: Any) -> str:
    """A plain ``postgresql://`` URL from an Airflow Connection (psycopg2 and COPY need libpq's form;
    the postgres provider's ``get_uri`` gives SQLAlchemy's ``postgresql+psycopg://``)."""
    from urllib.parse import quote, urlencode

    auth = ""
    if conn.login:
        auth = quote(conn.login, safe="") + (f":{quote(conn.password, safe='')}" if conn.password else "") + "@"
    options = {k: v for k, v in (conn.extra_dejson or {}).items() if k in ("sslmode", "sslrootcert", "sslcert",
                                                                          "sslkey", "options", "application_name")}
    query = f"?{urlencode(options)}" if options else ""
    return f"postgresql://{auth}{conn.host or 'localhost'}:{conn.port or 5432}/{quote(conn.schema or '', safe='')}{query}"


def day_of(interval_start: datetime) -> date:
    return interval_start.date()


def interval_of(params: dict[str, Any] | None, start: datetime | None, end: datetime | None
                ) -> tuple[datetime, datetime]:
    """The day a run processes: the `day` param when given (a manual run for a chosen day), else the
    run's data interval (scheduled runs and backfills)."""
    from datetime import timezone

    day = (params or {}).get("day")
    if day:
        try:
            chosen = date.fromisoformat(str(day))
        except ValueError:
            raise EcomError(f"DAG param day={day!r} is not a date (YYYY-MM-DD)") from None
        begin = datetime(chosen.year, chosen.month, chosen.day, tzinfo=timezone.utc)
        return begin, begin + timedelta(days=1)
    if start is None or end is None:
        raise EcomError("this run has no data interval (a manual run without a logical date): "
                        "trigger it with the `day` param, or use `airflow backfill create`")
    return start, end


def extract_to_raw(cfg: IngestConfig, start: datetime, end: datetime) -> dict[str, Any]:
    from ecom_ml.ingest.extract import extract_day

    day = day_of(start)
    extracted = extract_day(cfg.orders_url, start, end)
    manifest = Lake(cfg.lake_root).write(
        RAW, DATASET, day, extracted.tables,
        extra={"interval_start": start.isoformat(), "interval_end": end.isoformat()},
    )
    log.info("extracted %s: %s into %s (%s)", day, manifest.rows, cfg.lake_root, manifest.version)
    return {"day": day.isoformat(), "rows": manifest.rows, "version": manifest.version}


def _history(lake: Lake, day: date) -> list[Any]:
    """Row counts of the validated days before ``day`` (the volume rule's baseline)."""
    from ecom_ml.quality import DayHistory

    out = []
    for previous in lake.days(VALIDATED, DATASET):
        if day - timedelta(days=HISTORY_DAYS) <= previous < day:
            manifest = lake.manifest(VALIDATED, DATASET, previous)
            if manifest is not None:
                out.append(DayHistory(previous, manifest.rows.get("orders", 0), manifest.rows.get("order_items", 0)))
    return out


def check_quality(cfg: IngestConfig, start: datetime, end: datetime) -> dict[str, Any]:
    """Validate the raw partition; quarantine it and raise on an error-severity failure."""
    from pathlib import Path

    from ecom_ml.quality import QualityConfig, validate_day

    lake = Lake(cfg.lake_root)
    day = day_of(start)
    tables = lake.read(RAW, DATASET, day)
    quality_cfg = QualityConfig.load(Path(cfg.quality_config) if cfg.quality_config else None)
    report = validate_day(
        tables, day=day, interval_start=start, interval_end=end, history=_history(lake, day), config=quality_cfg
    )
    lake.write_text(RAW, DATASET, day, REPORT_JSON, report.to_json())
    report_md = lake.write_text(RAW, DATASET, day, REPORT_MD, report.to_markdown())
    result = {"day": day.isoformat(), "status": report.status, "summary": report.summary_line(), "report": str(report_md)}
    if report.status == "error":
        lake.copy(RAW, QUARANTINE, DATASET, day, extra={"quality": "error"})
        lake.write_text(QUARANTINE, DATASET, day, REPORT_JSON, report.to_json())
        quarantined_md = lake.write_text(QUARANTINE, DATASET, day, REPORT_MD, report.to_markdown())
        raise QualityGateFailed(f"{report.summary_line()} — quarantined, report: {quarantined_md}")
    return result


def publish(cfg: IngestConfig, checked: dict[str, Any]) -> dict[str, Any]:
    """Move a passing day into the validated zone; the caller emits the Asset event."""
    lake = Lake(cfg.lake_root)
    day = date.fromisoformat(checked["day"])
    manifest = lake.copy(RAW, VALIDATED, DATASET, day, extra={"quality": checked["status"]})
    for name in (REPORT_JSON, REPORT_MD):
        lake.write_text(VALIDATED, DATASET, day, name, (lake.partition(RAW, DATASET, day) / name).read_text())
    # A day that failed before and passes now is no longer in quarantine.
    lake.remove(QUARANTINE, DATASET, day)
    return {"day": day.isoformat(), "rows": manifest.rows, "quality": checked["status"],
            "partition": str(lake.partition(VALIDATED, DATASET, day))}
