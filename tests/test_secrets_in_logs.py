"""No secret in anything the project prints or logs (issue 12, item 5), and the local stack's files
are its owner's only (item 6).

A failing day of ``orders_ingest`` runs through the real scheduler (LocalExecutor, api-server,
dag-processor) and then through ``airflow dags test``, with a secret on every Connection the
project uses: the orders database's password (the real one of the project's server), the Slack
webhook's token (its URL path), the SMTP password, and MLflow credentials in the tracking URI. The
webhook points at a closed port so that the Slack SDK retries and logs its "Going to retry the same
request: POST …" line, which is where the webhook URL leaked. Then every file the run wrote is
searched for each secret.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from ecom_ml import local_airflow
from ecom_ml.generator import GeneratorConfig, generate, parse_injections
from ecom_ml.localhost import free_port
from os_users import other_user, run_as  # noqa: F401 - other_user is a fixture

BAD_DAY = date(2024, 1, 2)


class _Inbox:
    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        return "250 OK"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _files_with(root: Path, secret: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if secret.encode() in path.read_bytes():
                    hits.append(str(path.relative_to(root)))
            except OSError:
                pass
    return hits


def _wait_for_run(stack: local_airflow.Stack, run_id: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        done = stack.airflow("dags", "list-runs", "orders_ingest", "-o", "json")
        if done.returncode == 0:
            listed = next((line for line in done.stdout.splitlines() if line.startswith("[")), "[]")
            runs = {r["run_id"]: r["state"] for r in json.loads(listed)}
            state = runs.get(run_id, "unknown")
            if state in ("success", "failed"):
                return state
        time.sleep(3)
    raise AssertionError(f"run {run_id} did not finish within {timeout:.0f} s (last state {state})")


def test_a_failed_run_logs_no_secret_anywhere(pg_server, orders_db, scratch_dbs, tmp_path, other_user):
    generate(orders_db, GeneratorConfig(start=BAD_DAY - timedelta(days=1), days=3, orders_per_day=150, seed=4,
                                        customers=None, products=None,
                                        injections=parse_injections("negative_quantity=0.05")), progress=False)
    pg_password = pg_server.pg_password
    assert pg_password and pg_password in orders_db, "the orders Connection carries the real password"
    slack_token = f"SECRETslack{uuid.uuid4().hex}"
    smtp_password = f"smtp-{uuid.uuid4().hex}"
    mlflow_password = f"mlflow-{uuid.uuid4().hex}"
    secrets = {"orders_db password": pg_password, "ecom_slack webhook token": slack_token,
               "ecom_smtp password": smtp_password, "MLflow password": mlflow_password}

    smtp = Controller(_Inbox(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    home = tmp_path / "airflow"
    logs = tmp_path / "logs"
    meta = pg_server.local_url(scratch_dbs("airflow")["airflow"], "postgresql+psycopg2")
    # Any bad row quarantines the whole day (by default a few bad orders are only taken out of it),
    # so that the run fails and every alert path is exercised.
    from ecom_ml.lake import Lake

    Lake((tmp_path / "lake").as_uri()).init()
    quality = tmp_path / "quality.yaml"
    quality.write_text("max_bad_row_share: 0.0\n")
    overrides = {
        "AIRFLOW_VAR_ECOM_QUALITY_CONFIG": str(quality),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(logs / "tasks"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta,
        "AIRFLOW_CONN_ORDERS_DB": orders_db,
        "AIRFLOW_CONN_ECOM_SLACK": json.dumps({
            "conn_type": "slackwebhook",
            "password": f"http://127.0.0.1:{_closed_port()}/services/T0000/B0000/{slack_token}"}),
        "AIRFLOW_CONN_ECOM_SMTP": json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": smtp.port, "login": "alerts",
            "password": smtp_password,
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "alerts@shop.test", "retry_limit": 0}}),
        "AIRFLOW_VAR_ECOM_ALERT_EMAIL_TO": "oncall@shop.test",
        "ECOM_ALERT_STATE_VARIABLE": f"ecom_alert_state_{uuid.uuid4().hex[:8]}",
        "MLFLOW_TRACKING_URI": f"http://ecom:{mlflow_password}@127.0.0.1:{free_port()}",
        "ECOM_LAKE_ROOT": (tmp_path / "lake").as_uri(),
        "ECOM_TASK_RETRIES": "0",
        "ECOM_DEADLINE_ALERTS": "off",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    }
    port = free_port()
    env = local_airflow.stack_env(port, overrides)
    outputs: dict[str, str] = {}
    try:
        for cmd in (["db", "migrate"], ["dags", "reserialize"]):
            done = subprocess.run([local_airflow._airflow_bin(), *cmd], env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-3000:]
            outputs[" ".join(cmd)] = done.stdout + done.stderr
        stack = local_airflow.start(("api-server", "scheduler", "dag-processor"), logs, port=port,
                                    env_overrides=overrides)
        try:
            stack.wait_healthy()
            run_id = f"manual__secrets_{uuid.uuid4().hex[:8]}"
            done = stack.airflow("dags", "trigger", "orders_ingest", "--run-id", run_id,
                                 "--conf", json.dumps({"day": BAD_DAY.isoformat()}))
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            assert _wait_for_run(stack, run_id) == "failed", "the bad day must fail its quality gate"
            time.sleep(3)  # the failure callback's log lines reach the files
        finally:
            stack.stop()
        end = BAD_DAY + timedelta(days=1)
        test_run = subprocess.run([local_airflow._airflow_bin(), "dags", "test", "orders_ingest", end.isoformat()],
                                  env=env, capture_output=True, text=True, timeout=600)
        outputs["dags test"] = test_run.stdout + test_run.stderr
    finally:
        smtp.stop()

    everything = "\n".join(outputs.values()) + "\n".join(
        p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file())
    # The paths that used to leak were exercised: the webhook was retried, both channels failed.
    assert "Going to retry the same request: POST http://127.0.0.1:" in everything
    assert "/services/***" in everything, "the retry line is there, with the token masked"
    assert "alert e-mail (ecom_smtp) failed" in everything
    assert "ALERT orders_ingest 2024-01-02: task check_quality failed" in outputs["dags test"]

    leaks = {}
    for what, secret in secrets.items():
        found = _files_with(tmp_path, secret) + [name for name, text in outputs.items() if secret in text]
        if found:
            leaks[what] = found
    assert leaks == {}, f"secrets in logs or output: {leaks}"

    # Item 6: what Airflow wrote for the UI login and its logs are the owner's only.
    generated = home / "simple_auth_manager_passwords.json.generated"
    assert generated.is_file()
    for path in [generated, home / "airflow.cfg", *logs.glob("*.log")]:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is {oct(path.stat().st_mode & 0o777)}"
        done = run_as(other_user, "cat", str(path))
        assert done.returncode != 0 and "Permission denied" in done.stderr, (path, done.stdout[:200])
