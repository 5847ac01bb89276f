"""Failure alerts: one readable message per failure, to Slack and e-mail, rate-limited per DAG.

Channels are Airflow 3 notifiers (the Slack incoming-webhook and SMTP providers), each enabled by
its Connection: `ecom_slack` (conn type `slackwebhook`, the webhook URL as password) and
`ecom_smtp` (conn type `smtp`; recipients in the `ecom_alert_email_to` Variable). With neither,
the alert is only logged. A report named in the failure ("report: <uri>", as the quality and model
gates write it) is linked in the message and attached to the e-mail.

A backfill of many bad days must not page people many times: at most `ECOM_ALERT_MAX_PER_WINDOW`
messages (default 3) per DAG within `ECOM_ALERT_WINDOW_SECONDS` (default 3600); the rest are
counted, and the next message after the window carries their summary. The counter lives in an
Airflow Variable, so every worker shares it. An alert that cannot be delivered is logged; it never
replaces the task's own failure.

No secret reaches a log: both Connections' passwords are registered with Airflow's masker (also in
the scheduler and under ``airflow dags test``, where the task SDK does not do it), and the Slack
SDK logs through a stdlib logger whose records are redacted where they are created (its retry line
carries the webhook URL; see :mod:`ecom_ml.secrets`).

Missed deadlines (``ecom_ml.deadlines``) go out through the same channels with :func:`deliver`,
outside the rate limit: there is at most one per DAG and night (backfill runs are skipped), and
deadline callbacks may read Variables but not write them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger("ecom_ml.alerts")

SLACK_CONN = "ecom_slack"
SMTP_CONN = "ecom_smtp"
EMAIL_TO_VARIABLE = "ecom_alert_email_to"
_REPORT = re.compile(r"report: (\S+?)\)?$")


@dataclass(frozen=True)
class Alert:
    dag_id: str
    day: str
    task_id: str
    reason: str
    run_url: str | None
    report: str | None
    #: What happened, when it is not a task failure (a missed deadline).
    headline: str | None = None

    @property
    def what(self) -> str:
        return self.headline or f"task {self.task_id} failed"

    def line(self) -> str:
        """One line: which DAG, which day, what happened (which task failed), and why."""
        return f"{self.dag_id} {self.day}: {self.what}: {self.reason}"

    def text(self, suppressed: list[str] | None = None) -> str:
        parts = [f":rotating_light: [ecom-ml] {self.line()}"]
        if self.run_url:
            parts.append(f"Run: {self.run_url}")
        if self.report:
            parts.append(f"Report: {self.report}")
        if suppressed:
            parts.append(f"Also {len(suppressed)} earlier failure(s) of {self.dag_id} held back by the rate limit: "
                         + ", ".join(suppressed[:20]) + (" …" if len(suppressed) > 20 else ""))
        return "\n".join(parts)


def describe_failure(context: dict[str, Any]) -> str:
    return alert_from_context(context).line()


def alert_from_context(context: dict[str, Any]) -> Alert:
    ti = context.get("task_instance") or context.get("ti")
    dag_id = str(getattr(ti, "dag_id", "?"))
    run_id = getattr(ti, "run_id", None) or context.get("run_id")
    interval = context.get("data_interval_start")
    chosen = (context.get("params") or {}).get("day")
    day = str(chosen) if chosen else interval.date().isoformat() if interval is not None else "?"
    reason = " ".join(str(context.get("exception") or "unknown error").split())
    match = _REPORT.search(reason)
    return Alert(dag_id, day, str(getattr(ti, "task_id", "?")), reason, run_url(dag_id, run_id),
                 match.group(1) if match else None)


def run_url(dag_id: str, run_id: str | None) -> str | None:
    """The run's page in the UI, for links in messages; None without a run or a known UI address."""
    base = _base_url()
    return f"{base.rstrip('/')}/dags/{dag_id}/runs/{run_id}" if base and run_id else None


def _base_url() -> str | None:
    """The UI's address (``[api] base_url``)."""
    if os.environ.get("AIRFLOW__API__BASE_URL"):
        return os.environ["AIRFLOW__API__BASE_URL"]
    try:
        from airflow.configuration import conf

        return conf.get("api", "base_url", fallback=None)
    except Exception:  # noqa: BLE001 - a worker without airflow-core still alerts, just without a link
        return None


# -- rate limit ------------------------------------------------------------------------------------


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        log.warning("%s=%r is not a number; using %s", name, raw, default)
        return default


@dataclass
class Throttle:
    """Per-DAG counter of one window: messages sent, failures held back."""

    window_start: str
    sent: int = 0
    held: list[str] = field(default_factory=list)


def _state_key() -> str:
    return os.environ.get("ECOM_ALERT_STATE_VARIABLE", "ecom_alert_state")


def admit(alert: Alert, now: datetime | None = None) -> tuple[bool, list[str]]:
    """Whether to send this alert now, and the held-back failures its message should summarise."""
    from airflow.sdk import Variable

    now = now or datetime.now(timezone.utc)
    limit = int(_env_number("ECOM_ALERT_MAX_PER_WINDOW", 3))
    window = _env_number("ECOM_ALERT_WINDOW_SECONDS", 3600)
    try:
        state = json.loads(Variable.get(_state_key(), default="{}") or "{}")
    except ValueError:
        state = {}
    entry = Throttle(**state[alert.dag_id]) if alert.dag_id in state else Throttle(now.isoformat())
    summary: list[str] = []
    if (now - datetime.fromisoformat(entry.window_start)).total_seconds() >= window:
        summary, entry = entry.held, Throttle(now.isoformat())
    send = entry.sent < limit
    if send:
        entry.sent += 1
    else:
        entry.held.append(f"{alert.day} {alert.task_id}")
    state[alert.dag_id] = entry.__dict__
    Variable.set(_state_key(), json.dumps(state))
    return send, summary


# -- channels --------------------------------------------------------------------------------------


def _has_connection(conn_id: str) -> bool:
    """Whether the Connection exists; its secrets are registered with the masker on the way.

    Inside a task the SDK masks a Connection's password itself, but alerts also go out from the
    scheduler (deadline callbacks) and from ``airflow dags test``, where nothing does, and the Slack
    SDK logs the full webhook URL (its secret) when it retries a request.
    """
    from airflow.sdk import Connection

    from ecom_ml import secrets

    try:
        conn = Connection.get(conn_id)
    except Exception:  # noqa: BLE001 - not found (the SDK raises its own not-found error type)
        return False
    secrets.install_log_redaction()
    secrets.mask(conn.password)  # the webhook URL or token / the SMTP password
    return True


def _send_to_slack(text: str) -> None:
    """Post through the provider's webhook hook, with the Slack SDK logging to a stdlib logger.

    The hook hands its own (structlog) logger to the SDK, whose retry line carries the full webhook
    URL, i.e. the secret; the Airflow supervisor masks it in the task log but relays the raw line
    to the scheduler's log. A stdlib logger's records pass :func:`ecom_ml.secrets.install_log_redaction`
    in this process, before they go anywhere.
    """
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    hook = SlackWebhookHook(slack_webhook_conn_id=SLACK_CONN)
    hook.client.logger = logging.getLogger("ecom_ml.alerts.slack_sdk")
    hook.send(text=text)


def _clean(exc: BaseException) -> str:
    """A delivery error as one line, with any URL credential or webhook token masked."""
    from ecom_ml.secrets import redact_text

    return redact_text(" ".join(str(exc).split()) or type(exc).__name__)


def _local_file(uri: str | None) -> str | None:
    if not uri:
        return None
    path = uri.removeprefix("file://") if uri.startswith("file://") else uri if uri.startswith("/") else None
    return path if path and os.path.isfile(path) else None


def deliver(alert: Alert, text: str, context: dict[str, Any]) -> list[str]:
    """Send to every configured channel; returns the channels that took it (none: logged only)."""
    delivered = []
    if _has_connection(SLACK_CONN):
        try:
            _send_to_slack(text)
            delivered.append("slack")
        except Exception as exc:  # noqa: BLE001 - logged; the task's failure stays the story
            log.error("alert to Slack (%s) failed: %s", SLACK_CONN, _clean(exc))
    if _has_connection(SMTP_CONN):
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier
        from airflow.sdk import Variable

        to = Variable.get(EMAIL_TO_VARIABLE, default=None)
        if not to:
            log.error("alert e-mail not sent: connection %s exists but Variable %s (recipients) is not set",
                      SMTP_CONN, EMAIL_TO_VARIABLE)
        else:
            attachment = _local_file(alert.report)
            html = "<pre>" + text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") + "</pre>"
            try:
                SmtpNotifier(to=[a.strip() for a in to.split(",") if a.strip()], smtp_conn_id=SMTP_CONN,
                             subject=f"[ecom-ml] {alert.dag_id} {alert.day}: {alert.what}",
                             html_content=html, files=[attachment] if attachment else None).notify(context)
                delivered.append("email")
            except Exception as exc:  # noqa: BLE001 - logged; the task's failure stays the story
                log.error("alert e-mail (%s) failed: %s", SMTP_CONN, _clean(exc))
    log.info("alert delivered to: %s", ", ".join(delivered) or "log only (no ecom_slack / ecom_smtp connection)")
    return delivered


def on_rows_quarantined(reason: str, report: str | None) -> None:
    """A day published without more of its rows than ``alert_bad_row_share``: one message, like a failure.

    Called from inside the task (``ecom_ml.ingest.tasks.publish``); outside a task (a script running
    the same functions) there is no run to link, so the alert is only logged.
    """
    try:
        from airflow.sdk import get_current_context

        context: dict[str, Any] = dict(get_current_context())
    except Exception:  # noqa: BLE001 - no task context (a script): log only
        log.error("ALERT %s (report: %s)", reason, report)
        return
    base = alert_from_context({**context, "exception": reason})
    alert = Alert(base.dag_id, base.day, base.task_id, reason, base.run_url, report,
                  headline="rows quarantined, rest published")
    log.error("ALERT %s", alert.line())
    try:
        send, summary = admit(alert)
    except Exception as exc:  # noqa: BLE001 - without the counter, alert rather than stay silent
        log.warning("alert rate limit unavailable (%s); sending", exc)
        send, summary = True, []
    if send:
        deliver(alert, alert.text(summary), context)


def on_task_failure(context: dict[str, Any]) -> None:
    """The failure callback of every ecom-ml task."""
    alert = alert_from_context(context)
    log.error("ALERT %s", alert.line())
    try:
        send, summary = admit(alert)
    except Exception as exc:  # noqa: BLE001 - without the counter, alert rather than stay silent
        log.warning("alert rate limit unavailable (%s); sending", exc)
        send, summary = True, []
    if not send:
        log.warning("alert for %s held back by the rate limit (ECOM_ALERT_MAX_PER_WINDOW)", alert.dag_id)
        return
    deliver(alert, alert.text(summary), context)
