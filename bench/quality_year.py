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

Usage: .venv/bin/python bench/quality_year.py [--first 2009-12-01] [--last 2010-12-09] [--keep]
           [--markdown table.md] [--quality-config my.yaml]
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
