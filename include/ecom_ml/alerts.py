"""Failure alerts. For now a structured log line; notifiers (Slack, e-mail) plug in here."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("ecom_ml.alerts")


def describe_failure(context: dict[str, Any]) -> str:
    """One line: which DAG, which day, which task, and why."""
    ti = context.get("task_instance") or context.get("ti")
    dag_id = getattr(ti, "dag_id", "?")
    task_id = getattr(ti, "task_id", "?")
    interval = context.get("data_interval_start")
    day = interval.date().isoformat() if interval is not None else "?"
    reason = context.get("exception")
    return f"{dag_id} {day}: task {task_id} failed: {reason}"


def on_task_failure(context: dict[str, Any]) -> None:
    log.error("ALERT %s", describe_failure(context))
