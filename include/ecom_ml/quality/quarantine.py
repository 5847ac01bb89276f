"""Row-level quarantine: which rows a day's failed row rules take out, and whether the rest may be published.

A *row* rule judges single rows (a value range, a NULL in a non-key column, a duplicated line, an
implausible price or list price); its offending rows can be taken out and the rest of the day is
still right. A *structural* rule (schema, keys, referential integrity, rows outside the extraction
window, an unexpected empty day configured as an error) says the partition itself is wrong, so the
whole day is quarantined - as it is when the quarantined share exceeds ``max_bad_row_share``, since
a day that lost that much is no longer a faithful day of the shop.

Unit of quarantine: the order. A line that fails takes its whole order (every line and the order
row) with it, and a failing product takes every order that has a line of it. Features are built from
baskets (basket size, co-purchases, the customer's history); half an order would be a basket the
customer never bought, so it is safer to lose the order than to train on a fragment of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ecom_ml.quality.config import QualityConfig
from ecom_ml.quality.report import Quarantine, RuleResult

#: Rules whose failures are rows, not the partition. Every other error rule is structural.
ROW_RULES: frozenset[str] = frozenset({
    "orders.customer_id_not_null",
    "orders.status_not_null",
    "orders.status_in_set",
    "orders.created_at_not_null",
    "orders.updated_at_not_null",
    "orders.updated_after_created",
    "order_items.order_id_not_null",
    "order_items.line_no_not_null",
    "order_items.product_id_not_null",
    "order_items.quantity_not_null",
    "order_items.unit_price_not_null",
    "order_items.order_line_unique",
    "order_items.quantity_positive",
    "order_items.unit_price_non_negative",
    "order_items.unit_price_outlier",
    "products.list_price",
    "refund_lines.refunded_at_not_null",
    "refund_lines.quantity_positive",
    "refund_lines.within_ordered",
})

IDS_DOCUMENT = "quarantined_ids.json"


@dataclass(frozen=True)
class BadRows:
    """Keys of the rows to take out of a day: whole orders, single lines (without an order), products."""

    order_ids: frozenset[int]
    line_ids: frozenset[int]
    product_ids: frozenset[int]

    @property
    def empty(self) -> bool:
        return not (self.order_ids or self.line_ids or self.product_ids)

    def to_json(self) -> str:
        return json.dumps({"order_ids": sorted(self.order_ids), "order_item_ids": sorted(self.line_ids),
                           "product_ids": sorted(self.product_ids)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> BadRows:
        doc = json.loads(text)
        return cls(frozenset(doc["order_ids"]), frozenset(doc["order_item_ids"]), frozenset(doc["product_ids"]))


def _ids(table: pa.Table, column: str, positions: Sequence[int]) -> set[int]:
    if not positions:
        return set()
    values = table.take(pa.array(list(positions), pa.int64())).column(column)
    return {v for v in values.to_pylist() if v is not None}


def bad_rows(results: Sequence[RuleResult], tables: Mapping[str, pa.Table]) -> BadRows:
    """The rows the failed error-severity row rules point at, widened to whole orders."""
    orders: set[int] = set()
    lines: set[int] = set()
    products: set[int] = set()
    items = tables.get("order_items")
    for r in results:
        if not (r.failed and r.severity == "error" and r.rule in ROW_RULES and r.rows):
            continue
        if r.table == "orders":
            orders |= _ids(tables["orders"], "order_id", r.rows)
        elif r.table == "order_items" and items is not None:
            picked = items.take(pa.array(list(r.rows), pa.int64()))
            for order_id, item_id in zip(picked.column("order_id").to_pylist(),
                                         picked.column("order_item_id").to_pylist(), strict=True):
                if order_id is None:
                    lines.add(item_id)
                else:
                    orders.add(order_id)
        elif r.table == "products":
            products |= _ids(tables["products"], "product_id", r.rows)
        elif r.table == "refund_lines" and items is not None:
            # A bad refund takes the order of the line it refunds (the unit of quarantine).
            refunded = _ids(tables["refund_lines"], "order_item_id", r.rows)
            hit = pc.is_in(items.column("order_item_id"), value_set=pa.array(sorted(refunded), pa.int64()))
            orders |= {v for v in items.filter(hit).column("order_id").to_pylist() if v is not None}
    if products and items is not None:
        hit = pc.is_in(items.column("product_id"), value_set=pa.array(sorted(products), pa.int64()))
        orders |= {v for v in items.filter(hit).column("order_id").to_pylist() if v is not None}
    return BadRows(frozenset(orders), frozenset(lines), frozenset(products))


def _mask(table: pa.Table, column: str, keys: frozenset[int]) -> pa.ChunkedArray:
    if not keys:
        return pa.chunked_array([pa.array([False] * table.num_rows, pa.bool_())])
    return pc.fill_null(pc.is_in(table.column(column), value_set=pa.array(sorted(keys), pa.int64())), False)


def _line_mask(items: pa.Table, bad: BadRows) -> pa.ChunkedArray:
    return pc.or_(_mask(items, "order_id", bad.order_ids), _mask(items, "order_item_id", bad.line_ids))


def decide(results: Sequence[RuleResult], bad: BadRows, tables: Mapping[str, pa.Table],
           config: QualityConfig) -> Quarantine | None:
    """None when no error rule failed; else whether the day loses its bad rows or goes whole."""
    errors = [r for r in results if r.failed and r.severity == "error"]
    if not errors:
        return None
    orders, items = tables.get("orders"), tables.get("order_items")
    n_orders = 0 if orders is None else int(pc.sum(_mask(orders, "order_id", bad.order_ids)).as_py() or 0)
    n_lines = 0 if items is None else int(pc.sum(_line_mask(items, bad)).as_py() or 0)
    total_orders = orders.num_rows if orders is not None else 0
    total_lines = items.num_rows if items is not None else 0
    share = max(n_orders / total_orders if total_orders else 0.0, n_lines / total_lines if total_lines else 0.0)
    structural = [r.rule for r in errors if r.rule not in ROW_RULES]
    unmapped = [r.rule for r in errors if r.rule in ROW_RULES and not r.rows]
    max_share = config.max_bad_row_share
    if structural:
        reason = "structural rule(s) failed: " + ", ".join(structural)
    elif unmapped:  # a row rule failed without saying which rows (it crashed): fail closed
        reason = "rule(s) failed without naming their rows: " + ", ".join(unmapped)
    elif total_orders and n_orders >= total_orders:
        reason = "every order of the day is bad"
    elif share > max_share:
        reason = f"{share:.2%} of the day's orders or lines are bad, more than max_bad_row_share {max_share:.2%}"
    else:
        return Quarantine("rows", n_orders, n_lines, len(bad.product_ids), round(share, 6), max_share, "")
    return Quarantine("day", n_orders, n_lines, len(bad.product_ids), round(share, 6), max_share, reason)


def split(tables: Mapping[str, pa.Table], bad: BadRows) -> tuple[dict[str, pa.Table], dict[str, pa.Table]]:
    """(kept, quarantined) tables of the day; row order is kept, so a re-run gives the same bytes.

    The quarantined side holds the bad orders with all their lines, the bad products, and the
    customers and products those rows reference (so the rows can be read on their own).
    """
    orders, items = tables["orders"], tables["order_items"]
    customers, products = tables["customers"], tables["products"]
    bad_order = _mask(orders, "order_id", bad.order_ids)
    bad_line = _line_mask(items, bad)
    bad_product = _mask(products, "product_id", bad.product_ids)
    kept = {
        "orders": orders.filter(pc.invert(bad_order)),
        "order_items": items.filter(pc.invert(bad_line)),
        "customers": customers,
        "products": products.filter(pc.invert(bad_product)),
    }
    q_orders, q_items = orders.filter(bad_order), items.filter(bad_line)
    q_customers = customers.filter(pc.fill_null(pc.is_in(customers.column("customer_id"),
                                                         value_set=q_orders.column("customer_id")), False))
    q_products = products.filter(pc.or_(bad_product, pc.fill_null(
        pc.is_in(products.column("product_id"), value_set=q_items.column("product_id")), False)))
    quarantined = {"orders": q_orders, "order_items": q_items, "customers": q_customers, "products": q_products}
    refunds = tables.get("refund_lines")
    if refunds is not None:  # absent in partitions extracted before line-level refunds
        bad_refund = pc.fill_null(pc.is_in(refunds.column("order_item_id"),
                                           value_set=q_items.column("order_item_id")), False)
        kept["refund_lines"] = refunds.filter(pc.invert(bad_refund))
        quarantined["refund_lines"] = refunds.filter(bad_refund)
    return kept, quarantined
