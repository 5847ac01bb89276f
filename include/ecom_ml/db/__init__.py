"""The shop's orders database: the project-local server, its schema migrations and connections."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ecom_ml.settings import Settings


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs (see :mod:`ecom_ml.secrets`)."""
    from ecom_ml.secrets import redact_text

    return redact_text(url)


@contextlib.contextmanager
def admin_connection(settings: Settings) -> Iterator[Any]:
    """An autocommit connection to the server's ``postgres`` database (``CREATE``/``DROP DATABASE``
    cannot run inside a transaction), closed afterwards."""
    import psycopg2

    admin = psycopg2.connect(settings.local_url("postgres"))
    admin.autocommit = True
    try:
        yield admin
    finally:
        admin.close()


@contextlib.contextmanager
def scratch_database(settings: Settings, prefix: str = "scratch") -> Iterator[str]:
    """Name of a new, empty database on the settings' server, dropped (connections and all) afterwards.

    For tests and benchmarks that must not touch the shared ``orders``/``airflow``/``mlflow``
    databases or each other."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin_connection(settings) as admin:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
