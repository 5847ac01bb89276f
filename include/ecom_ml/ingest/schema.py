"""The lake's explicit Arrow schema for the extracted tables, and the source check behind it.

``refund_lines`` (migration 0003) is the newest: partitions extracted before it lack the table,
and readers treat such a partition's orders by their status alone (see ``ecom_ml.ingest.refunds``).

Written down rather than inferred, so a type change in the source database is an error at
extraction time instead of a silently different Parquet file, and readers (quality checks,
features, training) can rely on the types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ecom_ml.errors import EcomError

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # int64 | int32 | string | timestamp | money
    nullable: bool = True

    @property
    def arrow_type(self) -> Any:
        import pyarrow as pa

        return {
            "int64": pa.int64(),
            "int32": pa.int32(),
            "string": pa.string(),
            "timestamp": pa.timestamp("us", tz="UTC"),
            "money": pa.decimal128(12, 2),
        }[self.kind]


COLUMNS: dict[str, tuple[Column, ...]] = {
    "orders": (
        Column("order_id", "int64", nullable=False),
        Column("external_ref", "string"),
        Column("customer_id", "int64"),
        Column("status", "string", nullable=False),
        Column("currency", "string"),
        Column("country", "string"),
        Column("created_at", "timestamp", nullable=False),
        Column("updated_at", "timestamp", nullable=False),
    ),
    "order_items": (
        Column("order_item_id", "int64", nullable=False),
        Column("order_id", "int64", nullable=False),
        Column("line_no", "int32", nullable=False),
        Column("product_id", "int64", nullable=False),
        Column("quantity", "int32", nullable=False),
        Column("unit_price", "money", nullable=False),
    ),
    "refund_lines": (
        Column("refund_line_id", "int64", nullable=False),
        Column("order_item_id", "int64", nullable=False),
        Column("quantity", "int32", nullable=False),
        Column("refunded_at", "timestamp", nullable=False),
        Column("source_ref", "string"),
        Column("source_line", "int32"),
    ),
    "customers": (
        Column("customer_id", "int64", nullable=False),
        Column("external_ref", "string"),
        Column("country", "string"),
        Column("created_at", "timestamp", nullable=False),
        Column("updated_at", "timestamp", nullable=False),
    ),
    "products": (
        Column("product_id", "int64", nullable=False),
        Column("sku", "string", nullable=False),
        Column("name", "string"),
        Column("category", "string", nullable=False),
        Column("price", "money", nullable=False),
        Column("created_at", "timestamp", nullable=False),
        Column("updated_at", "timestamp", nullable=False),
    ),
}


def arrow_schema(table: str) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in COLUMNS[table]])


def finish(table: str, raw: pa.Table) -> pa.Table:
    """Turn the parsed CSV (timestamps as epoch microseconds) into the lake schema."""
    import pyarrow as pa

    arrays = []
    for column in COLUMNS[table]:
        values = raw.column(column.name)
        if column.kind == "timestamp":
            values = values.cast(pa.timestamp("us", tz="UTC"))
        arrays.append(values)
    return pa.Table.from_arrays(arrays, schema=arrow_schema(table))


class SourceSchemaError(EcomError):
    """The source database lacks a column the extraction reads (renamed or dropped)."""


def check_source(cursor, where: str) -> None:
    """Fail with the missing table.column names before any data moves."""
    cursor.execute(
        """SELECT table_name, column_name FROM information_schema.columns
           WHERE table_schema = current_schema() AND table_name = ANY(%s)""",
        (list(COLUMNS),),
    )
    present = {(t, c) for t, c in cursor.fetchall()}
    missing = [f"{t}.{c.name}" for t, cols in COLUMNS.items() for c in cols if (t, c.name) not in present]
    if missing:
        tables = {m.split(".")[0] for m in missing}
        absent = [t for t in tables if not any(p[0] == t for p in present)]
        if absent:
            raise SourceSchemaError(f"orders database {where}: table(s) {', '.join(sorted(absent))} missing "
                                    "(run `ecom-ml db migrate` or check the connection)")
        raise SourceSchemaError(
            f"orders database {where}: column(s) {', '.join(missing)} missing (renamed or dropped in the source?); "
            "nothing was extracted"
        )
