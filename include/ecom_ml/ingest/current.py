"""The current state of the orders in a window of validated days.

Partitions are change captures (see ``ecom_ml.ingest.extract``): an order cancelled five days after
it was placed appears in two partitions. Every reader of the lake that wants "the orders" goes
through here, so the rule "latest ``updated_at`` wins, then the later partition" lives in one place.

Beside the current state it returns ``order_history``: every version of every order seen in the
window (``order_id``, ``status``, ``updated_at``), so a reader can see an order *as it was* at an
earlier moment — a model trained up to a cutoff must see an order cancelled after the cutoff as the
purchase it still was then (``ecom_ml.features.recommender`` turns this into ``removed_at``).

``refund_lines`` are taken from the same partition as the order's chosen version, like its lines:
that partition holds every refund of the order recorded up to it. Each refund row carries
``refunded_at``, so a reader at a cutoff counts only the refunds recorded before it
(``ecom_ml.ingest.refunds``). Partitions extracted before line-level refunds have no such table;
their orders come back without refund rows, and readers fall back to the order's status.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

from ecom_ml.lake import VALIDATED, Lake

if TYPE_CHECKING:
    import pyarrow as pa

DATASET = "orders"
_PART = "__partition"


def _latest(table: pa.Table, key: str) -> pa.Table:
    """Keep, per key, the row with the highest (updated_at, partition)."""
    import numpy as np
    import pyarrow as pa

    if table.num_rows == 0:
        return table
    ordered = table.sort_by([(key, "ascending"), ("updated_at", "ascending"), (_PART, "ascending")])
    keys = ordered.column(key).to_numpy()
    last = np.ones(len(keys), dtype=bool)
    last[:-1] = keys[:-1] != keys[1:]
    return ordered.filter(pa.array(last))


HISTORY_COLUMNS = ("order_id", "status", "updated_at")


def current_orders(lake: Lake, first: date, last: date) -> dict[str, pa.Table]:
    """Orders, lines, customers and products as of the newest validated partition in [first, last],
    and ``order_history``: each distinct (order, status, updated_at) version seen, sorted."""
    import pyarrow as pa

    from ecom_ml.ingest.schema import arrow_schema

    days = [d for d in lake.days(VALIDATED, DATASET) if first <= d <= last]
    names = ("orders", "order_items", "refund_lines", "customers", "products")
    parts: dict[str, list[pa.Table]] = {name: [] for name in names}
    for index, day in enumerate(days):
        for name, table in lake.read(VALIDATED, DATASET, day).items():
            if name not in parts:
                continue
            parts[name].append(table.append_column(_PART, pa.array([index] * table.num_rows, pa.int32())))
    merged: dict[str, pa.Table] = {}
    for name, tables in parts.items():
        schema = arrow_schema(name).append(pa.field(_PART, pa.int32()))
        merged[name] = pa.concat_tables(tables).cast(schema) if tables else schema.empty_table()
    orders = _latest(merged["orders"], "order_id")
    history = merged["orders"].select(list(HISTORY_COLUMNS))
    if history.num_rows:
        history = history.group_by(list(HISTORY_COLUMNS), use_threads=False).aggregate([])
        history = history.select(list(HISTORY_COLUMNS)).sort_by([(c, "ascending") for c in HISTORY_COLUMNS])
    items = merged["order_items"].join(orders.select(["order_id", _PART]), keys=["order_id", _PART], join_type="inner")
    items = items.sort_by([("order_id", "ascending"), ("line_no", "ascending"), ("order_item_id", "ascending")])
    # A refund belongs to the partition of its line's chosen version (the line's order_item_id and
    # partition), so a refund deleted in the source disappears with the next version of the order.
    refunds = merged["refund_lines"].join(items.select(["order_item_id", _PART]), keys=["order_item_id", _PART],
                                          join_type="inner")
    refunds = refunds.sort_by([("refund_line_id", "ascending")])
    return {
        "orders": orders.drop_columns([_PART]),
        "order_items": items.select([f.name for f in arrow_schema("order_items")]),
        "refund_lines": refunds.select([f.name for f in arrow_schema("refund_lines")]),
        "customers": _latest(merged["customers"], "customer_id").drop_columns([_PART]),
        "products": _latest(merged["products"], "product_id").drop_columns([_PART]),
        "order_history": history,
    }


def window(end: date, days: int) -> tuple[date, date]:
    """The ``days`` days ending with ``end`` (inclusive), for trailing-window readers."""
    return end - timedelta(days=days - 1), end


def window_orders(lake: Lake, end: date, days: int) -> tuple[date, date, dict[str, pa.Table]]:
    """``(first, last, current_orders)`` of the ``days`` days ending with ``end``, for a training
    DAG's features task; none at all is one line (the ingest DAG has not run for those days)."""
    from ecom_ml.errors import EcomError

    first, last = window(end, days)
    tables = current_orders(lake, first, last)
    if tables["orders"].num_rows == 0:
        raise EcomError(f"no validated orders between {first} and {last} under {lake.root}: run orders_ingest first")
    return first, last, tables
