"""Write the derived tables into the orders database in one transaction, never twice.

Why this shape:

* **COPY into temporary staging tables, then INSERT ... SELECT.** COPY is the fast way in (hundreds
  of thousands of lines in about a second); the SQL step then resolves external references
  (customer id, SKU, invoice) to the database's own ids with joins, where the data already is.
* **ON CONFLICT (external_ref / sku) DO NOTHING.** A second import of the same export, or of an
  overlapping one, adds only what is new. Order lines are inserted only for orders inserted *now*,
  so an order already present never gains duplicate lines. Identity columns assign every id, so
  no sequence ever needs bumping; rows already present are filtered out before the INSERT as well,
  so a re-run does not burn identity values on conflicts (ON CONFLICT stays as the guard against a
  concurrent writer).
* **An invoice already present with other lines is a conflict, never a silent skip.** Skipping it
  as "already present" would keep, for good, an invoice that an earlier (say, truncated) import
  stored with only some of its lines. The import is refused naming the invoices, unless the caller
  asks to skip them (``on_conflict="skip"``), in which case they are still counted and named.
* **One transaction, committed by the caller.** Every step runs in the connection's open
  transaction and nothing here commits: a failure anywhere (including the caller's own steps
  after loading) rolls back to exactly the state before. The staging tables are ``ON COMMIT DROP``
  temporaries, gone either way. A transaction-scoped advisory lock serialises concurrent imports.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd
import psycopg2
import psycopg2.errors
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor

from ecom_ml.errors import EcomError
from ecom_ml.importer.derive import Tables

_LOCK_KEY = 0x65636F6D_696D70  # "ecom" "imp": one advisory-lock key for all imports

#: Staging tables: name -> (column, type) in the order the derived frames carry them.
_STAGING: dict[str, tuple[tuple[str, str], ...]] = {
    "import_customers": (
        ("external_ref", "text"),
        ("country", "text"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
    ),
    "import_products": (
        ("sku", "text"),
        ("name", "text"),
        ("category", "text"),
        ("price", "numeric(12, 2)"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
    ),
    "import_orders": (
        ("external_ref", "text"),
        ("customer_ref", "text"),
        ("status", "text"),
        ("currency", "char(3)"),
        ("country", "text"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
    ),
    "import_items": (
        ("order_ref", "text"),
        ("line_no", "integer"),
        ("sku", "text"),
        ("quantity", "integer"),
        ("unit_price", "numeric(12, 2)"),
    ),
    "import_refunds": (
        ("order_ref", "text"),
        ("line_no", "integer"),
        ("sku", "text"),
        ("quantity", "integer"),
        ("refunded_at", "timestamptz"),
        ("source_ref", "text"),
        ("source_line", "integer"),
    ),
    "import_new_orders": (("order_id", "bigint"), ("external_ref", "text"), ("status", "text")),
}


class DatabaseError(EcomError):
    """The orders database is unreachable or lacks the orders schema."""


class ImportConflict(EcomError):
    """Invoices in the file are already in the database with different lines; nothing was imported."""


@dataclass(frozen=True)
class Conflict:
    """An invoice present in the database whose lines differ from the file's."""

    order_ref: str
    lines_in_db: int
    lines_in_file: int

    def describe(self) -> str:
        return f"{self.order_ref} ({self.lines_in_db} lines in the database, {self.lines_in_file} in the file)"


@dataclass
class LoadCounts:
    """What the load did: per table, rows new now and rows skipped as already present."""

    customers_new: int = 0
    customers_present: int = 0
    products_new: int = 0
    products_present: int = 0
    orders_new: int = 0
    orders_present: int = 0
    items_new: int = 0
    refunds_new: int = 0
    refunds_present: int = 0
    orders_new_by_status: dict[str, int] = field(default_factory=dict)
    present_examples: list[str] = field(default_factory=list)  # a few invoices skipped as present
    conflicts: list[Conflict] = field(default_factory=list)  # present invoices whose lines differ (skipped)


@contextmanager
def connect(url: str, safe_url: str) -> Iterator[Connection]:
    """An open connection (its transaction uncommitted until the caller commits); closed on exit."""
    try:
        conn = psycopg2.connect(url)
    except psycopg2.OperationalError as exc:
        first = (str(exc).strip().splitlines() or ["no detail"])[0]
        raise DatabaseError(f"cannot connect to the orders database {safe_url}: {first}") from None
    try:
        yield conn
    finally:
        conn.close()


def load_tables(
    conn: Connection,
    tables: Tables,
    safe_url: str,
    step: Callable[[str], None] = lambda _: None,
    on_conflict: str = "refuse",
) -> LoadCounts:
    """Stage and insert ``tables`` inside ``conn``'s open transaction; the caller commits or rolls back.

    ``on_conflict``: ``"refuse"`` raises :class:`ImportConflict` when an invoice already present has
    other lines than the file's; ``"skip"`` leaves those invoices as they are and reports them.
    """
    if on_conflict not in ("refuse", "skip"):
        raise ValueError(f"on_conflict must be 'refuse' or 'skip', not {on_conflict!r}")
    counts = LoadCounts()
    with conn.cursor() as cur:
        try:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            step("staging")
            _stage(cur, tables)
            counts.conflicts = _conflicts(cur)
            if counts.conflicts and on_conflict == "refuse":
                shown = ", ".join(c.describe() for c in counts.conflicts[:3])
                more = f" and {len(counts.conflicts) - 3:,} more" if len(counts.conflicts) > 3 else ""
                raise ImportConflict(
                    f"{len(counts.conflicts):,} invoice(s) already in {safe_url} have other lines than this file: "
                    f"{shown}{more}; nothing was imported (delete those orders and import again, or pass "
                    "--skip-conflicts to import the rest and leave them as they are)"
                )
            step("customers")
            counts.customers_new = _insert_customers(cur)
            step("products")
            counts.products_new = _insert_products(cur)
            step("orders")
            counts.orders_new = _insert_orders(cur)
            step("order lines")
            counts.items_new = _insert_items(cur)
            step("refund lines")
            counts.refunds_new = _insert_refunds(cur)
        except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn) as exc:
            first = str(exc).strip().splitlines()[0]
            raise DatabaseError(
                f"{safe_url} does not have the orders schema ({first}); run `ecom-ml db migrate`"
            ) from None
        counts.customers_present = len(tables.customers) - counts.customers_new
        counts.products_present = len(tables.products) - counts.products_new
        counts.orders_present = len(tables.orders) - counts.orders_new
        counts.refunds_present = len(tables.refunds) - counts.refunds_new
        cur.execute("SELECT status, count(*) FROM import_new_orders GROUP BY status ORDER BY status")
        counts.orders_new_by_status = dict(cur.fetchall())
        cur.execute(
            """SELECT s.external_ref FROM import_orders s
               WHERE NOT EXISTS (SELECT 1 FROM import_new_orders n WHERE n.external_ref = s.external_ref)
               ORDER BY s.created_at, s.external_ref LIMIT 3"""
        )
        counts.present_examples = [row[0] for row in cur.fetchall()]
    return counts


def _conflicts(cur: Cursor) -> list[Conflict]:
    """Invoices of the file already present whose lines (number, SKU, quantity, price) differ."""
    cur.execute(
        """WITH present AS (
               SELECT s.external_ref, o.order_id FROM import_orders s JOIN orders o USING (external_ref)),
           f AS (SELECT i.order_ref AS ref, i.line_no, i.sku, i.quantity, i.unit_price
                 FROM import_items i JOIN present p ON p.external_ref = i.order_ref),
           d AS (SELECT p.external_ref AS ref, oi.line_no, pr.sku, oi.quantity, oi.unit_price
                 FROM present p JOIN order_items oi ON oi.order_id = p.order_id
                 JOIN products pr ON pr.product_id = oi.product_id),
           differ AS (SELECT ref FROM ((SELECT * FROM f EXCEPT ALL SELECT * FROM d)
                                       UNION ALL (SELECT * FROM d EXCEPT ALL SELECT * FROM f)) x GROUP BY ref)
           SELECT x.ref, (SELECT count(*) FROM d WHERE d.ref = x.ref), (SELECT count(*) FROM f WHERE f.ref = x.ref)
           FROM differ x ORDER BY x.ref"""
    )
    return [Conflict(ref, int(in_db), int(in_file)) for ref, in_db, in_file in cur.fetchall()]


def _stage(cur: Cursor, tables: Tables) -> None:
    for name, columns in _STAGING.items():
        cur.execute(f"CREATE TEMPORARY TABLE {name} ({', '.join(f'{c} {t}' for c, t in columns)}) ON COMMIT DROP")
    for name, frame in (
        ("import_customers", tables.customers),
        ("import_products", tables.products),
        ("import_orders", tables.orders),
        ("import_items", tables.items),
        ("import_refunds", tables.refunds),
    ):
        _copy(cur, name, frame)
        cur.execute(f"ANALYZE {name}")  # temporary tables get no autovacuum statistics


def _copy(cur: Cursor, table: str, frame: pd.DataFrame) -> None:
    """COPY a frame as CSV; its columns must be the staging table's, in order (empty -> NULL)."""
    expected = [column for column, _ in _STAGING[table]]
    if list(frame.columns) != expected:
        raise ValueError(f"{table}: frame columns {list(frame.columns)} != staging columns {expected}")
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False)
    buffer.seek(0)
    cur.copy_expert(f"COPY {table} ({', '.join(expected)}) FROM STDIN WITH (FORMAT csv)", buffer)


def _insert_customers(cur: Cursor) -> int:
    cur.execute(
        """INSERT INTO customers (external_ref, country, created_at, updated_at)
           SELECT s.external_ref, s.country, s.created_at, s.updated_at FROM import_customers s
           WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.external_ref = s.external_ref)
           ORDER BY s.created_at, s.external_ref
           ON CONFLICT (external_ref) DO NOTHING"""
    )
    return cur.rowcount


def _insert_products(cur: Cursor) -> int:
    cur.execute(
        """INSERT INTO products (sku, name, category, price, created_at, updated_at)
           SELECT s.sku, s.name, s.category, s.price, s.created_at, s.updated_at FROM import_products s
           WHERE NOT EXISTS (SELECT 1 FROM products p WHERE p.sku = s.sku)
           ORDER BY s.created_at, s.sku
           ON CONFLICT (sku) DO NOTHING"""
    )
    return cur.rowcount


def _insert_orders(cur: Cursor) -> int:
    """Insert orders not yet present, remembering the new ids so only their lines are added."""
    cur.execute(
        """WITH inserted AS (
               INSERT INTO orders (external_ref, customer_id, status, currency, country, created_at, updated_at)
               SELECT s.external_ref, c.customer_id, s.status, s.currency, s.country, s.created_at, s.updated_at
               FROM import_orders s LEFT JOIN customers c ON c.external_ref = s.customer_ref
               WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.external_ref = s.external_ref)
               ORDER BY s.created_at, s.external_ref
               ON CONFLICT (external_ref) DO NOTHING
               RETURNING order_id, external_ref, status)
           INSERT INTO import_new_orders (order_id, external_ref, status)
           SELECT order_id, external_ref, status FROM inserted"""
    )
    return cur.rowcount


def _insert_items(cur: Cursor) -> int:
    """Insert the lines of the orders inserted now; a line whose product did not resolve is a bug."""
    cur.execute(
        """INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price)
           SELECT n.order_id, i.line_no, p.product_id, i.quantity, i.unit_price
           FROM import_items i
           JOIN import_new_orders n ON n.external_ref = i.order_ref
           JOIN products p ON p.sku = i.sku
           ORDER BY n.order_id, i.line_no"""
    )
    inserted = cur.rowcount
    cur.execute("SELECT count(*) FROM import_items i JOIN import_new_orders n ON n.external_ref = i.order_ref")
    expected = cur.fetchone()[0]
    if inserted != expected:
        raise RuntimeError(
            f"inserted {inserted} order lines for the new orders, expected {expected}: a SKU did not resolve"
        )
    return inserted


def _insert_refunds(cur: Cursor) -> int:
    """Insert the file's refund lines not yet present, for every order of the file in the database.

    Also for orders already present: a database imported before line-level refunds existed gains
    them on a re-import (its orders kept their status). A refund attaches to the order line with its
    order, line number *and* SKU, so an invoice present with other lines (a skipped conflict) gets
    none rather than a wrong one; ``(source_ref, source_line, order_item_id)`` makes a second import
    add nothing.
    """
    cur.execute(
        """INSERT INTO refund_lines (order_item_id, quantity, refunded_at, source_ref, source_line)
           SELECT oi.order_item_id, r.quantity, r.refunded_at, r.source_ref, r.source_line
           FROM import_refunds r
           JOIN orders o ON o.external_ref = r.order_ref
           JOIN order_items oi ON oi.order_id = o.order_id AND oi.line_no = r.line_no
           JOIN products p ON p.product_id = oi.product_id AND p.sku = r.sku
           WHERE NOT EXISTS (SELECT 1 FROM refund_lines x WHERE x.source_ref = r.source_ref
                             AND x.source_line = r.source_line AND x.order_item_id = oi.order_item_id)
           ORDER BY r.refunded_at, r.source_ref, r.source_line, oi.order_item_id
           ON CONFLICT (source_ref, source_line, order_item_id) DO NOTHING"""
    )
    return cur.rowcount
