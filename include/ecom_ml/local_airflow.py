"""Run Airflow's own components (api-server, scheduler, dag-processor, triggerer) on the local stack.

Airflow 3 tasks report to the API server's execution API, so even a headless scheduler needs an
api-server beside it. Each component runs in its own process group so that stopping the stack
leaves no orphaned task processes behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ecom_ml import settings as settings_mod
from ecom_ml.errors import EcomError

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        log = open(log_dir / f"{name}.log", "ab")
        stack.processes[name] = subprocess.Popen(
            args, env=stack.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return stack
