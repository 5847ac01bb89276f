"""The data-quality rules on a real shop's year: how often each one fires, and what it quarantines.

Imports the shared Online Retail II file (2009-12-01..2010-12-09) into a throwaway database on the
project's local PostgreSQL, then backfills every day through the *same functions the orders_ingest
DAG's tasks call* (``ecom_ml.ingest.tasks.extract_to_raw`` -> ``check_quality`` -> ``publish``), day
by day in order, into a throwaway lake - without the scheduler, whose per-task start-up would
dominate the run on a small machine but changes nothing in what is checked. Then it prints, per
rule: on how many days it fired as an error and as a warning, how many rows it quarantined (days
published without their bad rows), and on how many whole quarantined days it failed; the share of
open days each rule fired on; and how many alerts the days would send (whole quarantined days and
days over ``alert_bad_row_share``; warnings send none).

``--dag-days N`` then also backfills the first N days through the real DAG (``dag.test()``, one run
per day, on a fresh lake) with a local SMTP server and a Slack-style webhook as the alert channels,
and counts the messages they received.

Usage: .venv/bin/python bench/quality_year.py [--first 2009-12-01] [--last 2010-12-09] [--keep]
           [--markdown table.md] [--quality-config my.yaml] [--dag-days 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from ecom_ml import settings as settings_mod
from ecom_ml.db import scratch_database
from ecom_ml.db.migrate import migrate
from ecom_ml.db.server import start
from ecom_ml.importer import import_file
from ecom_ml.ingest.tasks import REPORT_JSON, IngestConfig, QualityGateFailed, check_quality, extract_to_raw, publish
from ecom_ml.lake import RAW, Lake
from ecom_ml.quality import QualityReport

SOURCE = Path(__file__).resolve().parents[1].parent / "shared/data/online_retail_ii_2009_2010/online_retail_ii_2009_2010.csv.gz"


def _parse_date(text: str) -> date:
    return date.fromisoformat(text)


def backfill(url: str, lake_root: str, first: date, last: date, quality_config: str | None) -> list[dict]:
    cfg = IngestConfig(lake_root=lake_root, orders_url=url, quality_config=quality_config)
    lake = Lake(lake_root)
    lake.init()  # a new lake is created on purpose (`ecom-ml lake init`), never by a write
    out = []
    day = first
    while day <= last:
        begin = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        end = begin + timedelta(days=1)
        extract_to_raw(cfg, begin, end)
        row = {"day": day}
        try:
            checked = check_quality(cfg, begin, end)
            publish(cfg, checked)
            row.update(decision=checked["decision"], alert=bool(checked["alert"]))
        except QualityGateFailed:
            row.update(decision="day", alert=True)
        text = (lake.partition(RAW, "orders", day) / REPORT_JSON).read_text()
        row["report"] = QualityReport.from_json(text)
        out.append(row)
        day += timedelta(days=1)
    return out


def dag_backfill_alerts(url: str, lake_root: str, first: date, days: int) -> dict:
    """Run ``days`` days through the orders_ingest DAG with local alert receivers; count the messages."""
    Lake(lake_root).init()
    import os
    import socket
    import threading
    import uuid
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from aiosmtpd.controller import Controller

    received: dict[str, list] = {"email": [], "slack": []}

    class Inbox:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
            received["email"].append(envelope.content)
            return "250 OK"

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's hook name
            received["slack"].append(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        smtp_port = probe.getsockname()[1]
    smtp = Controller(Inbox(), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    web = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    os.environ.update(settings_mod.airflow_environment(settings_mod.load()))
    os.environ.update({
        "AIRFLOW_CONN_ORDERS_DB": url, "ECOM_LAKE_ROOT": lake_root, "ECOM_TASK_RETRIES": "0",
        "ECOM_DEADLINE_ALERTS": "off", "ECOM_ALERT_STATE_VARIABLE": f"ecom_alert_state_{uuid.uuid4().hex[:8]}",
        "AIRFLOW_CONN_ECOM_SLACK": json.dumps({"conn_type": "slackwebhook",
                                               "password": f"http://127.0.0.1:{web.server_port}/services/T/B/x"}),
        "AIRFLOW_CONN_ECOM_SMTP": json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port, "extra": {
            "disable_ssl": True, "disable_tls": True, "from_email": "alerts@shop.test", "retry_limit": 0}}),
        "AIRFLOW_VAR_ECOM_ALERT_EMAIL_TO": "oncall@shop.test",
    })
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags")).get_dag(
        "orders_ingest")
    states: Counter = Counter()
    tasks: Counter = Counter()
    # The shop's days predate the DAG's start_date, and Airflow schedules no task of a run logically
    # before it; so each run gets a logical date after it and processes its day through the `day`
    # param, as a manual run for a chosen day does.
    base = dag.start_date.date() if dag.start_date else date(2024, 1, 1)
    try:
        for offset in range(days):
            day = first + timedelta(days=offset)
            at = base + timedelta(days=offset + 1)
            run = dag.test(logical_date=datetime(at.year, at.month, at.day, tzinfo=timezone.utc),
                           run_conf={"day": day.isoformat()})
            states[str(run.state)] += 1
            tasks.update(f"{ti.task_id}:{ti.state}" for ti in run.get_task_instances())
    finally:
        smtp.stop()
        web.shutdown()
    return {"days": days, "runs": dict(states), "tasks": dict(tasks), "emails": len(received["email"]),
            "slack": len(received["slack"]),
            "slack_texts": received["slack"]}


def tabulate(days: list[dict]) -> tuple[list[tuple], dict]:
    open_days = sum(1 for d in days if d["report"].metrics.get("created_orders", 0) > 0)
    fired: dict[str, Counter] = defaultdict(Counter)
    rows_q: Counter = Counter()
    order: list[str] = []
    for d in days:
        report: QualityReport = d["report"]
        for r in report.results:
            if r.rule not in order:
                order.append(r.rule)
            if not r.failed:
                continue
            fired[r.rule][r.severity] += 1
            if d["decision"] == "rows" and r.severity == "error" and isinstance(r.observed, int):
                rows_q[r.rule] += r.observed
            if d["decision"] == "day":
                fired[r.rule]["day"] += 1
    table = []
    for rule in order:
        c = fired.get(rule, Counter())
        share = (c["error"] + c["warning"]) / open_days if open_days else 0.0
        table.append((rule, c["error"], c["warning"], rows_q[rule], c["day"], share))
    statuses = Counter(d["report"].status for d in days)
    decisions = Counter(d["decision"] for d in days)
    summary = {
        "days": len(days), "open_days": open_days, "statuses": dict(statuses), "decisions": dict(decisions),
        "published_quality": dict(Counter(d["report"].published_quality for d in days if d["decision"] != "day")),
        "alerts": sum(d["alert"] for d in days),
        "quarantined_lines": sum(d["report"].quarantine.lines for d in days
                                 if d["report"].quarantine is not None and d["decision"] == "rows"),
    }
    return table, summary


def markdown(table: list[tuple]) -> str:
    lines = ["| rule | days fired as error | days fired as warning | rows quarantined | whole days quarantined "
             "| share of open days |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for rule, err, warn, rows, whole, share in table:
        lines.append(f"| `{rule}` | {err} | {warn} | {rows:,} | {whole} | {share:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--first", type=_parse_date, default=date(2009, 12, 1))
    parser.add_argument("--last", type=_parse_date, default=date(2010, 12, 9))
    parser.add_argument("--quality-config", default=None)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--keep", action="store_true", help="keep the lake (printed) for inspection")
    parser.add_argument("--dag-days", type=int, default=0,
                        help="also run the first N days through the DAG with local alert receivers")
    parser.add_argument("--skip-backfill", action="store_true", help="only the --dag-days measurement")
    args = parser.parse_args()

    settings = settings_mod.load()
    start(settings)
    with scratch_database(settings, prefix="quality_year") as name, tempfile.TemporaryDirectory() as tmp:
        url = settings.local_url(name)
        migrate(url)
        t0 = time.perf_counter()
        result = import_file(url, args.source, rejects=Path(tmp) / "rejects.csv", progress=False)
        t_import = time.perf_counter() - t0
        print(result.describe())
        alerts = None
        if args.dag_days:
            t0 = time.perf_counter()
            alerts = dag_backfill_alerts(url, (Path(tmp) / "dag_lake").as_uri(), args.first, args.dag_days)
            alerts["seconds"] = round(time.perf_counter() - t0)
            print(json.dumps(alerts, indent=1))
        if args.skip_backfill:
            return
        lake_dir = Path(tempfile.mkdtemp(prefix="quality_year_lake_")) if args.keep else Path(tmp) / "lake"
        t0 = time.perf_counter()
        days = backfill(url, lake_dir.as_uri(), args.first, args.last, args.quality_config)
        t_backfill = time.perf_counter() - t0
        table, summary = tabulate(days)
    text = markdown(table)
    print()
    print(text)
    print()
    print(json.dumps(summary, indent=1))
    print(f"import {t_import:.0f} s; backfill of {len(days)} days through extract -> check_quality -> publish "
          f"{t_backfill:.0f} s ({t_backfill / max(len(days), 1):.2f} s/day)")
    if args.keep:
        print(f"lake kept at {lake_dir}")
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
