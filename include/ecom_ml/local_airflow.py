"""Run Airflow's own components (api-server, scheduler, dag-processor, triggerer) on the local stack.

Airflow 3 tasks report to the API server's execution API, so even a headless scheduler needs an
api-server beside it. Each component runs in its own process group so that stopping the stack
leaves no orphaned task processes behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ecom_ml import settings as settings_mod
from ecom_ml.errors import EcomError
from ecom_ml.localhost import free_port, process_alive

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


@dataclass
class Stack:
    port: int
    log_dir: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def airflow(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run an `airflow` CLI command against this stack."""
        return subprocess.run([_airflow_bin(), *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise EcomError(f"airflow {name} exited with {proc.returncode}; log: {self.log_dir / (name + '.log')}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise EcomError(f"the Airflow API server did not become healthy on {self.url} within {timeout:.0f} s")

    def stop(self, timeout: float = 30) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.processes.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _private(path: str, flags: int) -> int:
    """``open(..., opener=_private)``: a new log file is created 0600."""
    return os.open(path, flags, 0o600)


def secure_files(cfg: settings_mod.Settings) -> None:
    """Owner-only modes for the files of the local stack that hold secrets (see README, Security)."""
    from ecom_ml.secrets import make_private

    for path in (cfg.airflow_home / "simple_auth_manager_passwords.json.generated",
                 cfg.airflow_home / "airflow.cfg", cfg.pg_password_file):
        make_private(path)
    for log in cfg.log_dir.glob("*.log") if cfg.log_dir.is_dir() else []:
        make_private(log)


def _airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def stack_env(port: int, overrides: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(settings_mod.airflow_environment(settings_mod.load()))
    env.update(
        {
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            # The scheduler's task-log server; a fixed port would collide between two stacks.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        }
    )
    env.update(overrides or {})
    return env


def start(components: tuple[str, ...], log_dir: Path, port: int | None = None,
          env_overrides: dict[str, str] | None = None) -> Stack:
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise EcomError(f"unknown Airflow component(s) {unknown} (known: {', '.join(COMPONENTS)})")
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(port=port, log_dir=log_dir, env=stack_env(port, env_overrides))
    for name in components:
        args = [_airflow_bin(), name]
        if name == "api-server":
            args += ["--port", str(port), "--host", "127.0.0.1"]
        log = open(log_dir / f"{name}.log", "ab", opener=_private)
        stack.processes[name] = subprocess.Popen(
            # umask 077: what Airflow writes (its generated UI passwords, logs) is the owner's only.
            args, env=stack.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, umask=0o077
        )
    return stack


# --------------------------------------------------------------------------------------------------
# The long-running local Airflow behind `make airflow` / `make stop`.
# --------------------------------------------------------------------------------------------------

DEFAULT_UI_PORT = 58080


def _pid_dir(cfg: settings_mod.Settings) -> Path:
    return cfg.airflow_home / "pids"


def _running(cfg: settings_mod.Settings) -> dict[str, int]:
    """Components whose pid file names a live process."""
    found = {}
    for name in COMPONENTS:
        pidfile = _pid_dir(cfg) / f"{name}.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().split()[0])
            if process_alive(pid):
                found[name] = pid
    return found


def ui_port() -> int:
    return settings_mod.port_from_env("ECOM_AIRFLOW_PORT", DEFAULT_UI_PORT)


def login(cfg: settings_mod.Settings) -> str:
    """The UI login of Airflow's simple auth manager (it generates the password on first start)."""
    import json

    generated = cfg.airflow_home / "simple_auth_manager_passwords.json.generated"
    try:
        users = json.loads(generated.read_text())
    except (OSError, ValueError):
        return f"see {generated}"
    return ", ".join(f"{user} / {password}" for user, password in users.items())


def start_background(cfg: settings_mod.Settings | None = None) -> str:
    """Start the api-server, scheduler, dag-processor and triggerer detached; idempotent."""
    from ecom_ml.localhost import file_lock, port_in_use

    cfg = cfg or settings_mod.load()
    port = ui_port()
    with file_lock(cfg.home / "airflow.lock"):
        running = _running(cfg)
        if "api-server" not in running and port_in_use("127.0.0.1", port):
            raise EcomError(f"port {port} on 127.0.0.1 is already in use by another program: "
                            f"choose another with ECOM_AIRFLOW_PORT")
        _pid_dir(cfg).mkdir(parents=True, exist_ok=True)
        env = stack_env(port)
        for name in COMPONENTS:
            if name in running:
                continue
            args = [_airflow_bin(), name] + (["--port", str(port), "--host", "127.0.0.1"] if name == "api-server" else [])
            cfg.log_dir.mkdir(parents=True, exist_ok=True)
            with open(cfg.log_dir / f"airflow-{name}.log", "ab", opener=_private) as log:
                proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        cwd=str(cfg.home), umask=0o077)
            (_pid_dir(cfg) / f"{name}.pid").write_text(f"{proc.pid} {port}\n")
    stack = Stack(port=port, log_dir=cfg.log_dir, env={})
    stack.wait_healthy()
    secure_files(cfg)  # written by an Airflow started before the umask above
    return f"Airflow UI: {stack.url}  (login: {login(cfg)}; logs: {cfg.log_dir}/airflow-*.log)"


def stop_background(cfg: settings_mod.Settings | None = None, timeout: float = 30) -> str:
    """Stop every component and the task processes they started (whole process groups)."""
    from ecom_ml.localhost import file_lock

    cfg = cfg or settings_mod.load()
    with file_lock(cfg.home / "airflow.lock"):
        running = _running(cfg)
        for pid in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(process_alive(pid) for pid in running.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for pidfile in _pid_dir(cfg).glob("*.pid") if _pid_dir(cfg).exists() else []:
            pidfile.unlink()
    return f"Airflow: stopped {', '.join(running) or 'nothing (not running)'}"


def status_background(cfg: settings_mod.Settings | None = None) -> tuple[bool, str]:
    cfg = cfg or settings_mod.load()
    running = _running(cfg)
    if not running:
        return False, "Airflow: not running"
    return True, "Airflow: running " + ", ".join(f"{name} (pid {pid})" for name, pid in running.items()) + \
        f" at http://127.0.0.1:{ui_port()}"
