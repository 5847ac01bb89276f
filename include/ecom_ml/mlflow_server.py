"""Where MLflow lives, and the project-local ``mlflow server`` that the embedded stack runs.

Decision: the local default is a real ``mlflow server`` process, started by the project like the
database (``ecom-ml mlflow start``, pid file in ``.ecom/``), and :func:`tracking_uri` points at it.
Why a server rather than letting every task open the PostgreSQL store directly:

* the pipeline then talks to MLflow exactly as it does in docker-compose and production (the REST
  client against ``MLFLOW_TRACKING_URI``), so the local run exercises the deployed code path;
* one process owns the MLflow schema (it creates/validates the tables on start), instead of every
  Airflow task racing to initialise an empty database;
* users get the MLflow UI at ``ecom-ml mlflow url`` with the registry, aliases and gate reports.

``MLFLOW_TRACKING_URI`` in the environment always wins (``http://mlflow:5000`` in compose; a
``postgresql+psycopg2://…`` URL also works and is what the tests use, to skip a server per test).

Artifacts: the local server is started with ``--default-artifact-root`` = :func:`artifacts_uri`
(``file://…/.ecom/mlflow-artifacts`` unless ``ECOM_MLFLOW_ARTIFACTS`` says otherwise) and
``--no-serve-artifacts``. Every experiment on the local database therefore has a plain ``file://``
(or ``s3://``) location that works both through the server and through the database URL; with the
artifact proxy (``mlflow-artifacts:/``) a client that uses the database URL could not read them.
The compose stack, whose workers are other containers, uses the proxy (``--serve-artifacts``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ecom_ml import secrets
from ecom_ml import settings as settings_mod
from ecom_ml.errors import EcomError
from ecom_ml.localhost import file_lock, port_in_use, process_alive
from ecom_ml.settings import ConfigError, Settings, port_from_env

DEFAULT_MLFLOW_PORT = 55000
LOCAL_HOST = "127.0.0.1"


class MlflowServerError(EcomError):
    """The local MLflow server cannot be brought to the state asked for; the message says why."""


# --------------------------------------------------------------------------------------------------
# Configuration: one place that answers "which MLflow" for the CLI, the registry and the DAGs.
# --------------------------------------------------------------------------------------------------


def mlflow_port() -> int:
    """``ECOM_MLFLOW_PORT`` (default 55000): the local server's loopback port."""
    return port_from_env("ECOM_MLFLOW_PORT", DEFAULT_MLFLOW_PORT)


def server_url(port: int | None = None) -> str:
    """URL of the project-local server (whether or not it is running)."""
    return f"http://{LOCAL_HOST}:{port or mlflow_port()}"


def tracking_uri() -> str:
    """The MLflow tracking + registry URI the pipeline uses.

    ``MLFLOW_TRACKING_URI`` if set (compose, production, tests), else the local server's URL.
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or server_url()


def backend_store_uri(settings: Settings | None = None) -> str:
    """Database the local server keeps runs and the registry in (``ECOM_MLFLOW_DB_URL`` overrides)."""
    cfg = settings or settings_mod.load()
    return os.environ.get("ECOM_MLFLOW_DB_URL") or cfg.local_url(settings_mod.MLFLOW_DB, "postgresql+psycopg2")


def artifacts_uri(settings: Settings | None = None) -> str:
    """Root URI for run artifacts: ``ECOM_MLFLOW_ARTIFACTS`` or ``file://<ECOM_HOME>/mlflow-artifacts``."""
    raw = os.environ.get("ECOM_MLFLOW_ARTIFACTS")
    if raw:
        if "://" not in raw:
            # A bare path is a common way to write it; MLflow wants a URI.
            return Path(raw).expanduser().resolve().as_uri()
        return raw.rstrip("/")
    cfg = settings or settings_mod.load()
    return (cfg.home / "mlflow-artifacts").as_uri()


def redact(url: str) -> str:
    """A URL with any password replaced, for messages and the pid file."""
    return secrets.redact_text(url)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``http://user:secret@host:port`` -> (``http://host:port``, user, secret), percent-decoded.

    MLflow's REST client does not take credentials from the URL (``requests`` would send them, but
    the host check and ``urllib`` treat ``user:secret@host`` as a host name: "Name or service not
    known"); it reads them from ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``.
    """
    parsed = urllib.parse.urlsplit(uri)
    if not is_http(uri) or (parsed.username is None and parsed.password is None):
        return uri, None, None
    host = parsed.netloc.rsplit("@", 1)[1]
    bare = urllib.parse.urlunsplit(parsed._replace(netloc=host))
    user = urllib.parse.unquote(parsed.username) if parsed.username is not None else None
    secret = urllib.parse.unquote(parsed.password) if parsed.password is not None else None
    return bare, user, secret


#: MLflow's own knobs for its REST client (read per request); ours set them unless the user did.
_MLFLOW_TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"
_MLFLOW_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
_MLFLOW_BACKOFF_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
DEFAULT_TIMEOUT_SECONDS = 20
DEFAULT_RETRIES = 2


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def http_limits() -> tuple[int, int]:
    """(seconds per request, retries) of every MLflow REST call the pipeline makes.

    ``ECOM_MLFLOW_TIMEOUT_SECONDS`` (default 20) and ``ECOM_MLFLOW_RETRIES`` (default 2). MLflow's
    defaults (120 s, 7 retries with a doubling backoff) let one call to a dead or hung server block
    a task for many minutes; a nightly step is better off failing within a minute and being retried
    by Airflow, which is safe because registration and promotion are idempotent. Without ours,
    MLflow's own ``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` are used when
    the user set them.
    """

    def pick(ours: str, theirs: str, default: int, minimum: int) -> int:
        if os.environ.get(ours):
            return _env_int(ours, default, minimum)
        if os.environ.get(theirs) and os.environ[theirs] != _applied.get(theirs):
            return _env_int(theirs, default, minimum)
        return default

    return (pick("ECOM_MLFLOW_TIMEOUT_SECONDS", _MLFLOW_TIMEOUT_ENV, DEFAULT_TIMEOUT_SECONDS, 1),
            pick("ECOM_MLFLOW_RETRIES", _MLFLOW_RETRIES_ENV, DEFAULT_RETRIES, 0))


#: What :func:`configure_client` put into MLflow's variables (to tell ours from the user's).
_applied: dict[str, str] = {}


def configure_client(uri: str) -> str:
    """Prepare this process's MLflow REST client for ``uri``; returns the URI to hand to MLflow.

    Bounded timeouts (:func:`http_limits`) go into MLflow's environment settings (MLflow reads them
    on every request); credentials in the URI move to ``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD`` (where MLflow's client looks for them) and the password is
    registered with Airflow's secrets masker, so no log line of a task shows it.
    """
    timeout, retries = http_limits()
    for name, value in ((_MLFLOW_TIMEOUT_ENV, timeout), (_MLFLOW_RETRIES_ENV, retries), (_MLFLOW_BACKOFF_ENV, 1)):
        if name == _MLFLOW_BACKOFF_ENV and os.environ.get(name) and os.environ[name] != _applied.get(name):
            continue  # the user's backoff
        os.environ[name] = _applied[name] = str(value)
    secrets.install_log_redaction()
    bare, user, secret = split_credentials(uri)
    if user is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
    if secret is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = secret
        secrets.mask(secret)
    if os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        secrets.mask(os.environ["MLFLOW_TRACKING_PASSWORD"])
    return bare


_FAILURE_REASONS = (
    ("Connection refused", "connection refused"),
    ("Read timed out", "no answer within the timeout"),
    ("timed out", "no answer within the timeout"),
    ("timeout", "no answer within the timeout"),
    ("Name or service not known", "unknown host"),
    ("Temporary failure in name resolution", "unknown host"),
    ("RemoteDisconnected", "the server closed the connection"),
    ("Connection aborted", "the server closed the connection"),
    ("Connection reset", "the server closed the connection"),
    ("ProtocolError", "the server closed the connection"),
    ("No route to host", "no route to host"),
    ("error responses", "it kept answering with server errors"),
)


def connection_failure(text: str) -> str | None:
    """The short reason when an MLflow/requests error says the server could not be talked to
    (refused, timed out, dropped), else None (an answer from the server, e.g. a 404)."""
    markers = ("failed with exception", "failed with timeout exception", "Max retries exceeded",
               "HTTPConnectionPool", "HTTPSConnectionPool")
    if not any(marker in text for marker in markers):
        return None  # the server answered (an MLflow error code or an HTTP status): its message says why
    for needle, reason in _FAILURE_REASONS:
        if needle in text:
            return reason
    return "no usable answer"


def unreachable_line(uri: str, reason: str) -> str:
    """One line for a tracking server that stopped answering mid-operation."""
    timeout, retries = http_limits()
    return (
        f"MLflow tracking server {redact(uri)} did not answer ({reason}; {retries + 1} tries of at most "
        f"{timeout} s, ECOM_MLFLOW_TIMEOUT_SECONDS/ECOM_MLFLOW_RETRIES): the step is safe to retry once it is back"
    )


def is_http(uri: str) -> bool:
    return urllib.parse.urlsplit(uri).scheme in ("http", "https")


def check_http_reachable(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when a tracking server does not answer.

    MLflow's REST client retries a refused connection with backoff before it raises a long
    traceback; a task should instead say at once which URL is down and what to do. Credentials in
    the URI (or ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) are sent as HTTP basic auth, never as
    part of the host name, and never shown.
    """
    bare, user, secret = split_credentials(uri)
    user = user if user is not None else os.environ.get("MLFLOW_TRACKING_USERNAME")
    secret = secret if secret is not None else os.environ.get("MLFLOW_TRACKING_PASSWORD")
    request = urllib.request.Request(f"{bare.rstrip('/')}/health")
    if user is not None:
        token = base64.b64encode(f"{user}:{secret or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            if resp.status == 200:
                return
            reason = f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", exc)) or type(exc).__name__
    hint = (
        "start it with `ecom-ml mlflow start`"
        if uri.rstrip("/") == server_url() and not os.environ.get("MLFLOW_TRACKING_URI")
        else "check MLFLOW_TRACKING_URI"
    )
    raise MlflowServerError(f"MLflow tracking server {redact(uri)} is not reachable ({reason}): {hint}")


# --------------------------------------------------------------------------------------------------
# The local server process.
# --------------------------------------------------------------------------------------------------


def pid_file(settings: Settings) -> Path:
    return settings.home / "mlflow.pid"


def log_file(settings: Settings) -> Path:
    return settings.log_dir / "mlflow.log"


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    healthy: bool
    pid: int | None
    port: int | None
    url: str | None
    backend: str | None
    artifacts: str | None
    log: Path

    def describe(self) -> str:
        if not self.running:
            return f"stopped (log: {self.log})"
        health = "healthy" if self.healthy else "not answering yet"
        return (
            f"running ({health}, pid {self.pid}, {self.url}, backend {self.backend}, "
            f"artifacts {self.artifacts}, log {self.log})"
        )


def _is_mlflow_server(pid: int) -> bool:
    """Guard against pid reuse: the recorded pid must still be an ``mlflow server`` process."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return process_alive(pid)  # no /proc (macOS): trust liveness
    return any(b"mlflow" in part for part in argv) and b"server" in argv


def _read_pid_file(settings: Settings) -> dict | None:
    try:
        data = json.loads(pid_file(settings).read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


def status(settings: Settings | None = None) -> ServerStatus:
    cfg = settings or settings_mod.load()
    record = _read_pid_file(cfg)
    if record and process_alive(record["pid"]) and _is_mlflow_server(record["pid"]):
        url = record.get("url") or server_url(record.get("port"))
        return ServerStatus(
            running=True,
            healthy=_healthy(url),
            pid=record["pid"],
            port=record.get("port"),
            url=url,
            backend=record.get("backend"),
            artifacts=record.get("artifacts"),
            log=log_file(cfg),
        )
    return ServerStatus(False, False, None, None, None, None, None, log_file(cfg))


def check_backend_reachable(
    uri: str, *, hint: str = "start it with `ecom-ml db start` (or fix ECOM_MLFLOW_DB_URL)"
) -> None:
    """A PostgreSQL backend must accept connections before we spend seconds starting MLflow (or
    before a client hits MLflow's store, whose connection errors are long SQLAlchemy tracebacks)."""
    scheme = urllib.parse.urlsplit(uri).scheme
    if not scheme.startswith("postgresql"):
        return
    import psycopg2

    libpq_url = "postgresql" + uri[len(scheme):]
    try:
        psycopg2.connect(libpq_url, connect_timeout=5).close()
    except psycopg2.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MlflowServerError(
            f"MLflow's database {redact(uri)} is not reachable ({first}): {hint}"
        ) from None


_START_MARKER = "==== ecom-ml mlflow start"


def _tail(path: Path) -> str:
    """The telling line of the latest start's log (the log is appended to across starts)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "no server log"
    text = text.rsplit(_START_MARKER, 1)[-1]
    lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
    # The traceback's last line names the error; uvicorn's shutdown chatter is less useful.
    for line in reversed(lines):
        if "Error" in line or "error" in line or "Exception" in line:
            return line
    return lines[-1] if lines else "empty server log"


def _workers() -> int:
    raw = os.environ.get("ECOM_MLFLOW_WORKERS", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"ECOM_MLFLOW_WORKERS={raw!r} is not a positive integer")
    return int(raw)


def _start_timeout() -> float:
    raw = os.environ.get("ECOM_MLFLOW_START_TIMEOUT", "120")
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"ECOM_MLFLOW_START_TIMEOUT={raw!r} is not a number of seconds") from None


def server_command(settings: Settings, port: int) -> list[str]:
    """The ``mlflow server`` command line of the local server.

    The backend URI travels in the environment (``MLFLOW_BACKEND_STORE_URI``, which ``mlflow server``
    reads for ``--backend-store-uri``), so a database password never shows in ``ps``.
    """
    return [
        sys.executable, "-m", "mlflow", "server",
        "--default-artifact-root", artifacts_uri(settings),
        "--no-serve-artifacts",
        "--host", LOCAL_HOST,
        "--port", str(port),
        # One worker: the laptop-class default machine has 2 cores and the registry traffic of a
        # nightly pipeline is a few requests a minute.
        "--workers", str(_workers()),
    ]


def _server_env(backend: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update({
        "MLFLOW_BACKEND_STORE_URI": backend,
        "PYTHONUNBUFFERED": "1",
        # No usage telemetry from a project server, and no GenAI job runner processes we never use.
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    })
    return env


def _terminate_group(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM the server's process group (mlflow CLI + uvicorn), SIGKILL what is left after timeout."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    targets = (lambda sig: os.killpg(pgid, sig)) if pgid == pid else (lambda sig: os.kill(pid, sig))
    with contextlib.suppress(ProcessLookupError):
        targets(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if process_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            targets(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


def start(settings: Settings | None = None) -> ServerStatus:
    """Start the local server unless it already runs (idempotent); wait until it answers /health."""
    cfg = settings or settings_mod.load()
    port = mlflow_port()
    with file_lock(cfg.home / "mlflow.lock"):
        current = status(cfg)
        if current.running:
            if current.port != port:
                raise MlflowServerError(
                    f"the project's MLflow server already runs on port {current.port}, not ECOM_MLFLOW_PORT="
                    f"{port}: run `ecom-ml mlflow stop` first"
                )
            wanted = {"backend": redact(backend_store_uri(cfg)), "artifacts": artifacts_uri(cfg)}
            running_with = {"backend": current.backend, "artifacts": current.artifacts}
            if (current.backend != wanted["backend"] and current.artifacts == wanted["artifacts"]
                    and _without_password(current.backend or "") == _without_password(wanted["backend"])):
                # Started by an earlier version, before the database had a password: its new
                # connections would be refused, so it is restarted with the credentialed URL.
                _terminate_group(current.pid)
                pid_file(cfg).unlink(missing_ok=True)
                return _start_locked(cfg, port)
            for key, value in wanted.items():
                if running_with[key] != value:
                    raise MlflowServerError(
                        f"the project's MLflow server already runs with {key} {running_with[key]}, not {value}: "
                        f"run `ecom-ml mlflow stop` first"
                    )
            if not current.healthy:
                _wait_healthy(cfg, current.pid, current.url or server_url(port))
            return status(cfg)
        pid_file(cfg).unlink(missing_ok=True)  # stale: its process is gone
        return _start_locked(cfg, port)


def _without_password(url: str) -> str:
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1@", url)


def _start_locked(cfg: Settings, port: int) -> ServerStatus:
    """Start the server (the caller holds the lock and has checked nothing runs)."""
    if port_in_use(LOCAL_HOST, port):
        raise MlflowServerError(
            f"port {port} on {LOCAL_HOST} is already in use by another program: stop it or choose another "
            f"port with ECOM_MLFLOW_PORT"
        )
    backend = backend_store_uri(cfg)
    check_backend_reachable(backend)
    artifacts = artifacts_uri(cfg)
    if artifacts.startswith("file://"):
        Path(urllib.parse.unquote(urllib.parse.urlsplit(artifacts).path)).mkdir(parents=True, exist_ok=True)
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    log = log_file(cfg)
    secrets.make_private(log)  # from an earlier version, created 0644
    with open(log, "a", opener=lambda path, flags: os.open(path, flags, 0o600)) as handle:
        handle.write(f"\n{_START_MARKER} {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
        handle.flush()
        proc = subprocess.Popen(
            server_command(cfg, port),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=_server_env(backend),
            cwd=str(cfg.home),
            # Own session: it outlives the CLI, and `stop` can signal the whole process group.
            start_new_session=True,
            umask=0o077,  # its files (logs, artifacts it writes) are the owner's only
        )
    url = server_url(port)
    record = {
        "pid": proc.pid,
        "port": port,
        "url": url,
        "backend": redact(backend),
        "artifacts": artifacts,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = pid_file(cfg).with_suffix(".pid.tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(pid_file(cfg))
    try:
        _wait_healthy(cfg, proc.pid, url)
    except BaseException:
        _terminate_group(proc.pid)
        pid_file(cfg).unlink(missing_ok=True)
        raise
    return status(cfg)


def _wait_healthy(cfg: Settings, pid: int | None, url: str) -> None:
    timeout = _start_timeout()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid is not None and not process_alive(pid):
            raise MlflowServerError(
                f"the MLflow server exited during start-up: {_tail(log_file(cfg))} (log: {log_file(cfg)})"
            )
        if _healthy(url, timeout=2):
            return
        time.sleep(0.3)
    raise MlflowServerError(
        f"the MLflow server did not answer {url}/health within {timeout:.0f} s: {_tail(log_file(cfg))} "
        f"(log: {log_file(cfg)})"
    )


def stop(settings: Settings | None = None) -> ServerStatus:
    """Stop the local server if it runs (a no-op otherwise) and remove its pid file."""
    cfg = settings or settings_mod.load()
    with file_lock(cfg.home / "mlflow.lock"):
        current = status(cfg)
        if current.running and current.pid is not None:
            _terminate_group(current.pid)
            if process_alive(current.pid):
                raise MlflowServerError(f"the MLflow server (pid {current.pid}) did not stop")
        pid_file(cfg).unlink(missing_ok=True)
        return status(cfg)


# --------------------------------------------------------------------------------------------------
# CLI: `ecom-ml mlflow start|stop|status|url` (also `python -m ecom_ml.mlflow_server …`).
# --------------------------------------------------------------------------------------------------


def _cmd_mlflow(args: argparse.Namespace) -> int:
    if args.action == "start":
        state = start()
        print(state.describe())
        print(f"MLflow UI: {state.url}")
    elif args.action == "stop":
        print(stop().describe())
    elif args.action == "status":
        state = status()
        print(state.describe())
        return 0 if state.running else 3
    elif args.action == "url":
        print(tracking_uri())
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``mlflow start|stop|status|url`` on the ``ecom-ml`` parser's subcommands."""
    parser = subparsers.add_parser(
        "mlflow",
        help="manage the project-local MLflow tracking server / model registry",
        description="`status` exits 3 when the server is not running; `url` prints the tracking URI the "
        "pipeline uses (MLFLOW_TRACKING_URI if set, else the local server).",
    )
    parser.add_argument("action", choices=["start", "stop", "status", "url"])
    parser.set_defaults(func=_cmd_mlflow)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point with the same parser and one-line errors as ``ecom-ml``."""
    parser = argparse.ArgumentParser(prog="ecom-ml")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["mlflow", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except EcomError as exc:
        print(f"ecom-ml: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
