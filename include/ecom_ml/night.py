"""Drive a night on a running Airflow, the way an operator does it: CLI commands, the scheduler does the rest.

``make demo`` and the tests of the production path use this to load history and let the nightly
chain run, instead of calling the pipeline's functions: every task runs through the scheduler,
the executor and Airflow 3's task supervisor.

* :meth:`Night.load_history` unpauses ``orders_ingest`` and backfills the days before the last one
  (``airflow backfill create``); the scheduler starts the last day's scheduled run by itself on
  unpausing (catchup is off). ``train_recommender`` stays paused meanwhile, as an operator keeps it
  while loading history: paused DAGs queue nothing from Asset events, so the backfill does not set
  off a training run per day on partial history.
* :meth:`Night.train_on_last_night` unpauses ``train_recommender`` and clears the last scheduled
  ingestion run, which the scheduler re-runs exactly as that night ran: its ``publish`` emits the
  ``orders_validated`` Asset event, and that triggers training.

Progress is read from the metadata database (run and task states), which is what the UI shows.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from ecom_ml.errors import EcomError

INGEST_DAG = "orders_ingest"


class NightError(EcomError):
    """The night did not go through; the message names the run, the task and its log."""


def airflow_bin() -> str:
    import sys

    return str(Path(sys.executable).with_name("airflow"))


@dataclass
class Night:
    """One Airflow stack: its CLI environment and metadata database."""

    env: Mapping[str, str]
    meta_url: str
    log_folder: Path
    timeout: float = 1800

    # -- reading state ----------------------------------------------------------------------------

    def query(self, sql: str, **params: Any) -> list[Any]:
        import sqlalchemy as sa

        engine = sa.create_engine(self.meta_url)
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text(sql), params).fetchall()
        finally:
            engine.dispose()

    def runs(self, dag_id: str) -> list[Any]:
        return self.query("SELECT run_id, run_type, state, logical_date FROM dag_run WHERE dag_id = :d ORDER BY id",
                           d=dag_id)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {r.task_id: r.state for r in self.query(
            "SELECT task_id, state FROM task_instance WHERE dag_id = :d AND run_id = :r", d=dag_id, r=run_id)}

    def failure(self, dag_id: str, run_id: str) -> str:
        """``task X failed (log: …)`` for the first failed task of a run, for a one-line error."""
        rows = self.query("SELECT task_id, try_number FROM task_instance WHERE dag_id = :d AND run_id = :r "
                           "AND state IN ('failed', 'upstream_failed') ORDER BY state, start_date", d=dag_id, r=run_id)
        if not rows:
            return f"{dag_id} run {run_id} failed"
        task, tries = rows[0].task_id, rows[0].try_number
        log = self.log_folder / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task}" / f"attempt={tries}.log"
        return f"{dag_id} run {run_id}: task {task} failed (log: {log})"

    # -- acting -----------------------------------------------------------------------------------

    def airflow(self, *args: str) -> str:
        done = subprocess.run([airflow_bin(), *args], env=dict(self.env), capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            last = next((line for line in reversed((done.stderr or done.stdout).splitlines()) if line.strip()), "")
            raise NightError(f"`airflow {' '.join(args)}` failed: {last.strip()}")
        return done.stdout

    def _wait(self, done: Callable[[], Any], what: str, progress: Callable[[], str] | None) -> Any:
        deadline = time.monotonic() + self.timeout
        shown = None
        while time.monotonic() < deadline:
            found = done()
            line = progress() if progress else None
            if line and line != shown:
                print(f"    {line}", flush=True)
                shown = line
            if found:
                return found
            time.sleep(2)
        raise NightError(f"{what} did not finish within {self.timeout:.0f} s")

    def load_history(self, days: list[date], *, hold: Sequence[str] = (), show: bool = False) -> list[Any]:
        """Backfill ``days[:-1]`` and let the scheduled run of ``days[-1]`` run; returns their runs.

        The DAGs in ``hold`` (the training DAGs scheduled on the Asset) are paused first, so that the
        backfilled days' Asset events start no training on partial history (a second demo on the
        same stack finds them unpaused by the first)."""
        history, last = days[:-1], days[-1]
        for dag_id in hold:
            self.airflow("dags", "pause", dag_id)
        self.airflow("dags", "unpause", INGEST_DAG)
        if history:
            self.airflow("backfill", "create", "--dag-id", INGEST_DAG, "--from-date", history[0].isoformat(),
                         "--to-date", history[-1].isoformat(), "--max-active-runs", "3",
                         "--reprocess-behavior", "completed")
        wanted = {("backfill", d) for d in history} | {("scheduled", last)}

        def ours() -> list[Any]:
            return [r for r in self.runs(INGEST_DAG) if (r.run_type, r.logical_date.date()) in wanted]

        def finished() -> list[Any] | None:
            runs = ours()
            ended = {(r.run_type, r.logical_date.date()): r for r in runs if r.state in ("success", "failed")}
            return list(ended.values()) if set(ended) >= wanted else None

        def line() -> str:
            runs = ours()
            ok = sum(r.state == "success" for r in runs)
            bad = sum(r.state == "failed" for r in runs)
            return f"orders_ingest: {ok + bad}/{len(wanted)} runs done" + (f" ({bad} failed)" if bad else "")

        return self._wait(finished, f"ingesting {days[0]}..{last}", line if show else None)

    def train_on_last_night(self, last: date, training_dag: str = "train_recommender", *,
                            show: bool = False) -> Any:
        """Unpause the training DAG and re-run ``last``'s scheduled ingestion; returns the training run
        its Asset event triggered, once it ended."""
        before = {r.run_id for r in self.runs(training_dag)}
        self.airflow("dags", "unpause", training_dag)
        self.airflow("tasks", "clear", INGEST_DAG, "--start-date", last.isoformat(), "--end-date", last.isoformat(),
                     "--yes")

        def new_run() -> Any:
            fresh = [r for r in self.runs(training_dag) if r.run_id not in before]
            return fresh[-1] if fresh else None

        def finished() -> Any:
            run = new_run()
            return run if run is not None and run.state in ("success", "failed") else None

        def line() -> str:
            run = new_run()
            if run is None:
                return f"{training_dag}: waiting for the orders_validated Asset event"
            states = self.task_states(training_dag, run.run_id)
            return f"{training_dag} {run.run_id}: " + ", ".join(f"{t}={s or 'none'}" for t, s in states.items())

        return self._wait(finished, f"{training_dag} after re-running {last}", line if show else None)
