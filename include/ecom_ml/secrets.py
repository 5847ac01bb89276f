"""Keeping secrets out of what the project prints and logs: one place to mask them.

Two mechanisms, because secrets reach output two ways:

* **Values we know are secret** (a database password, an MLflow password, a webhook URL's token)
  are registered with Airflow's secrets masker (:func:`mask`), which replaces them in every task
  log line and rendered field, in the task process *and* its supervisor. Outside Airflow (the CLI,
  tests) that import is skipped and :func:`redact_text` covers our own messages.
* **URLs in text we did not write** (urllib3's ``Going to retry the same request: POST
  https://hooks.slack.com/services/T…/B…/SECRET`` warning, a library's exception) are scrubbed by
  :class:`RedactingFilter`, a logging filter installed on the loggers that emit them; it needs no
  list of secrets, only their shape: the password of ``scheme://user:password@host`` and the path
  of a Slack webhook (the token *is* the path).

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


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with :func:`redact_text` (libraries log URLs we cannot change)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is the logging module's business
            return True
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


#: Loggers that print request URLs verbatim: urllib3's retry warning, requests, the Slack SDK.
LIBRARY_LOGGERS = ("urllib3", "urllib3.connectionpool", "urllib3.util.retry", "requests", "slack_sdk",
                   "slack_sdk.webhook", "airflow.providers.slack", "airflow.providers.smtp")


def install_log_filter() -> None:
    """Attach :class:`RedactingFilter` to :data:`LIBRARY_LOGGERS` and the root logger's handlers
    (idempotent). Filters on a logger do not apply to its children's records, so each is named."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


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
