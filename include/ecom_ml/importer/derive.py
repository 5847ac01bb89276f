"""Turn accepted order lines into the four target tables (customers, products, orders, order lines).

The export is one row per order line, so customers, products and orders are derived from it; each
choice below is one the export forces on us because it repeats the same entity with differing
attributes:

* customer: ``external_ref`` = the customer id as text (a float artefact ``12345.0`` becomes
  ``12345``); ``created_at`` = first seen, ``updated_at`` = last seen; ``country`` = the country of
  the customer's latest line (a customer who moved is where they are now; 5 customers in the
  2009-2010 file have two).
* product: ``sku`` = the stock code stripped and upper-cased (the file has both ``85123a`` and
  ``85123A``); ``name`` = its most frequent non-empty description (ties: the one seen last);
  ``price`` = the unit price of its latest line (the current list price; lines keep their own);
  ``category`` from the mapping's keyword table on the name; created/updated = first/last seen.
* order: ``external_ref`` = the invoice; ``created_at`` = its earliest line's time (41 invoices span
  two minutes); customer and country from its first line; status from the mapping unless a
  cancellation was linked to it (see cancellations.py), ``updated_at`` = created_at or the latest
  linked cancellation.
* order line: ``line_no`` = 1, 2, ... in file order within the order, over accepted lines only.
* refund line: each linked cancellation line (``Links.refunds``) takes its quantity from the
  order's lines of that SKU in line order, each up to what it still holds after earlier
  cancellations (linking guarantees the pool holds enough); one cancellation line may so refund
  two duplicate lines, each its own row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ecom_ml.importer.cancellations import Links
from ecom_ml.importer.mapping import Categories, Mapping


@dataclass(frozen=True)
class Tables:
    """Staging frames, one per target table, keyed by external references rather than database ids."""

    customers: pd.DataFrame  # external_ref, country, created_at, updated_at
    products: pd.DataFrame  # sku, name, category, price, created_at, updated_at
    orders: pd.DataFrame  # external_ref, customer_ref, status, currency, country, created_at, updated_at
    items: pd.DataFrame  # order_ref, line_no, sku, quantity, unit_price
    refunds: pd.DataFrame  # order_ref, line_no, sku, quantity, refunded_at, source_ref, source_line


def build_tables(lines: pd.DataFrame, links: Links, mapping: Mapping) -> Tables:
    """Derive the target tables from the accepted order lines (``rules.classify`` columns)."""
    lines = lines.sort_values("line", kind="stable")
    items = pd.DataFrame(
        {
            "order_ref": lines["order_ref"],
            "line_no": lines.groupby("order_ref", sort=False).cumcount() + 1,
            "sku": lines["sku"],
            "quantity": lines["quantity"],
            "unit_price": cents_to_text(lines["price_cents"]),
        }
    ).reset_index(drop=True)
    return Tables(
        customers=_customers(lines),
        products=_products(lines, mapping.categories),
        orders=_orders(lines, links, mapping),
        items=items,
        refunds=refund_lines(items, links.refunds),
    )


REFUND_COLUMNS = ("order_ref", "line_no", "sku", "quantity", "refunded_at", "source_ref", "source_line")


def refund_lines(items: pd.DataFrame, refunds: pd.DataFrame) -> pd.DataFrame:
    """Spread each linked cancellation over its order's lines of the SKU (see module doc).

    A Python loop over cancellation lines: they are a few percent of the file (about 8k of 525k on
    Online Retail II), and each touches the one or two lines of its (order, SKU).
    """
    wanted = items.merge(refunds[["order_ref", "sku"]].drop_duplicates(), on=["order_ref", "sku"], how="inner")
    pools: dict[tuple[str, str], list[list[int]]] = {}
    for ref, sku, line_no, quantity in zip(wanted["order_ref"].tolist(), wanted["sku"].tolist(),
                                           wanted["line_no"].tolist(), wanted["quantity"].tolist(), strict=True):
        pools.setdefault((ref, sku), []).append([int(line_no), int(quantity)])
    out: list[tuple[object, ...]] = []
    for ref, sku, quantity, at, source, source_line in zip(
        refunds["order_ref"].tolist(), refunds["sku"].tolist(), refunds["quantity"].tolist(),
        refunds["refunded_at"].tolist(), refunds["source_ref"].tolist(), refunds["source_line"].tolist(), strict=True,
    ):
        left = int(quantity)
        for slot in sorted(pools.get((ref, sku), [])):
            if left == 0:
                break
            take = min(left, slot[1])
            if take > 0:
                slot[1] -= take
                left -= take
                out.append((ref, slot[0], sku, take, at, source, int(source_line)))
        if left:  # linking checked the pooled quantity; a shortfall here is a bug
            raise RuntimeError(f"cancellation {source} line {source_line}: {left} of {sku} not found in order {ref}")
    frame = pd.DataFrame(out, columns=list(REFUND_COLUMNS))
    frame["refunded_at"] = pd.to_datetime(frame["refunded_at"], utc=True)
    return frame.astype({"line_no": np.int64, "quantity": np.int64, "source_line": np.int64})


def cents_to_text(cents: pd.Series) -> pd.Series:
    """Exact decimal text for whole pence (non-negative), so no float rounding reaches the database."""
    pounds, pence = np.divmod(cents.to_numpy(dtype=np.int64), 100)
    return (
        pd.Series(pounds, index=cents.index).astype(str)
        + "."
        + pd.Series(pence, index=cents.index).astype(str).str.zfill(2)
    )


def categorise(names: pd.Series, categories: Categories) -> pd.Series:
    """Category per name: the first keyword rule with a whole-word match, else the fallback."""
    upper = names.fillna("").str.upper()
    result = pd.Series(categories.fallback, index=names.index, dtype="str")
    open_ = np.ones(len(names), dtype=bool)
    for rule in categories.rules:
        pattern = r"\b(?:" + "|".join(re.escape(word) for word in rule.words) + r")\b"
        hit = open_ & upper.str.contains(pattern, regex=True).to_numpy(dtype=bool)
        result[hit] = rule.category
        open_ &= ~hit
    return result


def _chronological(lines: pd.DataFrame) -> pd.DataFrame:
    return lines.sort_values(["ts", "line"], kind="stable")


def _nullable(values: pd.Series) -> pd.Series:
    """Empty text is "unknown": NULL in the database, not ''."""
    return values.where(values != "", None)


def _customers(lines: pd.DataFrame) -> pd.DataFrame:
    known = _chronological(lines[lines["customer_ref"] != ""])
    seen = known.groupby("customer_ref", sort=False).agg(
        country=("country", "last"), created_at=("ts", "first"), updated_at=("ts", "last")
    )
    seen = seen.sort_values("created_at", kind="stable").rename_axis("external_ref").reset_index()
    seen["country"] = _nullable(seen["country"])
    return seen


def _products(lines: pd.DataFrame, categories: Categories) -> pd.DataFrame:
    seen = (
        _chronological(lines)
        .groupby("sku", sort=False)
        .agg(price_cents=("price_cents", "last"), created_at=("ts", "first"), updated_at=("ts", "last"))
    )
    names = (
        lines[lines["description"] != ""]
        .groupby(["sku", "description"], sort=False)
        .agg(count=("line", "size"), last=("line", "max"))
        .reset_index()
        .sort_values(["count", "last"], ascending=False, kind="stable")
        .drop_duplicates("sku")
        .set_index("sku")["description"]
    )
    seen = seen.sort_values("created_at", kind="stable").reset_index()
    seen.insert(1, "name", names.reindex(seen["sku"]).to_numpy())
    seen.insert(2, "category", categorise(seen["name"], categories))
    seen.insert(3, "price", cents_to_text(seen.pop("price_cents")))
    return seen


def _orders(lines: pd.DataFrame, links: Links, mapping: Mapping) -> pd.DataFrame:
    orders = lines.groupby("order_ref", sort=False).agg(
        customer_ref=("customer_ref", "first"),
        country=("country", "first"),
        created_at=("ts", "min"),
        first_line=("line", "min"),
    )
    orders = orders.sort_values(["created_at", "first_line"], kind="stable")
    updates = links.orders.reindex(orders.index)
    orders["status"] = updates["status"].fillna(mapping.order_status)
    orders["updated_at"] = updates["updated_at"].fillna(orders["created_at"])
    orders["currency"] = mapping.currency
    orders["customer_ref"] = _nullable(orders["customer_ref"])
    orders["country"] = _nullable(orders["country"])
    orders = orders.rename_axis("external_ref").reset_index()
    return orders[["external_ref", "customer_ref", "status", "currency", "country", "created_at", "updated_at"]]
