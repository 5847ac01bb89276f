"""Task defaults shared by every ecom-ml DAG: owner, retries with exponential backoff, failure alert.

The retry policy comes from the environment (read at parse time, which is cheap and touches no
database) so operators can tune it per deployment without editing DAG files.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from ecom_ml.alerts import on_task_failure
from ecom_ml.settings import ConfigError


def _non_negative_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit():
        raise ConfigError(f"{name}={raw!r} is not a non-negative integer")
    return int(raw)


def default_args(owner: str) -> dict[str, Any]:
    return {
        "owner": owner,
        "retries": _non_negative_int("ECOM_TASK_RETRIES", 3),
        "retry_delay": timedelta(seconds=_non_negative_int("ECOM_RETRY_DELAY_SECONDS", 30)),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "on_failure_callback": on_task_failure,
    }
