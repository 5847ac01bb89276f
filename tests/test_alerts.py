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
from aiosmtpd.controller import Controller

from ecom_ml.generator import GeneratorConfig, generate, parse_injections

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
