"""Benchmark: how soon a backfill of orders_ingest starts its first task, with deadline alerts on.

A 374-day backfill once spent its first 4 min 14 s running one deadline callback per backfilled
day (each a workload in an executor slot) before any task started. Backfill runs now get no
deadline (``ecom_ml.deadlines.NightlyRunLogicalDate``). This bench starts Airflow's own scheduler,
api-server, dag-processor and triggerer on a throwaway metadata DB with deadline alerts on,
creates a backfill of N days (default 30) of generated orders, and reports the seconds from the
`backfill create` command returning to the first backfill task starting, the deadline rows that
the backfill runs got, and the time until the whole backfill completed. Measured, not asserted.

    .venv/bin/python bench/backfill_start.py [--days 30] [--orders-per-day 100]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from ecom_ml import local_airflow, settings
from ecom_ml.db import scratch_database
from ecom_ml.db.migrate import migrate
from ecom_ml.db.server import start
from ecom_ml.generator import GeneratorConfig, generate, parse_injections
from ecom_ml.lake import Lake
from ecom_ml.localhost import free_port
from ecom_ml.night import Night


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--orders-per-day", type=int, default=100)
    parser.add_argument("--first", type=date.fromisoformat, default=date(2024, 1, 1))
    args = parser.parse_args(argv)
    cfg = settings.load()
    start(cfg)
    days = [args.first + timedelta(days=i) for i in range(args.days)]
    with scratch_database(cfg, "bench_orders") as orders, scratch_database(cfg, "bench_airflow") as meta_db, \
            tempfile.TemporaryDirectory(prefix="ecom-bench-") as tmp:
        orders_url = cfg.local_url(orders)
        migrate(orders_url)
        generate(orders_url, GeneratorConfig(start=days[0], days=args.days, orders_per_day=args.orders_per_day,
                                             seed=1, customers=None, products=None,
                                             injections=parse_injections("")), progress=False)
        meta = cfg.local_url(meta_db, "postgresql+psycopg2")
        overrides = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta, "AIRFLOW_CONN_ORDERS_DB": orders_url,
                     "ECOM_LAKE_ROOT": (Path(tmp) / "lake").as_uri(), "ECOM_DEADLINE_ALERTS": "on",
                     "ECOM_TASK_RETRIES": "0", "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(Path(tmp) / "logs")}
        Lake(overrides["ECOM_LAKE_ROOT"]).init()
        port = free_port()
        env = local_airflow.stack_env(port, overrides)
        for cmd in (["db", "migrate"], ["dags", "reserialize"]):
            subprocess.run([local_airflow._airflow_bin(), *cmd], env=env, capture_output=True, check=True)
        stack = local_airflow.start(local_airflow.COMPONENTS, Path(tmp) / "airflow", port=port,
                                    env_overrides=overrides)
        try:
            stack.wait_healthy()
            night = Night(env=env, meta_url=meta, log_folder=Path(tmp) / "logs")
            night.airflow("dags", "unpause", "orders_ingest")
            night.airflow("backfill", "create", "--dag-id", "orders_ingest", "--from-date", days[0].isoformat(),
                          "--to-date", days[-1].isoformat(), "--max-active-runs", "3")
            created = time.monotonic()
            first_task = None
            while time.monotonic() - created < 1800:
                rows = night.query(
                    """SELECT count(*) AS started FROM task_instance ti JOIN dag_run r
                       ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id
                       WHERE r.run_type = 'backfill' AND ti.start_date IS NOT NULL""")
                if first_task is None and rows[0].started:
                    first_task = time.monotonic() - created
                done = night.query("SELECT completed_at FROM backfill ORDER BY id DESC LIMIT 1")
                if done and done[0].completed_at is not None:
                    break
                time.sleep(0.5)
            total = time.monotonic() - created
            deadlines = night.query(
                """SELECT count(d.id) AS n FROM deadline d JOIN dag_run r ON r.id = d.dagrun_id
                   WHERE r.run_type = 'backfill'""")[0].n
            states = night.query("SELECT state, count(*) AS n FROM dag_run WHERE run_type = 'backfill' GROUP BY state")
        finally:
            stack.stop()
    print(f"backfill of {args.days} days of orders_ingest, deadline alerts on, LocalExecutor (parallelism 4):")
    print(f"  first task started {first_task:.1f} s after `backfill create` returned" if first_task is not None
          else "  no task started")
    print(f"  deadline rows of backfill runs: {deadlines} (a built-in DAGRUN_LOGICAL_DATE reference gives {args.days}, "
          f"each fired at once as a callback workload)")
    print(f"  backfill completed in {total:.1f} s ({total / args.days:.1f} s per day); runs: "
          + ", ".join(f"{r.state} {r.n}" for r in states))
    return 0


if __name__ == "__main__":
    sys.exit(main())
