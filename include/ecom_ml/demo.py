"""`make demo`: generated orders through the pipeline, end to end, on the local stack.

Runs the real DAGs with ``dag.test()`` (each task in this process, against the real metadata DB and
the real orders database) one day after another, the way the nightly schedule would, and prints
where the results are.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from ecom_ml import settings as settings_mod
from ecom_ml.errors import EcomError

DEMO_START = date(2024, 1, 1)


def _load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    cfg = settings_mod.load()
    folder = cfg.repo / "dags" if cfg.repo else None
    bag = DagBag(dag_folder=str(folder) if folder else None)
    if bag.import_errors:
        first = next(iter(bag.import_errors.items()))
        raise SystemExit(f"demo: DAG file {first[0]} does not import: {first[1].strip().splitlines()[-1]}")
    return bag.get_dag(dag_id)


@contextlib.contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """Send everything written to stdout/stderr (Airflow's and GX's task logs) to a file, so the
    terminal shows the demo's own summary; file descriptors, since structlog holds the streams."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_ingest_days(days: list[date], log: Path) -> list[tuple[date, str]]:
    """dag.test() orders_ingest for each day; returns (day, final state) pairs."""
    with _logs_to(log):
        dag = _load_dag("orders_ingest")
    outcome = []
    for day in days:
        # A manual run covers the day that ends at its logical date, so day D is run at D+1 00:00.
        end = day + timedelta(days=1)
        logical = datetime(end.year, end.month, end.day, tzinfo=timezone.utc)
        with _logs_to(log):
            run = dag.test(logical_date=logical)
        print(f"  {day}: {run.state}", flush=True)
        outcome.append((day, str(run.state)))
    return outcome


def run_training(day: date, log: Path):
    """dag.test() train_recommender for ``day`` (the `day` param, as a user would set it in the UI)."""
    with _logs_to(log):
        dag = _load_dag("train_recommender")
        return dag.test(run_conf={"day": day.isoformat()})


def print_training(run, cfg: settings_mod.Settings) -> None:
    from ecom_ml import mlflow_server, registry
    from ecom_ml.models import fetch_dir

    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print("tasks: " + ", ".join(f"{task}={state}" for task, state in states.items()))
    gated = run.get_task_instance("gate").xcom_pull(task_ids="gate") if states.get("gate") == "success" else None
    built = run.get_task_instance("features").xcom_pull(task_ids="features")
    report = f"{built['out_uri']}/gate_report.md" if built else None
    if report:
        try:
            print()
            print((fetch_dir(built["out_uri"]) / "gate_report.md").read_text())
        except (OSError, EcomError):
            print(f"(no gate report at {report})")
    champion = registry.champion("recommender", download=False)
    if champion is not None:
        print(f"champion: recommender v{champion.version} since {champion.since} ({champion.model_uri})")
    if gated:
        print(f"this run's candidate: v{gated['version']} — gate passed")
    print(f"gate report:      {report}")
    print(f"MLflow UI:        {mlflow_server.tracking_uri()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecom_ml.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--orders-per-day", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    os.environ.update(settings_mod.airflow_environment(settings_mod.load()))
    # dag.test() fails at the end of a successful run of a DAG with deadline alerts on Airflow 3.3.2
    # (see ecom_ml.deadlines); the demo's runs are not nightly runs anyway.
    os.environ["ECOM_DEADLINE_ALERTS"] = "off"
    cfg = settings_mod.load()

    from ecom_ml.generator import GeneratorConfig, generate, parse_injections

    print(f"1/3 generating {args.days} days of orders from {DEMO_START} into {cfg.orders_db_url} ...", flush=True)
    summary = generate(
        cfg.orders_db_url,
        GeneratorConfig(start=DEMO_START, days=args.days, orders_per_day=args.orders_per_day, seed=args.seed,
                        customers=None, products=None, injections=parse_injections("")),
        progress=sys.stderr.isatty(),
    )
    print(summary.describe())

    days = [DEMO_START + timedelta(days=i) for i in range(args.days)]
    print(f"2/3 running orders_ingest for {len(days)} days (extract -> quality -> publish) ...", flush=True)
    log = cfg.log_dir / "demo.log"
    print(f"    (Airflow task logs: {log})")
    outcome = run_ingest_days(days, log)

    from ecom_ml.ingest.tasks import DATASET, REPORT_MD
    from ecom_ml.lake import QUARANTINE, VALIDATED, Lake

    lake = Lake(cfg.lake_root)
    print()
    print(f"{'day':<12}{'run':<10}{'orders':>8}{'lines':>8}  quality")
    for day, state in outcome:
        manifest = lake.manifest(VALIDATED, DATASET, day) or lake.manifest(QUARANTINE, DATASET, day)
        rows = manifest.rows if manifest else {}
        quality = (manifest.extra.get("quality") if manifest else None) or "-"
        print(f"{day.isoformat():<12}{state:<10}{rows.get('orders', 0):>8}{rows.get('order_items', 0):>8}  {quality}")
    failed = [day for day, state in outcome if state != "success"]

    print()
    print(f"3/3 running train_recommender for {days[-1]} (features -> train -> evaluate -> gate -> promote) ...",
          flush=True)
    training = run_training(days[-1], log)
    print_training(training, cfg)
    print()
    print(f"validated lake:   {lake.dataset(VALIDATED, DATASET)}")
    print(f"quarantine:       {lake.dataset(QUARANTINE, DATASET)}")
    print(f"a quality report: {lake.partition(VALIDATED, DATASET, days[-1]) / REPORT_MD}")
    print(f"orders database:  {cfg.orders_db_url}   (psql: ecom-ml db url)")
    print("Airflow runs:     .venv/bin/ecom-ml airflow dags list-runs orders_ingest")
    return 1 if failed or str(training.state) != "success" else 0


if __name__ == "__main__":
    sys.exit(main())
