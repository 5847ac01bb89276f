"""A whole night as production runs it: Airflow's own scheduler, executor and task supervisor.

Used by the tests that must show what runs every night, not what ``dag.test()`` runs: Airflow's
api-server, scheduler, dag-processor and triggerer as separate processes (plus a Celery worker
when the executor is Celery) on a metadata database of their own, the DAGs of this checkout, the
orders in a scratch database, the registry in a scratch MLflow database.

The night itself (:meth:`NightStack.run_night`):

1. history: ``orders_ingest`` is unpaused and its earlier days are backfilled with
   ``airflow backfill create`` (``train_recommender`` is still paused, as a user would keep it while
   loading history, so the backfill's Asset events queue no training);
2. the scheduled run of the last day (the one the scheduler starts on unpausing; catchup is off)
   completes alongside;
3. ``train_recommender`` is unpaused and the last day's scheduled run is cleared, i.e. re-run by
   the scheduler exactly as that night ran it: its ``publish`` task emits the ``orders_validated``
   Asset event, which triggers ``train_recommender``; features → train (a real trainer subprocess
   or a Celery worker's subprocess) → evaluate → gate → promote → publish (the champion's batch
   predictions into the orders DB's ``ml`` schema) run through the executor.

Nothing in the pipeline's state is seeded by calling its functions: the lake, the features, the
model and the registry entries are what the DAGs produced.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from ecom_ml import local_airflow
from ecom_ml.localhost import free_port

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


@dataclass
class NightStack:
    """A running Airflow stack plus what a test needs to inspect it."""

    stack: local_airflow.Stack
    meta_url: str
    logs: Path
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def driver(self) -> Any:
        """``ecom_ml.night.Night`` on this stack: the CLI and the metadata-DB reads the demo uses too."""
        from ecom_ml.night import Night

        return Night(env=self.env, meta_url=self.meta_url,
                     log_folder=Path(self.env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]), timeout=900)

    def query(self, sql: str, **params: Any) -> list[Any]:
        return self.driver.query(sql, **params)

    def runs(self, dag_id: str) -> list[Any]:
        return self.driver.runs(dag_id)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return self.driver.task_states(dag_id, run_id)

    def log_tail(self, *names: str) -> str:
        out = []
        for name in names or tuple(p.stem for p in self.logs.glob("*.log")):
            path = self.logs / f"{name}.log"
            if path.exists():
                out.append(f"\n--- {path.name} ---\n" + path.read_text(errors="replace")[-2500:])
        return "".join(out)

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> str:
        """A task's log file(s) as the executor wrote them (AIRFLOW_HOME/logs by default)."""
        base = Path(self.env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"])
        found = sorted(base.glob(f"dag_id={dag_id}/run_id={run_id}/task_id={task_id}/*.log"))
        return "\n".join(p.read_text(errors="replace") for p in found)

    def run_night(self, days: list[date]) -> str:
        """Ingest ``days`` (history by backfill, the last day by its scheduled run), then let the last
        day's Asset event trigger training (``ecom_ml.night``); returns the training run's id."""
        driver = self.driver
        started = time.monotonic()
        ingested = driver.load_history(days, hold=("train_recommender",))
        assert all(r.state == "success" for r in ingested), ingested
        self.timings["ingest_s"] = round(time.monotonic() - started, 1)
        assert not self.runs("train_recommender"), "a paused training DAG must not have been triggered"
        scheduled = next(r for r in ingested if r.run_type == "scheduled")
        started = time.monotonic()
        run = driver.train_on_last_night(days[-1])
        self.timings["train_s"] = round(time.monotonic() - started, 1)
        assert run.run_type == "asset_triggered", run
        rerun = next(r for r in self.runs("orders_ingest") if r.run_id == scheduled.run_id)
        assert rerun.state == "success", rerun
        return run.run_id

    def stop(self) -> None:
        self.stack.stop()


def start_stack(tmp_path: Path, overrides: dict[str, str], *, celery_queue: str | None = None) -> NightStack:
    """Migrate a fresh metadata DB and start the components (and a Celery worker if asked)."""
    logs = tmp_path / "airflow-logs"
    logs.mkdir(parents=True, exist_ok=True)
    overrides = {
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(tmp_path / "task-logs"),
        # The production path: deadline alerts on (conftest turns them off for dag.test()).
        "ECOM_DEADLINE_ALERTS": "on",
        **overrides,
    }
    port = free_port()
    env = local_airflow.stack_env(port, overrides)
    for cmd in (["db", "migrate"], ["dags", "reserialize"]):
        done = subprocess.run([local_airflow._airflow_bin(), *cmd], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    stack = local_airflow.start(COMPONENTS, logs, port=port, env_overrides=overrides)
    if celery_queue:
        worker_log = open(logs / "celery-worker.log", "wb")  # noqa: SIM115 - closed with the process
        stack.processes["celery-worker"] = subprocess.Popen(
            [local_airflow._airflow_bin(), "celery", "worker", "--concurrency", "2", "--queues", celery_queue,
             "--celery-hostname", f"{celery_queue}@%h"],
            env=env, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    night = NightStack(stack=stack, meta_url=overrides["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], logs=logs, env=env)
    try:
        stack.wait_healthy()
    except BaseException:
        night.stop()
        raise
    return night


def days_ending_yesterday(count: int) -> list[date]:
    """The last ``count`` complete UTC days: the newest is the interval the scheduler runs on unpause."""
    from datetime import datetime, timezone

    today = datetime.now(timezone.utc).date()
    return [today - timedelta(days=count - i) for i in range(count)]
