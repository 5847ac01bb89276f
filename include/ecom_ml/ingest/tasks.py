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


def check_quality(cfg: IngestConfig, start: datetime, end: datetime) -> dict[str, Any]:
    """Validate the raw partition against the validated history and decide the day's state.

    * pass / warning: nothing is quarantined; ``publish`` copies the day.
    * rows: the offending orders (all their lines) and products go to the quarantine zone with the
      report and the list of their ids; ``publish`` publishes the rest.
    * day (a structural failure, or more bad rows than ``max_bad_row_share``): the day is withdrawn
      from the validated zone *first* - training must never read a day its latest check quarantined
      - then copied whole into quarantine, and QualityGateFailed is raised (one alert).
    """
    from pathlib import Path

    from ecom_ml.quality import QualityConfig
    from ecom_ml.quality.history import load_reference
    from ecom_ml.quality.quarantine import IDS_DOCUMENT, split
    from ecom_ml.quality.validate import check_day

    lake = Lake(cfg.lake_root)
    day = day_of(start)
    tables = lake.read(RAW, DATASET, day)
    quality_cfg = QualityConfig.load(Path(cfg.quality_config) if cfg.quality_config else None)
    reference = load_reference(lake, day, quality_cfg)
    checked = check_day(tables, day=day, interval_start=start, interval_end=end, history=reference.history,
                        config=quality_cfg, reference=reference)
    report = checked.report
    lake.write_text(RAW, DATASET, day, REPORT_JSON, report.to_json())
    report_md = lake.write_text(RAW, DATASET, day, REPORT_MD, report.to_markdown())
    q = report.quarantine
    decision = "day" if report.day_quarantined else ("rows" if q is not None else "none")
    lines = report.row_counts.get("order_items", 0)
    alert = decision == "rows" and q is not None and lines > 0 and q.lines / lines > quality_cfg.alert_bad_row_share
    result = {"day": day.isoformat(), "status": report.published_quality, "summary": report.summary_line(),
              "report": str(report_md), "decision": decision, "metrics": dict(report.metrics),
              "alert": _row_alert(report, quality_cfg.alert_bad_row_share) if alert else None}
    if decision == "none":
        return result
    # The day's validated version may hold rows this check rejects: withdraw it before anything else.
    if lake.remove(VALIDATED, DATASET, day):
        log.warning("%s: withdrew the validated partition (its latest check quarantined %s)", day,
                    "the day" if decision == "day" else "rows of it")
    raw_extra = lake.manifest(RAW, DATASET, day).extra  # type: ignore[union-attr]
    if decision == "day":
        lake.copy(RAW, QUARANTINE, DATASET, day, extra={"quality": "error", "scope": "day"})
        stale = lake.partition(QUARANTINE, DATASET, day) / IDS_DOCUMENT
        if stale.exists():  # from an earlier run that quarantined only rows
            stale.unlink()
    else:
        _, bad_tables = split(tables, checked.bad)
        lake.write(QUARANTINE, DATASET, day, bad_tables, extra={**raw_extra, "quality": "error", "scope": "rows"})
        lake.write_text(QUARANTINE, DATASET, day, IDS_DOCUMENT, checked.bad.to_json())
    lake.write_text(QUARANTINE, DATASET, day, REPORT_JSON, report.to_json())
    quarantined_md = lake.write_text(QUARANTINE, DATASET, day, REPORT_MD, report.to_markdown())
    if decision == "day":
        reason = f" ({q.reason})" if q is not None and not q.reason.startswith("structural") else ""
        raise QualityGateFailed(f"{report.summary_line()}{reason} — quarantined, report: {quarantined_md}")
    result["report"] = str(quarantined_md)
    return result


def _row_alert(report: Any, threshold: float) -> str:
    """One line naming the rules, their observed values and thresholds, and the quarantined share."""
    q = report.quarantine
    rules = "; ".join(r.brief() for r in report.failures("error"))
    lines = report.row_counts.get("order_items", 0)
    return (f"{q.lines:,} of {lines:,} lines ({q.lines / lines:.2%}, alert above {threshold:.2%}) quarantined, "
            f"rest published: {rules}")


def publish(cfg: IngestConfig, checked: dict[str, Any]) -> dict[str, Any]:
    """Publish the checked day into the validated zone; the caller emits the Asset event.

    A day without quarantined rows is copied byte for byte (and any quarantine of an earlier run of it
    is removed); a day with quarantined rows is published without them. The day's metrics go into the
    manifest, where the next days' calendar rules read them.
    """
    from ecom_ml.quality.quarantine import IDS_DOCUMENT, BadRows, split

    lake = Lake(cfg.lake_root)
    day = date.fromisoformat(checked["day"])
    extra = {"quality": checked["status"], **checked.get("metrics", {})}
    if checked.get("decision") == "rows":
        ids = lake.partition(QUARANTINE, DATASET, day) / IDS_DOCUMENT
        if not ids.exists():
            raise EcomError(f"publish {day}: {ids} is missing; re-run check_quality for the day")
        kept, _ = split(lake.read(RAW, DATASET, day), BadRows.from_json(ids.read_text()))
        raw_extra = lake.manifest(RAW, DATASET, day).extra  # type: ignore[union-attr]
        manifest = lake.write(VALIDATED, DATASET, day, kept, extra={**raw_extra, **extra, "quarantined_rows": True})
    else:
        manifest = lake.copy(RAW, VALIDATED, DATASET, day, extra=extra)
        # A day that failed before and passes now is no longer in quarantine.
        lake.remove(QUARANTINE, DATASET, day)
    for name in (REPORT_JSON, REPORT_MD):
        lake.write_text(VALIDATED, DATASET, day, name, (lake.partition(RAW, DATASET, day) / name).read_text())
    if checked.get("alert"):
        from ecom_ml.alerts import on_rows_quarantined

        on_rows_quarantined(f"orders {day.isoformat()}: {checked['alert']}", checked["report"])
    return {"day": day.isoformat(), "rows": manifest.rows, "quality": checked["status"],
            "partition": str(lake.partition(VALIDATED, DATASET, day))}
