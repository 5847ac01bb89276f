"""Orders-schema migrations on a real PostgreSQL."""

from __future__ import annotations

import threading

import psycopg2
import pytest

from ecom_ml.db import migrate as migrate_mod
from ecom_ml.db.migrate import MigrationError, available, migrate

EXPECTED_TABLES = {"customers", "products", "orders", "order_items", "schema_migrations"}


def _tables(url: str) -> set[str]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in cur.fetchall()}


def test_fresh_database_gets_every_migration_once(empty_db):
    applied = migrate(empty_db)
    assert [m.version for m in applied] == [m.version for m in available()]
    assert EXPECTED_TABLES <= _tables(empty_db)
    assert migrate(empty_db) == [], "a second run must apply nothing"


def test_concurrent_runs_apply_each_migration_once(empty_db):
    results: list[list] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(empty_db))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(len(r) for r in results) == [0, 0, len(available())]


def test_edited_applied_migration_is_refused(empty_db, monkeypatch):
    migrate(empty_db)
    original = available()

    def edited() -> list:
        first = original[0]
        return [migrate_mod.Migration(first.version, first.name, first.sql + "\n-- edited\n"), *original[1:]]

    monkeypatch.setattr(migrate_mod, "available", edited)
    with pytest.raises(MigrationError, match=r"0001_orders_schema\.sql was changed after it was applied"):
        migrate(empty_db)


def test_money_is_numeric_and_times_are_timestamptz(orders_db):
    with psycopg2.connect(orders_db) as conn, conn.cursor() as cur:
        cur.execute(
            """SELECT table_name, column_name, data_type FROM information_schema.columns
               WHERE table_schema = 'public' AND (column_name LIKE '%price%' OR column_name LIKE '%_at')"""
        )
        types = {(t, c): d for t, c, d in cur.fetchall()}
    assert types[("products", "price")] == "numeric"
    assert types[("order_items", "unit_price")] == "numeric"
    for table in ("customers", "products", "orders"):
        assert types[(table, "created_at")] == "timestamp with time zone"
        assert types[(table, "updated_at")] == "timestamp with time zone"


def test_status_lifecycle_is_enforced(orders_db):
    with psycopg2.connect(orders_db) as conn, conn.cursor() as cur:
        with pytest.raises(psycopg2.errors.CheckViolation):
            cur.execute(
                "INSERT INTO orders (status, created_at, updated_at) VALUES ('lost', now(), now())"
            )


def test_extraction_predicate_is_an_index_range_scan(orders_db):
    """'Created or updated in [start, end)' must not scan the whole table once it is large."""
    with psycopg2.connect(orders_db) as conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO orders (status, created_at, updated_at)
               SELECT 'delivered', t, t + (g % 7) * interval '1 day'
               FROM generate_series(1, 200000) AS g,
                    LATERAL (SELECT timestamptz '2024-01-01' + g * interval '1 minute' AS t) AS ts"""
        )
        cur.execute("ANALYZE orders")
        cur.execute(
            """EXPLAIN SELECT order_id FROM orders
               WHERE (created_at >= '2024-02-01' AND created_at < '2024-02-02')
                  OR (updated_at >= '2024-02-01' AND updated_at < '2024-02-02')"""
        )
        plan = "\n".join(row[0] for row in cur.fetchall())
    assert "Seq Scan" not in plan, plan
    assert "orders_created_at_idx" in plan and "orders_updated_at_idx" in plan, plan
