"""`make airflow` / `make stop`: the real local Airflow starts with the DAGs loaded and stops cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil

from ecom_ml.localhost import free_port


def _cli() -> str:
    return str(Path(sys.executable).with_name("ecom-ml"))


def _ours(home: Path) -> list[psutil.Process]:
    """Processes started for this ECOM_HOME (Airflow components and their task processes)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("ECOM_HOME") == str(home):
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def test_ui_starts_with_the_dags_and_stops_without_orphans(tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "ECOM_HOME": str(home), "ECOM_PG_PORT": str(free_port()),
           "ECOM_MLFLOW_PORT": str(free_port()), "ECOM_AIRFLOW_PORT": str(free_port())}
    for key in [k for k in env if k.startswith("AIRFLOW")]:
        del env[key]  # let `ecom-ml` derive Airflow's settings from this ECOM_HOME
    run = lambda *args: subprocess.run([_cli(), *args], env=env, capture_output=True, text=True, timeout=300)  # noqa: E731
    try:
        assert run("setup").returncode == 0
        started = run("ui", "start")
        assert started.returncode == 0, started.stderr
        url = f"http://127.0.0.1:{env['ECOM_AIRFLOW_PORT']}"
        assert url in started.stdout and "login: admin / " in started.stdout
        password = started.stdout.split("login: admin / ")[1].split(";")[0]
        again = run("ui", "start")
        assert again.returncode == 0, "a second start is a no-op"
        assert run("ui", "status").returncode == 0

        request = urllib.request.Request(f"{url}/auth/token", method="POST",
                                         data=json.dumps({"username": "admin", "password": password}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            token = json.load(resp)["access_token"]
        dags = urllib.request.Request(f"{url}/api/v2/dags", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(dags, timeout=30) as resp:
            dag_ids = {d["dag_id"] for d in json.load(resp)["dags"]}
        assert {"orders_ingest", "train_recommender"} <= dag_ids
        components = {p.pid for p in _ours(home) if "airflow" in " ".join(p.cmdline())}
        assert len(components) >= 4
    finally:
        stopped = run("ui", "stop")
        run("mlflow", "stop")
        db_stopped = run("db", "stop")
    assert stopped.returncode == 0 and "stopped api-server" in stopped.stdout
    assert run("ui", "status").returncode == 3
    assert db_stopped.returncode == 0, db_stopped.stdout + db_stopped.stderr
    # A stopping server may take a moment to exit on a loaded machine; an orphan never does.
    psutil.wait_procs(list(_ours(home)), timeout=20)
    leftovers = [p for p in _ours(home) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert leftovers == [], [" ".join(p.cmdline()) for p in leftovers]
