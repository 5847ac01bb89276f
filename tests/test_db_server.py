"""The project-local PostgreSQL: start/stop/restart, and the bad situations a user runs into.

Each test runs its own server under its own ECOM_HOME and port, so the shared server the other tests
use is never disturbed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import psycopg2
import pytest

from ecom_ml import settings as settings_mod
from ecom_ml.db import server
from ecom_ml.localhost import free_port


@pytest.fixture
def own_server(tmp_path: Path):
    cfg = replace(settings_mod.load(), home=tmp_path / "home", pg_port=free_port())
    yield cfg
    server.stop(cfg)


def _env(cfg: settings_mod.Settings) -> dict[str, str]:
    return {**os.environ, "ECOM_HOME": str(cfg.home), "ECOM_PG_PORT": str(cfg.pg_port)}


def _cli() -> str:
    return str(Path(sys.executable).with_name("ecom-ml"))


def test_start_creates_cluster_and_databases_and_is_idempotent(own_server):
    first = server.start(own_server)
    assert first.running and first.port == own_server.pg_port
    assert first.version == str(server.binary_major_version())
    second = server.start(own_server)
    assert second.pid == first.pid, "a second start must reuse the running server"
    with psycopg2.connect(own_server.local_url("postgres")) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        names = {row[0] for row in cur.fetchall()}
    assert set(settings_mod.LOCAL_DATABASES) <= names


def test_stop_start_restart_keeps_data(own_server):
    server.start(own_server)
    with psycopg2.connect(own_server.local_url("orders")) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    stopped = server.stop(own_server)
    assert not stopped.running
    assert not server.stop(own_server).running, "stopping a stopped server is a no-op"
    restarted = server.start(own_server)
    assert restarted.running
    with psycopg2.connect(own_server.local_url("orders")) as conn, conn.cursor() as cur:
        cur.execute("SELECT x FROM kept")
        assert cur.fetchone() == (42,)


def test_recovers_after_the_server_was_killed(own_server):
    pid = server.start(own_server).pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while server.status(own_server).running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not server.status(own_server).running
    again = server.start(own_server)
    assert again.running and again.pid != pid


def test_port_in_use_is_a_clear_error(own_server):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", own_server.pg_port))
        blocker.listen(1)
        done = subprocess.run([_cli(), "db", "start"], env=_env(own_server), capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"port {own_server.pg_port}" in lines[0] and "ECOM_PG_PORT" in lines[0]
    assert not server.status(own_server).running


def test_data_dir_of_an_older_postgres_is_refused_untouched(own_server):
    pgdata = own_server.pgdata
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("15\n")
    (pgdata / "base").mkdir()
    with pytest.raises(server.ServerError, match=r"PostgreSQL 15 cluster .* runs PostgreSQL 1[0-9]"):
        server.start(own_server)
    assert (pgdata / "PG_VERSION").read_text() == "15\n", "the old cluster must be left as it was"
    assert sorted(p.name for p in pgdata.iterdir()) == ["PG_VERSION", "base"]


def test_parallel_starts_give_one_server(own_server):
    procs = [
        subprocess.Popen([_cli(), "db", "start"], env=_env(own_server), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    pids = {out.split("pid ")[1].split(",")[0] for out, _ in outs}
    assert len(pids) == 1, f"parallel starts must share one server, got pids {pids}"


def test_status_and_url_commands(own_server):
    done = subprocess.run([_cli(), "db", "status"], env=_env(own_server), capture_output=True, text=True)
    assert done.returncode == 3 and "not initialised" in done.stdout
    server.start(own_server)
    done = subprocess.run([_cli(), "db", "status"], env=_env(own_server), capture_output=True, text=True)
    assert done.returncode == 0 and f"127.0.0.1:{own_server.pg_port}" in done.stdout
    url = subprocess.run([_cli(), "db", "url", "--database", "airflow"], env=_env(own_server),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert url == f"postgresql://postgres@127.0.0.1:{own_server.pg_port}/airflow"
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        assert cur.fetchone() == ("airflow",)


def test_bad_port_setting_is_a_clear_error(own_server):
    env = {**_env(own_server), "ECOM_PG_PORT": "fivefour"}
    done = subprocess.run([_cli(), "db", "start"], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "ecom-ml: error: ECOM_PG_PORT='fivefour' is not an integer"


def test_two_setups_at_once_share_one_stack(tmp_path):
    """`make demo` twice in parallel: both setups succeed against one server and one MLflow."""
    cfg = replace(settings_mod.load(), home=tmp_path / "home", pg_port=free_port())
    env = {**_env(cfg), "ECOM_MLFLOW_PORT": str(free_port())}
    try:
        procs = [subprocess.Popen([_cli(), "setup"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        pg_pids = {out.split("PostgreSQL: running (PostgreSQL 18, pid ")[1].split(",")[0] for out, _ in outs}
        mlflow_pids = {out.split("MLflow: running (healthy, pid ")[1].split(",")[0] for out, _ in outs}
        assert len(pg_pids) == 1 and len(mlflow_pids) == 1, (pg_pids, mlflow_pids)
        with psycopg2.connect(cfg.local_url("orders")) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM schema_migrations")
            assert cur.fetchone()[0] >= 1
    finally:
        subprocess.run([_cli(), "mlflow", "stop"], env=env, capture_output=True)
        server.stop(cfg)
