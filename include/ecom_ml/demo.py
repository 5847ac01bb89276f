"""`make demo`: generated orders through the nightly pipeline on the local Airflow, as production runs it.

Nothing here calls the pipeline's functions: the demo starts the local Airflow of ``make airflow``
(api-server, scheduler, dag-processor, triggerer; LocalExecutor), generates orders for the days
ending yesterday, sets the training Variables, backfills the history through Airflow, lets the
scheduled run of last night publish the ``orders_validated`` Asset and that trigger
``train_recommender`` (``ecom_ml.night``), and prints what came out: the champion, the gate report,
the web UI with its login, and how to stop. Airflow keeps running afterwards so that the runs can be
looked at in the UI.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date, datetime, timedelta, timezone

from ecom_ml import settings as settings_mod
from ecom_ml.errors import EcomError

def _model_names() -> list[str]:
    from ecom_ml.models import names

    return names()


MODEL = "recommender"
TRAINING_DAG = f"train_{MODEL}"
#: Every training DAG scheduled on the orders_validated Asset (one per registered model kind): paused
#: while history loads.
TRAINING_DAGS = (TRAINING_DAG, *(f"train_{name}" for name in _model_names() if name != MODEL))


def demo_days(count: int, today: date | None = None) -> list[date]:
    """The ``count`` days ending yesterday (UTC): the newest is the night the scheduler runs on unpause."""
    today = today or datetime.now(timezone.utc).date()
    return [today - timedelta(days=count - i) for i in range(count)]


def _print_result(night, run, day: date, cfg: settings_mod.Settings, elapsed: float) -> int:
    from ecom_ml import local_airflow, mlflow_server, registry
    from ecom_ml.models import fetch_dir
    from ecom_ml.training.steps import TrainingSettings, run_dir

    states = night.task_states(TRAINING_DAG, run.run_id)
    print("    tasks: " + ", ".join(f"{task}={state}" for task, state in states.items()))
    out = run_dir(TrainingSettings(lake_root=cfg.lake_root), MODEL, day, run.run_id)
    try:
        report = (fetch_dir(out) / "gate_report.md").read_text()
    except (OSError, EcomError):
        report = None
    if report:
        # The checks; the full report (every metric, every baseline) is in the file named below.
        print()
        print(report.split("\n### ", 1)[0].rstrip())
        print()
    champion = registry.champion(MODEL, download=False)
    ui = f"http://127.0.0.1:{local_airflow.ui_port()}"
    print(f"champion:     {MODEL} v{champion.version} since {champion.since}" if champion else "champion:     none yet")
    print(f"gate report:  {out}/gate_report.md")
    print(f"Airflow UI:   {ui}  (login {local_airflow.login(cfg)}) — runs of orders_ingest and {TRAINING_DAG}, "
          f"Models view under 'Models'")
    print(f"MLflow UI:    {mlflow_server.tracking_uri()}")
    print(f"lake:         {cfg.lake_root}")
    print(f"task logs:    {cfg.airflow_home / 'logs'}")
    print("stop:         make stop   (Airflow, MLflow and PostgreSQL keep running until then)")
    print(f"demo took {elapsed / 60:.1f} min")
    if run.state != "success":
        print(f"demo: error: {night.failure(TRAINING_DAG, run.run_id)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecom_ml.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=14, help="days of orders, ending yesterday (default 14)")
    parser.add_argument("--orders-per-day", type=int, default=1500)
    parser.add_argument("--holdout-days", type=int, default=3, help="training Variable ecom_recommender_holdout_days")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if not 2 <= args.holdout_days + 1 <= args.days:
        parser.error(f"--holdout-days {args.holdout_days} must leave at least one of the {args.days} days to train on")
    started = time.monotonic()
    cfg = settings_mod.load()
    os.environ.update(settings_mod.airflow_environment(cfg))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    from ecom_ml import local_airflow
    from ecom_ml.generator import GeneratorConfig, generate, parse_injections
    from ecom_ml.night import Night, NightError

    print("1/5 starting the local Airflow (api-server, scheduler, dag-processor, triggerer) ...", flush=True)
    print("    " + local_airflow.start_background(cfg))
    env = local_airflow.stack_env(local_airflow.ui_port())
    night = Night(env=env, meta_url=env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], log_folder=cfg.airflow_home / "logs")

    days = demo_days(args.days)
    from ecom_ml.db import redact_url

    print(f"2/5 generating {args.days} days of orders ({days[0]}..{days[-1]}) into {redact_url(cfg.orders_db_url)} ...",
          flush=True)
    summary = generate(
        cfg.orders_db_url,
        GeneratorConfig(start=days[0], days=args.days, orders_per_day=args.orders_per_day, seed=args.seed,
                        customers=None, products=None, injections=parse_injections("")),
        progress=sys.stderr.isatty(),
    )
    print("    " + summary.describe().replace("\n", "\n    "))

    print(f"3/5 training settings as Airflow Variables: window {args.days} days, holdout {args.holdout_days} days",
          flush=True)
    try:
        night.airflow("dags", "reserialize")
        night.airflow("variables", "set", f"ecom_{MODEL}_window_days", str(args.days))
        night.airflow("variables", "set", f"ecom_{MODEL}_holdout_days", str(args.holdout_days))

        print(f"4/5 loading history: backfill of orders_ingest {days[0]}..{days[-2]} and last night's scheduled run "
              f"({days[-1]}); {TRAINING_DAG} stays paused meanwhile", flush=True)
        ingested = night.load_history(days, hold=TRAINING_DAGS, show=True)
        failed = [r for r in ingested if r.state != "success"]
        for run in failed:
            print(f"    {night.failure('orders_ingest', run.run_id)}")

        print(f"5/5 training: {TRAINING_DAG} unpaused, last night's orders_ingest run re-run; its orders_validated "
              f"Asset event triggers features -> train -> evaluate -> gate -> promote", flush=True)
        run = night.train_on_last_night(days[-1], TRAINING_DAG, show=True)
    except NightError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    print()
    code = _print_result(night, run, days[-1], cfg, time.monotonic() - started)
    return code or (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
