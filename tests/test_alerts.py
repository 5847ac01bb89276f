"""Failure alerts reach real local receivers: an SMTP server (aiosmtpd) and a Slack-style webhook."""

from __future__ import annotations

import email
import json
import threading
import uuid
from datetime import date, datetime, timedelta, timezone
from email import policy
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from ecom_ml.generator import GeneratorConfig, generate, parse_injections
from ecom_ml.lake import Lake

START = date(2024, 1, 1)


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


@pytest.fixture
def receivers(monkeypatch):
    inbox = _Inbox()
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        smtp_port = probe.getsockname()[1]
    smtp = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    posts: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's hook name
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    web = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    monkeypatch.setenv("AIRFLOW_CONN_ECOM_SLACK", json.dumps(
        {"conn_type": "slackwebhook", "password": f"http://127.0.0.1:{web.server_port}/services/T0/B0/x"}))
    monkeypatch.setenv("AIRFLOW_CONN_ECOM_SMTP", json.dumps(
        {"conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
         "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "alerts@shop.test", "retry_limit": 0}}))
    monkeypatch.setenv("AIRFLOW_VAR_ECOM_ALERT_EMAIL_TO", "oncall@shop.test")
    monkeypatch.setenv("ECOM_ALERT_STATE_VARIABLE", f"ecom_alert_state_{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.shop.test")
    try:
        yield inbox, posts
    finally:
        smtp.stop()
        web.shutdown()


@pytest.fixture
def bad_days(orders_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    generate(orders_db, GeneratorConfig(start=START, days=6, orders_per_day=200, seed=4, customers=None, products=None,
                                        injections=parse_injections("negative_quantity=0.05")), progress=False)
    monkeypatch.setenv("AIRFLOW_CONN_ORDERS_DB", orders_db)
    monkeypatch.setenv("ECOM_LAKE_ROOT", (tmp_path / "lake").as_uri())
    Lake((tmp_path / "lake").as_uri()).init()  # lake roots are created on purpose, never by a write
    monkeypatch.setenv("ECOM_TASK_RETRIES", "0")
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags"))
    return bag.get_dag("orders_ingest")


def _run(dag, day: date):
    end = day + timedelta(days=1)
    return dag.test(logical_date=datetime(end.year, end.month, end.day, tzinfo=timezone.utc))


def test_a_failed_quality_gate_alerts_slack_and_email_with_the_report(receivers, bad_days):
    inbox, posts = receivers
    run = _run(bad_days, START + timedelta(days=1))
    assert str(run.state) == "failed"
    assert len(posts) == 1 and len(inbox.messages) == 1
    text = posts[0]["text"]
    assert "orders_ingest 2024-01-02: task check_quality failed" in text
    assert "order_items.quantity_positive" in text and "allowed 0" in text  # the check, observed vs threshold
    assert f"http://airflow.shop.test/dags/orders_ingest/runs/{run.run_id}" in text
    assert "quality_report.md" in text
    mail = inbox.messages[0]
    assert mail["To"] == "oncall@shop.test" and "orders_ingest 2024-01-02" in mail["Subject"]
    attachments = [part for part in mail.iter_attachments()]
    assert [a.get_filename() for a in attachments] == ["quality_report.md"]
    content = attachments[0].get_content()
    assert "quantity_positive" in (content.decode() if isinstance(content, bytes) else content)


def test_a_burst_of_failures_is_rate_limited_and_summarised(receivers, bad_days, monkeypatch):
    inbox, posts = receivers
    monkeypatch.setenv("ECOM_ALERT_MAX_PER_WINDOW", "1")
    monkeypatch.setenv("ECOM_ALERT_WINDOW_SECONDS", "3600")
    for offset in range(3):
        assert str(_run(bad_days, START + timedelta(days=offset)).state) == "failed"
    assert len(posts) == 1 and len(inbox.messages) == 1, "one message per window, not one per failed day"
    # The window ends: the next failure's message summarises the two held back.
    monkeypatch.setenv("ECOM_ALERT_WINDOW_SECONDS", "0")
    assert str(_run(bad_days, START + timedelta(days=3)).state) == "failed"
    assert len(posts) == 2
    assert "Also 2 earlier failure(s) of orders_ingest held back" in posts[1]["text"]
    assert "2024-01-02 check_quality" in posts[1]["text"] and "2024-01-03 check_quality" in posts[1]["text"]


def test_without_connections_the_alert_is_only_logged(bad_days, monkeypatch, caplog):
    import logging

    monkeypatch.setenv("ECOM_ALERT_STATE_VARIABLE", f"ecom_alert_state_{uuid.uuid4().hex[:8]}")
    with caplog.at_level(logging.INFO, logger="ecom_ml.alerts"):
        assert str(_run(bad_days, START + timedelta(days=1)).state) == "failed"
    messages = [r.getMessage() for r in caplog.records if r.name == "ecom_ml.alerts"]
    assert any(m.startswith("ALERT orders_ingest 2024-01-02: task check_quality failed") for m in messages)
    assert "alert delivered to: log only (no ecom_slack / ecom_smtp connection)" in messages


def test_a_failed_model_gate_names_its_report():
    """The model gate's failure line carries '(report: …)'; the alert links and attaches it."""
    from types import SimpleNamespace

    from ecom_ml.alerts import alert_from_context

    reason = ("recommender 2024-02-11: gate failed for version 2: gate FAILED for recommender (1 of 6 checks): "
              "no_regression_vs_champion ndcg@10 0.0988 < 0.2226 (report: file:///lake/models/recommender/"
              "dt=2024-02-11/run=x/gate_report.md)")
    ti = SimpleNamespace(dag_id="train_recommender", task_id="gate", run_id="manual__1")
    alert = alert_from_context({"ti": ti, "exception": reason,
                                "data_interval_start": datetime(2024, 2, 11, tzinfo=timezone.utc)})
    assert alert.report == "file:///lake/models/recommender/dt=2024-02-11/run=x/gate_report.md"
    assert alert.line().startswith("train_recommender 2024-02-11: task gate failed: recommender 2024-02-11")
    assert "no_regression_vs_champion ndcg@10 0.0988 < 0.2226" in alert.text()


# -- deadline alerts -------------------------------------------------------------------------------


def _wait_for(predicate, timeout: float, what: str):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout:.0f} s")


def test_a_run_stuck_past_the_decision_deadline_alerts_through_the_scheduler(receivers, pg_server, scratch_dbs,
                                                                             tmp_path):
    """The real scheduler fires orders_ingest's deadline for a run that never ran (its DAG is paused:
    nothing fails, so no task alert could ever say it), and the callback reaches both receivers."""
    import subprocess

    from ecom_ml import local_airflow
    from ecom_ml.localhost import free_port

    inbox, posts = receivers
    meta = pg_server.local_url(scratch_dbs("airflow")["airflow"], "postgresql+psycopg2")
    overrides = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta, "ECOM_DECISION_DEADLINE": "06:00",
                 "ECOM_DEADLINE_ALERTS": "on",
                 "ECOM_LAKE_ROOT": (tmp_path / "lake").as_uri()}
    Lake(overrides["ECOM_LAKE_ROOT"]).init()
    port = free_port()
    env = local_airflow.stack_env(port, overrides)
    for cmd in (["db", "migrate"], ["dags", "reserialize"]):
        done = subprocess.run([local_airflow._airflow_bin(), *cmd], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    stack = local_airflow.start(("api-server", "scheduler", "dag-processor"), tmp_path / "logs", port=port,
                                env_overrides=overrides)
    try:
        stack.wait_healthy()
        # A logical date 30 h minus 20 s ago puts "D+1 06:00" 20 s from now.
        logical = datetime.now(timezone.utc) - timedelta(days=1, hours=6) + timedelta(seconds=20)
        run_id = f"manual__stuck_{uuid.uuid4().hex[:8]}"
        done = stack.airflow("dags", "trigger", "orders_ingest", "--run-id", run_id,
                             "--logical-date", logical.isoformat(), "--conf", json.dumps({"day": "2024-01-15"}))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        # Backfilled days have deadlines in the past by construction: they must get none at all
        # (no callback workload per day holding executor slots), while the nightly run gets its own.
        done = stack.airflow("backfill", "create", "--dag-id", "orders_ingest", "--from-date", "2024-01-01",
                             "--to-date", "2024-01-05")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        found = _wait_for(lambda: [p for p in posts if run_id in p["text"]], 150,
                          "no deadline alert reached the webhook")
        engine = sa.create_engine(meta)
        with engine.connect() as conn:
            per_type = dict(conn.execute(sa.text(
                """SELECT r.run_type, count(d.id) FROM dag_run r LEFT JOIN deadline d ON d.dagrun_id = r.id
                   WHERE r.dag_id = 'orders_ingest' GROUP BY r.run_type""")).fetchall())
            backfill_runs = conn.execute(sa.text(
                "SELECT count(*) FROM dag_run WHERE dag_id = 'orders_ingest' AND run_type = 'backfill'")).scalar()
        engine.dispose()
    finally:
        stack.stop()
    assert backfill_runs == 5 and per_type.get("backfill") == 0, per_type
    assert per_type.get("manual") == 1, per_type
    assert not [p for p in posts if "backfill__" in p["text"]]
    text = found[0]["text"]
    by = (logical + timedelta(days=1, hours=6)).strftime("%Y-%m-%d %H:%M")
    assert f"orders_ingest 2024-01-15: no champion decision by {by} UTC" in text
    assert f"the day's orders were not validated: run {run_id} is queued" in text
    assert f"{stack.url}/dags/orders_ingest/runs/{run_id}" in text
    mails = [m for m in inbox.messages if "no champion decision" in m["Subject"]]
    assert len(mails) == 1 and "orders_ingest 2024-01-15" in mails[0]["Subject"]


def test_the_deadline_callback_is_quiet_for_backfills_and_for_training_runs_that_decided(
        receivers, pg_server, scratch_dbs, tmp_path, monkeypatch):
    """A backfill run's deadline is in the past by construction; a training run whose gate rejected
    its candidate did decide (and alerted from its gate task). Neither may page; an undecided one must."""
    from ecom_ml.deadlines import no_champion_decision
    from ecom_ml.registry import Registry

    inbox, posts = receivers
    mlflow_db = pg_server.local_url(scratch_dbs("mlflow")["mlflow"], "postgresql+psycopg2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db)
    monkeypatch.setenv("ECOM_MODEL_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"\0" * 16)
    reg = Registry(mlflow_db, artifacts=(tmp_path / "artifacts").as_uri(), cache_dir=tmp_path / "cache")
    reg.log_candidate("recommender", "recommender 2024-01-15", {}, {"ndcg@10": 0.1}, model_dir,
                      tags={"day": "2024-01-15", "airflow_run_id": "asset_triggered__decided", "gate": "failed"})
    deadline = {"id": "x", "deadline_time": "2024-01-16T06:00:00+00:00"}

    def fire(run_id: str, run_type: str, stage: str) -> None:
        dag_id = "orders_ingest" if stage == "ingestion" else "train_recommender"
        run = {"dag_id": dag_id, "dag_run_id": run_id, "run_type": run_type, "state": "running",
               "conf": {}, "data_interval_start": "2024-01-15T00:00:00+00:00"}
        no_champion_decision({"dag_run": run, "deadline": deadline}, stage=stage, model="recommender")

    fire("backfill__2024-01-15", "backfill", "ingestion")
    fire("asset_triggered__decided", "asset_triggered", "training")
    assert posts == [] and inbox.messages == []
    fire("asset_triggered__stuck", "asset_triggered", "training")
    assert len(posts) == 1 and len(inbox.messages) == 1
    assert ("train_recommender 2024-01-15: no champion decision by 2024-01-16 06:00 UTC: training did not reach "
            "its gate: run asset_triggered__stuck is running") in posts[0]["text"]


def test_the_nightly_dags_carry_their_deadlines(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("ECOM_DEADLINE_ALERTS", "on")
    monkeypatch.setenv("ECOM_DECISION_DEADLINE", "07:30")
    monkeypatch.setenv("ECOM_TRAINING_DEADLINE_HOURS", "4")
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags"))
    assert not bag.import_errors, bag.import_errors
    (ingest,) = bag.get_dag("orders_ingest").deadline
    (train,) = bag.get_dag("train_recommender").deadline
    assert type(ingest.reference).__name__ == "NightlyRunLogicalDate"  # the logical date; none for backfills
    assert ingest.interval == timedelta(days=1, hours=7, minutes=30)
    assert type(train.reference).__name__ == "DagRunQueuedAtDeadline" and train.interval == timedelta(hours=4)
    assert train.callback.kwargs == {"stage": "training", "model": "recommender"}
    monkeypatch.setenv("ECOM_DEADLINE_ALERTS", "off")
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags"))
    assert not bag.get_dag("orders_ingest").deadline


@pytest.mark.parametrize("name, value", [("ECOM_DECISION_DEADLINE", "6am"), ("ECOM_DECISION_DEADLINE", "24:00"),
                                         ("ECOM_DEADLINE_ALERTS", "sometimes"),
                                         ("ECOM_TRAINING_DEADLINE_HOURS", "0"), ("ECOM_TRAINING_DEADLINE_HOURS", "x")])
def test_a_bad_deadline_setting_is_one_line_naming_it(name, value, monkeypatch):
    from ecom_ml.deadlines import ingestion_deadlines, training_deadlines
    from ecom_ml.settings import ConfigError

    monkeypatch.setenv("ECOM_DEADLINE_ALERTS", "on")
    monkeypatch.setenv(name, value)  # (may override the line above)
    with pytest.raises(ConfigError) as info:
        ingestion_deadlines() if name != "ECOM_TRAINING_DEADLINE_HOURS" else training_deadlines("recommender")
    assert str(info.value).startswith(f"{name}={value!r}") and "\n" not in str(info.value)
