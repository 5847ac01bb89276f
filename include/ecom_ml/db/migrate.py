"""Versioned schema migrations for the orders database: numbered plain-SQL files, applied once each.

Plain SQL rather than Alembic autogenerate: the schema belongs to the shop, not to an ORM of ours,
and a DBA can read and apply these files by hand. Each file runs in its own transaction under an
advisory lock, and its checksum is recorded so an edited, already-applied file is refused instead of
silently diverging.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg2

from ecom_ml.db import redact_url as _safe
from ecom_ml.errors import EcomError

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x65636F6D  # "ecom": one advisory-lock key for all migration runs


class MigrationError(EcomError):
    """The database's recorded migrations disagree with the files shipped in the package."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    folder = resources.files("ecom_ml.db") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number: {versions}")
    return found


def migrate(url: str) -> list[Migration]:
    """Apply pending migrations; return the ones applied now (empty when up to date)."""
    applied_now: list[Migration] = []
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            with conn, conn.cursor() as cur:
                cur.execute(
                    """CREATE TABLE IF NOT EXISTS schema_migrations (
                           version    integer PRIMARY KEY,
                           name       text NOT NULL,
                           checksum   text NOT NULL,
                           applied_at timestamptz NOT NULL DEFAULT now())"""
                )
                cur.execute("SELECT version, name, checksum FROM schema_migrations")
                recorded = {row[0]: (row[1], row[2]) for row in cur.fetchall()}
            for migration in available():
                if migration.version in recorded:
                    name, checksum = recorded[migration.version]
                    if checksum != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{name}.sql was changed after it was applied "
                            f"to {_safe(url)}: add a new migration instead of editing an applied one"
                        )
                    continue
                with conn, conn.cursor() as cur:
                    cur.execute(migration.sql)
                    cur.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                applied_now.append(migration)
        finally:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    finally:
        conn.close()
    return applied_now

