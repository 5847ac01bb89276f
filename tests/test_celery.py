"""One DAG run through a real Celery worker and a real Redis broker (the deployable stack's executor).

Redis: the machine's service on 127.0.0.1:6379 where one runs, else a `redis-server` the test starts
itself (Debian's package). Never skipped: without either, the test fails saying so.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from ecom_ml import local_airflow
from ecom_ml.localhost import free_port
from ecom_ml.generator import GeneratorConfig, generate, parse_injections
from ecom_ml.ingest.tasks import DATASET
from ecom_ml.lake import VALIDATED, Lake



def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    if _answers(6379):
        yield "redis://127.0.0.1:6379/7"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("no Redis on 127.0.0.1:6379 and no redis-server binary: apt-get install redis-server")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not _answers(port):
        assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
        time.sleep(0.1)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_dag_run_executes_on_a_celery_worker(pg_server, scratch_dbs, redis_url, tmp_path):
    from ecom_ml.db.migrate import migrate

    names = scratch_dbs("orders", "airflow")
    meta = pg_server.local_url(names["airflow"], "postgresql+psycopg2")
    orders_url = pg_server.local_url(names["orders"])
    migrate(orders_url)
    day = datetime.now(timezone.utc).date() - timedelta(days=1)
    generate(orders_url, GeneratorConfig(start=day - timedelta(days=1), days=2, orders_per_day=150, seed=9,
                                         customers=None, products=None, injections=parse_injections("")),
             progress=False)
    queue = f"ecom_test_{uuid.uuid4().hex[:6]}"
    overrides = {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg_server.local_url(names["airflow"]),
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta,
        "AIRFLOW_CONN_ORDERS_DB": orders_url,
        "ECOM_LAKE_ROOT": (tmp_path / "lake").as_uri(),
        "ECOM_TASK_RETRIES": "0",
    }
    Lake(overrides["ECOM_LAKE_ROOT"]).init()  # lake roots are created on purpose, never by a write
    port = free_port()
    env = local_airflow.stack_env(port, overrides)
    for cmd in (["db", "migrate"], ["dags", "reserialize"], ["dags", "unpause", "orders_ingest"]):
        done = subprocess.run([local_airflow._airflow_bin(), *cmd], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    logs = tmp_path / "logs"
    stack = local_airflow.start(("api-server", "scheduler", "dag-processor"), logs, port=port, env_overrides=overrides)
    worker = subprocess.Popen(
        [local_airflow._airflow_bin(), "celery", "worker", "--concurrency", "2", "--queues", queue,
         "--celery-hostname", f"{queue}@%h"],
        env=env, stdout=open(logs / "worker.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    stack.processes["celery-worker"] = worker
    try:
        stack.wait_healthy()
        done = stack.airflow("dags", "trigger", "orders_ingest", "--conf", json.dumps({"day": day.isoformat()}))
        assert done.returncode == 0, done.stderr[-2000:]
        engine = sa.create_engine(meta)
        deadline = time.monotonic() + 420
        state = None
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                # Only the triggered run: unpausing also lets the scheduler start its own regular run.
                run = conn.execute(sa.text(
                    "SELECT run_id, state FROM dag_run WHERE dag_id = 'orders_ingest' AND run_type = 'manual'")
                ).fetchone()
                state = run.state if run else None
                if state in ("success", "failed"):
                    tis = conn.execute(sa.text(
                        "SELECT task_id, state, queue FROM task_instance WHERE dag_id = 'orders_ingest' "
                        "AND run_id = :run_id"), {"run_id": run.run_id}).fetchall()
                    break
            time.sleep(2)
        engine.dispose()
        assert state == "success", (state, (logs / "worker.log").read_text()[-3000:])
        assert {t.task_id: t.state for t in tis} == {"extract": "success", "check_quality": "success",
                                                     "publish": "success"}
        assert {t.queue for t in tis} == {queue}, "every task went through the test's Celery queue"
        worker_log = (logs / "worker.log").read_text()
        assert "orders_ingest" in worker_log, "the Celery worker executed the tasks"
        manifest = Lake((tmp_path / "lake").as_uri()).manifest(VALIDATED, DATASET, day)
        assert manifest is not None and manifest.rows["orders"] > 0
    finally:
        stack.stop()
