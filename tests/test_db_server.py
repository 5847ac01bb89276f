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
from os_users import other_user, run_as  # noqa: F401 - other_user is a fixture


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
    password = own_server.pg_password_file.read_text().strip()
    assert url == f"postgresql://postgres:{password}@127.0.0.1:{own_server.pg_port}/airflow", \
        "`db url` prints the real URL: the user asked for it"
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


# ---- authentication (issue 12, item 6) ------------------------------------------------------------


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _hba_methods(cfg: settings_mod.Settings) -> set[str]:
    """The authentication methods of pg_hba.conf's rules (the last field of each non-comment line)."""
    return {line.split()[-1] for line in (cfg.pgdata / "pg_hba.conf").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")}


def _connect_error(dsn: str) -> str:
    with pytest.raises(psycopg2.OperationalError) as info:
        psycopg2.connect(dsn, connect_timeout=5).close()
    return str(info.value)


def test_every_connection_needs_the_generated_password(own_server):
    server.start(own_server)
    secret_file = own_server.pg_password_file
    assert _mode(secret_file) == 0o600 and _mode(secret_file.parent) == 0o700
    password = secret_file.read_text().strip()
    assert len(password) >= 32
    assert _hba_methods(own_server) == {"scram-sha-256"}

    with psycopg2.connect(own_server.local_url("orders")) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
    port = own_server.pg_port
    assert "no password supplied" in _connect_error(f"host=127.0.0.1 port={port} user=postgres dbname=postgres")
    assert "password authentication failed" in _connect_error(
        f"host=127.0.0.1 port={port} user=postgres password=guess dbname=postgres")
    assert "no password supplied" in _connect_error(
        f"host={own_server.run_dir} port={port} user=postgres dbname=postgres"), "the Unix socket too"


def test_a_wrong_password_is_one_line_naming_the_file(own_server, monkeypatch):
    server.start(own_server)
    server.stop(own_server)
    monkeypatch.setenv("ECOM_PG_PASSWORD", "not-the-password")
    with pytest.raises(server.ServerError) as info:
        server.start(own_server)
    message = str(info.value)
    assert message.startswith(f"PostgreSQL on port {own_server.pg_port} refused the project's password (")
    assert "not-the-password" not in message and "\n" not in message


def test_a_trust_data_directory_of_an_earlier_version_is_upgraded_in_place(own_server):
    """What `ecom-ml setup` of an older checkout left: initdb --auth=trust, the server running."""
    cfg = own_server
    cfg.home.mkdir(parents=True)
    user, _ = server._run_as()
    if user is not None:
        server._ensure_traversable(server.bin_dir())
        server._ensure_traversable(cfg.home)
    cfg.pgdata.mkdir(mode=0o700)
    server._chown(cfg.pgdata, user)
    done = server._pg("initdb", ["-D", str(cfg.pgdata), "--auth=trust", "--username=postgres",
                                 "--encoding=UTF8", "--locale=C.UTF-8"], timeout=120)
    assert done.returncode == 0, done.stderr
    for folder in (cfg.run_dir, cfg.log_dir):
        folder.mkdir(parents=True, exist_ok=True)
        server._chown(folder, user)
    done = server._pg("pg_ctl", ["-D", str(cfg.pgdata), "-l", str(cfg.log_dir / "postgres.log"), "-w",
                                 "-o", f"-p {cfg.pg_port} -k {cfg.run_dir} -c listen_addresses=127.0.0.1", "start"])
    assert done.returncode == 0, done.stderr
    trust_dsn = f"host=127.0.0.1 port={cfg.pg_port} user=postgres dbname=postgres"
    with psycopg2.connect(trust_dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
    conn.close()
    assert not cfg.pg_password_file.exists()
    pid = server.status(cfg).pid

    upgraded = server.start(cfg)
    assert upgraded.pid == pid, "upgraded while running: no restart needed"
    assert _mode(cfg.pg_password_file) == 0o600
    assert _hba_methods(cfg) == {"scram-sha-256"}
    assert "no password supplied" in _connect_error(trust_dsn)
    with psycopg2.connect(cfg.local_url("postgres")) as conn, conn.cursor() as cur:
        cur.execute("SELECT x FROM kept")
        assert cur.fetchone() == (7,), "the data survived"
    conn.close()
    server.stop(cfg)
    assert server.start(cfg).running, "and it starts again with password authentication"
    assert "no password supplied" in _connect_error(trust_dsn)


def test_another_os_user_cannot_connect_or_read_the_secrets(own_server, other_user):
    server.start(own_server)
    psql = str(server.bin_dir() / "psql")
    server._ensure_traversable(server.bin_dir())
    port = own_server.pg_port
    for target in (f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
                   f"host={own_server.run_dir} port={port} user=postgres dbname=postgres",
                   f"host=127.0.0.1 port={port} user={other_user} dbname=postgres"):
        done = run_as(other_user, psql, "-w", target, "-c", "COPY (SELECT 1) TO PROGRAM 'id'")
        assert done.returncode != 0, f"{other_user} connected with {target!r}: {done.stdout}"
        assert "no password supplied" in done.stderr or "password authentication failed" in done.stderr, done.stderr
    assert run_as(other_user, psql, "--version").returncode == 0, "the refusal above was the server's, not a missing psql"
    for secret in (own_server.pg_password_file,):
        done = run_as(other_user, "cat", str(secret))
        assert done.returncode != 0 and "Permission denied" in done.stderr, (secret, done)
