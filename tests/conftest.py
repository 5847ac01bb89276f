"""Shared fixtures: the project's real PostgreSQL, throwaway databases on it, and Airflow's environment.

Airflow reads its configuration at import, so the environment is set here, before any test module
imports it, from the same settings the CLI uses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ecom_ml import settings as settings_mod

os.environ.update(settings_mod.airflow_environment(settings_mod.load()))


def _worker_metadata_db() -> None:
    """Under xdist (``make test``), each worker gets an Airflow metadata DB of its own.

    ``dag.test()`` writes its runs to the metadata DB, keyed by DAG and logical date: two workers
    testing ``orders_ingest`` for the same day at once would collide on that key. The copy is made
    from the migrated ``airflow`` DB (``CREATE DATABASE … TEMPLATE``, a file copy, well under a second);
    where that DB is in use (a ``make airflow`` stack of the same checkout), it is migrated instead.
    Set here, at import, because Airflow reads its configuration when first imported.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    import psycopg2

    from ecom_ml.db import admin_connection, server
    from ecom_ml.settings import AIRFLOW_DB

    settings = settings_mod.load()
    server.start(settings)
    name = f"{AIRFLOW_DB}_test_{worker}"
    with admin_connection(settings) as admin, admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        try:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{AIRFLOW_DB}"')
            migrated = True
        except psycopg2.errors.ObjectInUse:
            cur.execute(f'CREATE DATABASE "{name}"')
            migrated = False
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = settings.local_url(name, "postgresql+psycopg2")
    if not migrated:
        subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True,
                       capture_output=True)


_worker_metadata_db()
# dag.test() of a DAG with deadline alerts fails in Airflow 3.3.2 once the run succeeds (see
# ecom_ml.deadlines); the tests of the deadlines themselves run the real scheduler with them on.
os.environ["ECOM_DEADLINE_ALERTS"] = "off"

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RETAIL_CSV = SHARED / "data" / "online_retail_ii_2009_2010" / "online_retail_ii_2009_2010.csv.gz"


@pytest.fixture(scope="session")
def settings() -> settings_mod.Settings:
    return settings_mod.load()


@pytest.fixture(scope="session")
def pg_server(settings: settings_mod.Settings) -> settings_mod.Settings:
    """The project-local server, started if `make test` has not already (idempotent)."""
    from ecom_ml.db import server

    server.start(settings)
    return settings


@pytest.fixture
def empty_db(pg_server: settings_mod.Settings) -> Iterator[str]:
    """URL of a brand-new, empty database on the real server; dropped afterwards."""
    from ecom_ml.db import scratch_database

    with scratch_database(pg_server, "test") as name:
        yield pg_server.local_url(name)


@pytest.fixture
def orders_db(empty_db: str) -> str:
    """URL of a fresh database with the orders schema migrated."""
    from ecom_ml.db.migrate import migrate

    migrate(empty_db)
    return empty_db


@pytest.fixture(scope="session")
def retail_csv() -> Path:
    if not RETAIL_CSV.exists():
        pytest.fail(f"the shared Online Retail II file is missing at {RETAIL_CSV}")
    return RETAIL_CSV


@pytest.fixture(scope="module")
def scratch_dbs(pg_server: settings_mod.Settings) -> Iterator[Callable[..., dict[str, str]]]:
    """Factory: ``scratch_dbs("orders", "airflow")`` -> {kind: name} of new empty databases on the
    real server, all dropped when the test module ends."""
    from ecom_ml.db import scratch_database

    with contextlib.ExitStack() as stack:
        yield lambda *kinds: {k: stack.enter_context(scratch_database(pg_server, f"test_{k}")) for k in kinds}



@pytest.fixture(scope="module")
def training_pipeline(pg_server, scratch_dbs, tmp_path_factory) -> Callable[..., dict[str, str]]:
    """Factory for the training-DAG tests: ``training_pipeline(start, days, **generator)`` generates
    ``days`` days of orders into a scratch orders DB, ingests each day through the ingest DAG's own
    task functions (extract, quality check, publish) into a new lake, and returns the environment a
    training DAG run needs: that lake, the orders DB, a scratch MLflow registry and local training.

    The days are ingested by the task functions, not the scheduler: what these tests show is the
    training DAG; the nightly tests (``tests/test_night.py``) run ingestion through the scheduler.
    """
    from datetime import datetime, timedelta, timezone

    from ecom_ml.db.migrate import migrate
    from ecom_ml.generator import GeneratorConfig, generate, parse_injections
    from ecom_ml.ingest.tasks import IngestConfig, check_quality, extract_to_raw, publish
    from ecom_ml.lake import Lake

    def build(start, days: int, **generator) -> dict[str, str]:
        names = scratch_dbs("orders", "mlflow")
        orders_url = pg_server.local_url(names["orders"])
        migrate(orders_url)
        config = {"customers": None, "products": None, "injections": parse_injections(""), **generator}
        generate(orders_url, GeneratorConfig(start=start, days=days, **config), progress=False)
        root = tmp_path_factory.mktemp("pipeline")
        lake_root = (root / "lake").as_uri()
        Lake(lake_root).init()  # lake roots are created on purpose (`ecom-ml lake init`), never by a write
        cfg = IngestConfig(lake_root=lake_root, orders_url=orders_url)
        for offset in range(days):
            day = start + timedelta(days=offset)
            begin = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            extract_to_raw(cfg, begin, begin + timedelta(days=1))
            publish(cfg, check_quality(cfg, begin, begin + timedelta(days=1)))
        return {
            "ECOM_LAKE_ROOT": lake_root,
            "AIRFLOW_CONN_ORDERS_DB": orders_url,
            "MLFLOW_TRACKING_URI": pg_server.local_url(names["mlflow"], "postgresql+psycopg2"),
            "ECOM_MLFLOW_ARTIFACTS": (root / "mlflow-artifacts").as_uri(),
            "ECOM_MODEL_CACHE": str(root / "model-cache"),
            "ECOM_TASK_RETRIES": "0",
            "ECOM_TRAINING_MODE": "local",
        }

    return build

def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A Redis for the Celery broker: the machine's service on 127.0.0.1:6379 where one runs, else a
    `redis-server` started here (Debian's package). Never skipped: without either, fail saying so."""
    if _redis_answers(6379):
        yield "redis://127.0.0.1:6379/7"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("no Redis on 127.0.0.1:6379 and no redis-server binary: apt-get install redis-server")
    from ecom_ml.localhost import free_port

    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not _redis_answers(port):
        assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
        time.sleep(0.1)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def s3_server(monkeypatch) -> Iterator[dict[str, str]]:
    """A local S3 API (moto's server mode, what s3fs's own tests use) on a free loopback port, with a
    ``lake`` bucket; yields the AWS_* environment that points s3fs, boto3 and MLflow at it (also set
    in this process)."""
    import boto3
    from moto.server import ThreadedMotoServer

    from ecom_ml.localhost import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "ecom-test", "AWS_SECRET_ACCESS_KEY": "ecom-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="lake")
    try:
        yield env
    finally:
        server.stop()


#: Test modules that take minutes, longest first (measured by `--durations` on the 2-core CI machine).
#: `make test` runs the suite on two xdist workers; handing these out first keeps one long module
#: from starting last and running alone at the end.
SLOW_FIRST = ("test_ui_browser", "test_night", "test_train_recommender", "test_train_propensity",
              "test_train_demand")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the slow modules first (the scheduler below hands work out in collection order)."""
    def rank(item: pytest.Item) -> int:
        name = item.module.__name__ if item.module else ""
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the order inside a module is kept


#: Modules whose tests are independent runs that may go to different workers (each test a unit).
PER_TEST = ("tests/test_night.py",)


def _work_unit(nodeid: str) -> str:
    """The module of a test, or the test itself for the modules of :data:`PER_TEST`."""
    module = nodeid.split("::", 1)[0]
    return nodeid if module in PER_TEST else module


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``make test``'s xdist scheduler (``-n 2 --dist loadscope``): every module is one unit of work,
    run on one worker in order, so module-scoped fixtures (a generated lake, a trained champion the
    next test reads) are built once and tests that build on each other keep their order; each of
    ``test_night``'s executor flavours is a unit of its own, so two nights run side by side.

    Why not xdist's own ``--dist loadgroup`` with ``xdist_group`` marks: pytest-xdist 3.8 marks a
    group by rewriting ``item._nodeid``, which pytest 9 no longer reads (a node's id is ``_id``), so
    the groups were silently ignored and a module's tests spread over both workers, each building
    the module's fixtures again. ``loadscope`` groups by ``_split_scope``, overridden here.
    """
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    return ModuleScheduling(config, log)
