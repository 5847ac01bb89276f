"""Keeping secrets out of what the project prints and logs: one place to mask them.

Two mechanisms, because secrets reach output two ways:

* **Values we know are secret** (a database password, an MLflow password, a webhook URL's token)
  are registered with Airflow's secrets masker (:func:`mask`), which replaces them in every task
  log line and rendered field, in the task process *and* its supervisor. Outside Airflow (the CLI,
  tests) that import is skipped and :func:`redact_text` covers our own messages.
* **URLs in text we did not write** (the Slack SDK's ``Going to retry the same request: POST
  https://hooks.slack.com/services/T…/B…/SECRET``, a library's exception) are scrubbed where the
  log record is created (:func:`install_log_redaction`); that needs no list of secrets, only their
  shape: the password of ``scheme://user:password@host``, the path of a Slack webhook (the token
  *is* the path) and ``password=`` values.

The DB URL helper :func:`ecom_ml.db.redact_url` and ``mlflow_server.redact`` both end in
:func:`redact_text`, so every message masks the same way.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

MASK = "***"

#: ``scheme://user:password@`` -> ``scheme://user:***@`` (any scheme, any user; the password ends at
#: the last ``@`` before the host, so a password containing ``@`` or ``:`` is masked whole).
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]+:)(?P<secret>[^\s/]*)@")
#: Slack (and compatible) incoming-webhook URLs carry their credential in the path.
_WEBHOOK = re.compile(r"(?P<head>/services/)(?P<secret>[A-Za-z0-9_\-]+/[A-Za-z0-9_\-]+/[A-Za-z0-9_\-]+)")
#: ``password=…`` in a libpq/keyword DSN or a query string.
_KEYWORD = re.compile(r"(?P<head>\bpassword=)(?P<secret>[^\s&;]+)", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with URL passwords, webhook tokens and ``password=`` values replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    text = _WEBHOOK.sub(lambda m: f"{m['head']}{MASK}", text)
    return _KEYWORD.sub(lambda m: f"{m['head']}{MASK}", text)


def mask(secret: str | None, name: str | None = None) -> None:
    """Tell Airflow's secrets masker about ``secret`` (no-op outside Airflow or for empty values)."""
    if not secret:
        return
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # a trainer pod or CLI without the task SDK: our own messages use redact_text
        return
    mask_secret(secret, name)


_installed = False


def install_log_redaction() -> None:
    """From now on, every log record this process creates has :func:`redact_text` applied to its
    message (idempotent).

    Why a record factory and not a handler filter: a task's records are rendered by the Airflow
    supervisor, in another process, from what the task sends it; the only point where a library's
    line (the Slack SDK's ``Going to retry the same request: POST <webhook URL>``, urllib3's retry
    warnings) can be cleaned for every destination is where the record is created. Logger filters
    would not do either: they see only records of that exact logger, and the Slack hook logs under
    a per-class name.
    """
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is the logging module's business
            return record
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from creation: no window in which
    another user could open it), replacing any earlier content atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def make_private(path: Path) -> None:
    """chmod 0600 a file that another program created with its own umask (no-op if it is missing)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if stat.S_IMODE(mode) & 0o077:
        path.chmod(0o600)
