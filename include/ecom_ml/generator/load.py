"""Writing generated rows into the orders database: one transaction per run, binary COPY for bulk rows.

The generator's own bookkeeping (the parameters a database was generated with, how far it has been
generated, a log of runs) lives in the ``ecom_generator`` schema, apart from the shop's tables, so
the pipeline sees a database shaped exactly like a real shop's.

``ecom_generator.generated_orders`` records the id of every order the generator wrote, and
``generated_refunds`` every line-level refund (``refund_lines``) it wrote, on its orders or late. A re-run
deletes exactly those ids in its days (never "every id in the day's block": the shop's own inserts
and ``ecom-ml import`` take ids from the same sequence, right after the last generated one, inside
the last day's block), and a run refuses days that hold orders it did not write unless told.
Databases generated before the record existed are backfilled from the generator's mark on its
orders (``external_ref = 'G' || order_id``) the first time a newer generator opens them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date

import numpy as np
import psycopg2
import psycopg2.errors
import psycopg2.extensions

from ecom_ml.db import redact_url as safe_url
from ecom_ml.generator import pgcopy
from ecom_ml.generator.catalogue import CATEGORIES, COUNTRIES, CURRENCY
from ecom_ml.generator.config import FORMAT_VERSION, GeneratorError, ShopParams
from ecom_ml.generator.days import NO_CUSTOMER, STATUSES, DayLines, DayOrders, DayRefunds
from ecom_ml.generator.lifecycle import CustomerLifecycle
from ecom_ml.generator.world import World

SHOP_TABLES = ("customers", "products", "orders", "order_items", "refund_lines")
META_SCHEMA = "ecom_generator"
_LOCK_KEY = 0x67656E65  # "gene": one generator run at a time per database
_COPY_CHUNK = 1 << 20
_COUNTRY_CODES = tuple(code for code, _ in COUNTRIES)
_CATEGORY_NAMES = tuple(c.name for c in CATEGORIES)

_META_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {META_SCHEMA};
CREATE TABLE IF NOT EXISTS {META_SCHEMA}.state (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    format_version  integer NOT NULL,
    seed            bigint  NOT NULL,
    orders_per_day  integer NOT NULL,
    customers       integer NOT NULL,
    products        integer NOT NULL,
    anchor          date    NOT NULL,   -- first day ever generated: ids count from it
    generated_end   date    NOT NULL,   -- days [anchor, generated_end) are in the shop tables
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {META_SCHEMA}.generated_orders (
    order_id        bigint PRIMARY KEY  -- an order the generator wrote (and may delete on a re-run)
);
CREATE TABLE IF NOT EXISTS {META_SCHEMA}.generated_refunds (
    refund_line_id  bigint PRIMARY KEY  -- a refund row the generator wrote (deleted with its order on a re-run)
);
CREATE TABLE IF NOT EXISTS {META_SCHEMA}.runs (
    run_id          bigserial PRIMARY KEY,
    finished_at     timestamptz NOT NULL DEFAULT now(),
    first_day       date    NOT NULL,
    end_day         date    NOT NULL,
    injections      text    NOT NULL,
    summary         jsonb   NOT NULL
);
-- NULL: customers without a lifecycle (databases generated before it existed, and the default).
ALTER TABLE {META_SCHEMA}.state ADD COLUMN IF NOT EXISTS lifecycle jsonb;
"""


@dataclass(frozen=True)
class StoredState:
    """What the database records about how it was generated."""

    format_version: int
    params: ShopParams
    generated_end: date


class OrdersDb:
    """One run's connection, inside a single transaction (see ``transaction``)."""

    def __init__(self, conn: psycopg2.extensions.connection, url: str) -> None:
        self._conn = conn
        self._cur = conn.cursor()
        self.url = safe_url(url)

    # -- checks and bookkeeping -------------------------------------------------------------------

    def prepare(self) -> StoredState | None:
        """Check the shop schema, serialise with other runs, and read the generator's state."""
        self._cur.execute("SELECT " + ", ".join(f"to_regclass('{t}') IS NULL" for t in SHOP_TABLES))
        missing = [t for t, absent in zip(SHOP_TABLES, self._cur.fetchone()) if absent]
        if missing:
            raise GeneratorError(
                f"the orders schema is missing in {self.url} (no table {', '.join(missing)}): run `ecom-ml db migrate`"
            )
        self._cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        self._cur.execute(f"SELECT to_regclass('{META_SCHEMA}.generated_orders') IS NULL")
        (unrecorded,) = self._cur.fetchone()
        self._cur.execute(_META_DDL)
        if unrecorded:  # generated before the record existed: the generator's orders carry its mark
            self._cur.execute(f"INSERT INTO {META_SCHEMA}.generated_orders (order_id) "
                              "SELECT order_id FROM orders WHERE external_ref = 'G' || order_id::text")
        self._cur.execute(
            f"SELECT format_version, seed, orders_per_day, customers, products, anchor, generated_end, lifecycle "
            f"FROM {META_SCHEMA}.state"
        )
        row = self._cur.fetchone()
        if row is None:
            return None
        lifecycle = CustomerLifecycle.from_dict(row[7]) if row[7] is not None else None
        return StoredState(row[0], ShopParams(row[1], row[2], row[3], row[4], row[5], lifecycle), row[6])

    def require_empty_shop(self) -> None:
        """A first run writes into empty tables only: mixing generated ids with a real shop's rows would collide."""
        self._cur.execute("SELECT " + ", ".join(f"(SELECT count(*) FROM (SELECT 1 FROM {t} LIMIT 1) x)"
                                                 for t in SHOP_TABLES))
        occupied = [t for t, n in zip(SHOP_TABLES, self._cur.fetchone()) if n]
        if occupied:
            raise GeneratorError(
                f"{self.url} already holds shop data not written by the generator (table {', '.join(occupied)} "
                f"is not empty): generate into a fresh database"
            )

    def save_state(self, params: ShopParams, generated_end: date) -> None:
        self._cur.execute(
            f"""INSERT INTO {META_SCHEMA}.state
                    (format_version, seed, orders_per_day, customers, products, anchor, generated_end, lifecycle)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (singleton) DO UPDATE SET generated_end = EXCLUDED.generated_end, updated_at = now()""",
            (FORMAT_VERSION, params.seed, params.orders_per_day, params.customers, params.products,
             params.anchor, generated_end,
             json.dumps(params.lifecycle.to_dict()) if params.lifecycle is not None else None),
        )

    def log_run(self, first_day: date, end_day: date, injections: str, summary: dict[str, object]) -> None:
        self._cur.execute(
            f"INSERT INTO {META_SCHEMA}.runs (first_day, end_day, injections, summary) VALUES (%s, %s, %s, %s)",
            (first_day, end_day, injections, json.dumps(summary, default=str)),
        )

    def bump_sequences(self) -> None:
        """Move the identity sequences past the explicit ids written, so the shop's own inserts don't collide."""
        for table, column in (("customers", "customer_id"), ("products", "product_id"),
                              ("orders", "order_id"), ("order_items", "order_item_id"),
                              ("refund_lines", "refund_line_id")):
            self._cur.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                f"GREATEST((SELECT max({column}) FROM {table}), 1))"
            )

    # -- bulk mode --------------------------------------------------------------------------------

    @contextmanager
    def unchecked_inserts(self) -> Iterator[bool]:
        """Skip per-row foreign-key triggers for the COPYs inside the block, when that is safe and allowed.

        Per-row FK checks cost more than everything else a run does (two index probes and a row lock
        per order line: ~45k instead of ~130k lines/s here). The generator writes references it
        knows to be valid, so instead it turns row triggers off (``session_replication_role =
        replica``, which needs a superuser or a granted SET privilege) and the caller checks every
        reference afterwards (``check_references``). Only inserts run in the
        block, so no cascade or referenced-side check is skipped. With user-defined triggers on the
        shop tables (which replica mode would silence too) or without the privilege, the block runs
        with triggers on and yields False.
        """
        self._cur.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = ANY(%s::regclass[]) AND NOT tgisinternal",
                          (list(SHOP_TABLES),))
        skipped = self._cur.fetchone()[0] == 0
        if skipped:
            self._cur.execute("SAVEPOINT generator_bulk")
            try:
                self._cur.execute("SET LOCAL session_replication_role = replica")
                self._cur.execute("RELEASE SAVEPOINT generator_bulk")
            except psycopg2.errors.InsufficientPrivilege:
                self._cur.execute("ROLLBACK TO SAVEPOINT generator_bulk")
                skipped = False
        try:
            yield skipped
        finally:
            if skipped and not self._conn.closed and self._conn.get_transaction_status() == \
                    psycopg2.extensions.TRANSACTION_STATUS_INTRANS:
                self._cur.execute("SET LOCAL session_replication_role = DEFAULT")

    def check_references(self, customers: int, products: int) -> None:
        """Verify that the customers and products the run's rows may reference are all there.

        Generated ids are dense (1..N), so "every id up to N exists" covers every reference the
        run wrote, in two index counts instead of a join over all lines. (Lines reference orders
        of their own day, which ``runner`` checks before loading.)
        """
        self._cur.execute(
            "SELECT (SELECT count(*) FROM customers WHERE customer_id BETWEEN 1 AND %s), "
            "       (SELECT count(*) FROM products WHERE product_id BETWEEN 1 AND %s)",
            (customers, products),
        )
        have_customers, have_products = self._cur.fetchone()
        if (have_customers, have_products) != (customers, products):
            raise GeneratorError(
                f"{self.url} lacks generated rows its orders refer to ({customers - have_customers} of customers "
                f"1..{customers}, {products - have_products} of products 1..{products} are missing; were they "
                f"deleted?): generate into a fresh database"
            )

    # -- rows -------------------------------------------------------------------------------------

    def delete_orders(self, first_id: int, end_id: int) -> int:
        """Remove the generated orders with ids in [first_id, end_id) and their lines (a re-run replaces its days).

        Only ids in the generator's record: an order anything else wrote into the id range stays.
        """
        self._cur.execute(
            f"""CREATE TEMP TABLE generator_replaced ON COMMIT DROP AS
                SELECT order_id FROM {META_SCHEMA}.generated_orders WHERE order_id >= %s AND order_id < %s""",
            (first_id, end_id),
        )
        # The refunds it wrote on those orders first, by its record (the cascade from their lines would
        # take them too; deleting by the record keeps the record exact).
        self._cur.execute(
            f"""CREATE TEMP TABLE generator_replaced_refunds ON COMMIT DROP AS
                SELECT g.refund_line_id FROM {META_SCHEMA}.generated_refunds g
                JOIN refund_lines f USING (refund_line_id) JOIN order_items i USING (order_item_id)
                JOIN generator_replaced r USING (order_id)"""
        )
        self._cur.execute("DELETE FROM refund_lines f USING generator_replaced_refunds x "
                          "WHERE f.refund_line_id = x.refund_line_id")
        self._cur.execute(f"DELETE FROM {META_SCHEMA}.generated_refunds g USING generator_replaced_refunds x "
                          "WHERE g.refund_line_id = x.refund_line_id")
        self._cur.execute("DROP TABLE generator_replaced_refunds")
        self._cur.execute("DELETE FROM order_items i USING generator_replaced r WHERE i.order_id = r.order_id")
        self._cur.execute("DELETE FROM orders o USING generator_replaced r WHERE o.order_id = r.order_id")
        deleted = self._cur.rowcount
        self._cur.execute(f"DELETE FROM {META_SCHEMA}.generated_orders g USING generator_replaced r "
                          "WHERE g.order_id = r.order_id")
        self._cur.execute("DROP TABLE generator_replaced")
        return deleted

    def foreign_orders(self, start: date, end: date) -> tuple[int, str | None]:
        """Orders created in days [start, end) that the generator did not write: (count, an example ref)."""
        self._cur.execute(
            f"""SELECT count(*), min(o.external_ref) FROM orders o
                WHERE o.created_at >= (%s::date)::timestamp AT TIME ZONE 'UTC'
                  AND o.created_at < (%s::date)::timestamp AT TIME ZONE 'UTC'
                  AND NOT EXISTS (SELECT 1 FROM {META_SCHEMA}.generated_orders g WHERE g.order_id = o.order_id)""",
            (start, end),
        )
        count, example = self._cur.fetchone()
        return int(count), example

    def record_generated(self, order_ids: np.ndarray) -> None:
        """Add a day's order ids to the generator's record."""
        self._copy(f"{META_SCHEMA}.generated_orders", ("order_id",), [pgcopy.int8(order_ids)])

    def copy_customers(self, world: World, first_id: int, last_id: int) -> int:
        """Customers with ids in [first_id, last_id]."""
        ids = np.arange(first_id, last_id + 1, dtype=np.int64)
        if len(ids) == 0:
            return 0
        created = world.population.created_us[ids - 1]
        digits = ids.astype("S20")
        self._copy("customers", ("customer_id", "external_ref", "email", "country", "created_at", "updated_at"), [
            pgcopy.int8(ids),
            pgcopy.text(np.strings.add(b"C", digits)),
            pgcopy.text(np.strings.add(np.strings.add(b"customer", digits), b"@example.com")),
            pgcopy.text_codes(world.population.country[ids - 1], _COUNTRY_CODES),
            pgcopy.timestamptz(created),
            pgcopy.timestamptz(created),
        ])
        return len(ids)

    def copy_products(self, world: World, first_id: int, last_id: int) -> int:
        """Products with ids in [first_id, last_id]."""
        ids = np.arange(first_id, last_id + 1, dtype=np.int64)
        if len(ids) == 0:
            return 0
        catalogue = world.catalogue
        created = catalogue.created_us[ids - 1]
        self._copy("products", ("product_id", "sku", "name", "category", "price", "created_at", "updated_at"), [
            pgcopy.int8(ids),
            pgcopy.text([f"SKU-{i:07d}" for i in ids.tolist()]),
            pgcopy.text(catalogue.names(first_id - 1, last_id)),
            pgcopy.text_codes(catalogue.category[ids - 1], _CATEGORY_NAMES),
            pgcopy.numeric_cents(catalogue.price_cents[ids - 1]),
            pgcopy.timestamptz(created),
            pgcopy.timestamptz(created),
        ])
        return len(ids)

    def copy_orders(self, payload: bytes) -> None:
        """Load orders encoded by ``encode_orders``."""
        self._copy_payload("orders", ORDER_COLUMNS, payload)

    def copy_lines(self, payload: bytes) -> None:
        """Load order lines encoded by ``encode_lines``."""
        self._copy_payload("order_items", LINE_COLUMNS, payload)

    def copy_refunds(self, payload: bytes, refund_ids: np.ndarray) -> None:
        """Load a day's refunds encoded by ``encode_refunds`` and record them as the generator's."""
        self._copy_payload("refund_lines", REFUND_COLUMNS, payload)
        self._copy(f"{META_SCHEMA}.generated_refunds", ("refund_line_id",), [pgcopy.int8(refund_ids)])

    def _staging(self, table: str, columns: str) -> None:
        """An empty temporary table of this transaction to COPY changes into before one set-based
        statement applies them (created on first use, emptied on every later one)."""
        self._cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} ({columns}) ON COMMIT DROP")
        self._cur.execute(f"TRUNCATE {table}")

    def insert_late_refunds(self, refunds: DayRefunds) -> int:
        """Refunds of earlier days' orders that happened since the last run; one already there is kept."""
        if len(refunds) == 0:
            return 0
        self._staging("generator_late_refunds",
                      "refund_line_id bigint, order_item_id bigint, quantity integer, refunded_at timestamptz")
        self._copy_payload("generator_late_refunds", REFUND_COLUMNS, encode_refunds(refunds))
        self._cur.execute(
            """WITH added AS (
                   INSERT INTO refund_lines (refund_line_id, order_item_id, quantity, refunded_at)
                   SELECT l.refund_line_id, l.order_item_id, l.quantity, l.refunded_at FROM generator_late_refunds l
                   WHERE EXISTS (SELECT 1 FROM order_items i WHERE i.order_item_id = l.order_item_id)
                   ON CONFLICT (refund_line_id) DO NOTHING
                   RETURNING refund_line_id)
               INSERT INTO """ + META_SCHEMA + """.generated_refunds (refund_line_id)
               SELECT refund_line_id FROM added ON CONFLICT DO NOTHING"""
        )
        return self._cur.rowcount

    def update_states(self, order_ids: np.ndarray, status: np.ndarray, updated_us: np.ndarray) -> int:
        """Apply late status changes to existing orders; returns how many rows changed."""
        if len(order_ids) == 0:
            return 0
        self._staging("generator_state_changes", "order_id bigint, status text, updated_at timestamptz")
        self._copy("generator_state_changes", ("order_id", "status", "updated_at"), [
            pgcopy.int8(order_ids), pgcopy.text_codes(status, STATUSES), pgcopy.timestamptz(updated_us),
        ])
        self._cur.execute(
            """UPDATE orders o SET status = c.status, updated_at = c.updated_at
               FROM generator_state_changes c
               WHERE o.order_id = c.order_id
                 AND (o.status, o.updated_at) IS DISTINCT FROM (c.status, c.updated_at)"""
        )
        return self._cur.rowcount

    def _copy(self, table: str, columns: tuple[str, ...], fields: list[pgcopy.Field]) -> None:
        self._copy_payload(table, columns, pgcopy.encode(fields))

    def _copy_payload(self, table: str, columns: tuple[str, ...], payload: bytes) -> None:
        self._cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT binary)",
                              io.BytesIO(payload), size=_COPY_CHUNK)


ORDER_COLUMNS = ("order_id", "external_ref", "customer_id", "status", "currency", "country", "created_at", "updated_at")
LINE_COLUMNS = ("order_item_id", "order_id", "line_no", "product_id", "quantity", "unit_price")


REFUND_COLUMNS = ("refund_line_id", "order_item_id", "quantity", "refunded_at")


def encode_refunds(refunds: DayRefunds) -> bytes:
    """Refunds as a binary COPY payload (pure: safe to run in a worker thread)."""
    return pgcopy.encode([
        pgcopy.int8(refunds.refund_line_id),
        pgcopy.int8(refunds.order_item_id),
        pgcopy.int4(refunds.quantity),
        pgcopy.timestamptz(refunds.refunded_us),
    ])


def encode_orders(orders: DayOrders, status: np.ndarray, updated_us: np.ndarray) -> bytes:
    """A day's orders as a binary COPY payload (pure: safe to run in a worker thread)."""
    return pgcopy.encode([
        pgcopy.int8(orders.order_id),
        pgcopy.text(np.strings.add(b"G", orders.order_id.astype("S20"))),
        pgcopy.int8(orders.customer_id, null=orders.customer_id == NO_CUSTOMER),
        pgcopy.text_codes(status, STATUSES),
        pgcopy.text_codes(np.zeros(len(orders), dtype=np.int64), (CURRENCY,)),
        pgcopy.text_codes(orders.country, _COUNTRY_CODES),
        pgcopy.timestamptz(orders.created_us),
        pgcopy.timestamptz(updated_us),
    ])


def encode_lines(lines: DayLines) -> bytes:
    """A day's order lines as a binary COPY payload (pure: safe to run in a worker thread)."""
    return pgcopy.encode([
        pgcopy.int8(lines.order_item_id),
        pgcopy.int8(lines.order_id),
        pgcopy.int4(lines.line_no),
        pgcopy.int8(lines.product_id),
        pgcopy.int4(lines.quantity),
        pgcopy.numeric_cents(lines.unit_cents),
    ])


@contextmanager
def transaction(url: str) -> Iterator[OrdersDb]:
    """Connect and yield an ``OrdersDb``; commit if the block succeeds, roll everything back if not."""
    try:
        conn = psycopg2.connect(url, connect_timeout=10)
    except psycopg2.Error as exc:
        raise GeneratorError(f"cannot connect to the orders database {safe_url(url)}: {_first_line(exc)}") from None
    try:
        db = OrdersDb(conn, url)
        try:
            yield db
            conn.commit()
        except psycopg2.OperationalError as exc:
            raise GeneratorError(f"the orders database {db.url} failed during generation, nothing was written: "
                                 f"{_first_line(exc)}") from None
        except psycopg2.IntegrityError as exc:
            raise GeneratorError(f"generated rows clash with rows already in {db.url}, nothing was written "
                                 f"(was it written by something else too?): {_first_line(exc)}") from None
    finally:
        conn.close()  # closing without commit rolls back


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
