"""Shared fixtures: the project's real PostgreSQL, throwaway databases on it, and Airflow's environment.

Airflow reads its configuration at import, so the environment is set here, before any test module
imports it, from the same settings the CLI uses.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ecom_ml import settings as settings_mod

os.environ.update(settings_mod.airflow_environment(settings_mod.load()))
# dag.test() of a DAG with deadline alerts fails in Airflow 3.3.2 once the run succeeds (see
# ecom_ml.deadlines); the tests of the deadlines themselves run the real scheduler with them on.
os.environ["ECOM_DEADLINE_ALERTS"] = "off"

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RETAIL_CSV = SHARED / "data" / "online_retail_ii_2009_2010" / "online_retail_ii_2009_2010.csv.gz"


@pytest.fixture(scope="session")
def settings() -> settings_mod.Settings:
    return settings_mod.load()


@pytest.fixture(scope="session")
def pg_server(settings: settings_mod.Settings) -> settings_mod.Settings:
    """The project-local server, started if `make test` has not already (idempotent)."""
    from ecom_ml.db import server

    server.start(settings)
    return settings


@pytest.fixture
def empty_db(pg_server: settings_mod.Settings) -> Iterator[str]:
    """URL of a brand-new, empty database on the real server; dropped afterwards."""
    from ecom_ml.db import scratch_database

    with scratch_database(pg_server, "test") as name:
        yield pg_server.local_url(name)


@pytest.fixture
def orders_db(empty_db: str) -> str:
    """URL of a fresh database with the orders schema migrated."""
    from ecom_ml.db.migrate import migrate

    migrate(empty_db)
    return empty_db


@pytest.fixture(scope="session")
def retail_csv() -> Path:
    if not RETAIL_CSV.exists():
        pytest.fail(f"the shared Online Retail II file is missing at {RETAIL_CSV}")
    return RETAIL_CSV


@pytest.fixture(scope="module")
def scratch_dbs(pg_server: settings_mod.Settings) -> Iterator[Callable[..., dict[str, str]]]:
    """Factory: ``scratch_dbs("orders", "airflow")`` -> {kind: name} of new empty databases on the
    real server, all dropped when the test module ends."""
    from ecom_ml.db import scratch_database

    with contextlib.ExitStack() as stack:
        yield lambda *kinds: {k: stack.enter_context(scratch_database(pg_server, f"test_{k}")) for k in kinds}
