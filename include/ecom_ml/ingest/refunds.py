"""What each order line's customer kept, and since when it stopped being a purchase: one rule for every reader.

Since migration 0003 a refund is recorded per line (``refund_lines``: quantity, ``refunded_at``), so
a line counts with ``kept = ordered - refunded`` and is dropped only when refunded in full. Every
feature reader (recommender, demand, propensity) goes through :func:`line_states`, so they cannot
disagree on what was kept.

The rules:

* **Orders with refund rows** are read line by line: a line's refunds, in time order and capped at
  what it ordered, are its ``refunds`` (``at``, ``quantity``); ``removed_at`` is the moment the
  refunds reached the ordered quantity (null while some of it is kept). The order's status is not
  read: the rows say more than it does.
* **Orders without refund rows** keep the order-level rule (``ecom_ml.features.recommender.
  removal_times``): a ``cancelled``/``refunded`` order drops every line from the moment it entered
  that state. That is also the fallback for an older lake whose partitions have no ``refund_lines``
  table, and for rows a database held before the migration.
* **As of a moment** (a training cutoff) a reader counts a line when ``removed_at`` is null or not
  before the moment, with ``kept_as_of``: the refunds recorded before the moment subtracted, the
  later ones not - the same as-of rule the order status follows, so a refund recorded after the
  cutoff does not change training data, and one recorded before does.

Lines with a quantity of zero or less (bad data the quality step flags) get no refunds: there is
nothing to take back, and readers clip such lines themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_TS = pa.timestamp("us", tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
REFUND_TYPE = pa.list_(pa.struct([pa.field("at", _TS), pa.field("quantity", pa.int32())]))
#: Epoch µs standing for "never" (no removal), so masks need no null handling.
NEVER = np.iinfo(np.int64).max


def line_states(tables: Mapping[str, pa.Table]) -> pa.Table:
    """Per order line: ``order_item_id``, ``order_id``, ``quantity`` (as ordered), ``removed_at``
    (nullable) and ``refunds`` (list of ``at``/``quantity``, in time order); see the module doc."""
    from ecom_ml.features.recommender import removal_times

    items = tables["order_items"]
    if "order_item_id" in items.column_names:
        item_ids = items.column("order_item_id").to_numpy().astype(np.int64)
    else:  # hand-made tables without line ids: nothing can refer to a line, so no refunds apply
        item_ids = np.arange(items.num_rows, dtype=np.int64)
        tables = {name: table for name, table in tables.items() if name != "refund_lines"}
    order_ids = items.column("order_id").to_numpy().astype(np.int64)
    quantity = items.column("quantity").to_numpy().astype(np.int64)
    n = len(item_ids)

    removal = removal_times(tables)
    by_order = dict(zip(removal.column("order_id").to_numpy().tolist(),
                        removal.column("removed_at").cast(pa.int64()).to_numpy().tolist(), strict=True))
    removed = np.array([by_order.get(o, NEVER) for o in order_ids.tolist()], dtype=np.int64) if n else \
        np.zeros(0, dtype=np.int64)

    offsets = np.zeros(n + 1, dtype=np.int64)
    at = np.zeros(0, dtype=np.int64)
    taken = np.zeros(0, dtype=np.int64)
    refunds = tables.get("refund_lines")
    if refunds is not None and refunds.num_rows and n:
        r_item = refunds.column("order_item_id").to_numpy().astype(np.int64)
        r_at = refunds.column("refunded_at").cast(_TS).cast(pa.int64()).to_numpy()
        r_qty = refunds.column("quantity").to_numpy().astype(np.int64)
        sorter = np.argsort(item_ids, kind="stable")
        found = np.searchsorted(item_ids, r_item, sorter=sorter)
        found = np.minimum(found, n - 1)
        line = sorter[found]
        known = (item_ids[line] == r_item) & (r_qty > 0)
        line, r_at, r_qty = line[known], r_at[known], r_qty[known]
        # Orders with any refund row are read line by line: their order-level removal is dropped.
        line_level = np.isin(order_ids, np.unique(order_ids[line]))
        removed = np.where(line_level, NEVER, removed)
        order = np.lexsort((r_at, line))  # by line, then time
        line, r_at, r_qty = line[order], r_at[order], r_qty[order]
        # Cap each line's running total at what it ordered (a surplus is the quality step's finding).
        cumulative = np.cumsum(r_qty)
        starts = np.r_[0, np.flatnonzero(line[1:] != line[:-1]) + 1] if len(line) else np.zeros(0, np.int64)
        base = np.repeat(cumulative[starts] - r_qty[starts], np.diff(np.r_[starts, len(line)]))
        running = cumulative - base
        cap = np.maximum(quantity[line], 0)
        capped = np.minimum(running, cap) - np.minimum(running - r_qty, cap)
        useful = capped > 0
        line, r_at, capped, running = line[useful], r_at[useful], capped[useful], running[useful]
        full = running >= quantity[line]
        if full.any():  # the first refund that completes a line removes it
            done = np.full(n, NEVER, dtype=np.int64)
            np.minimum.at(done, line[full], r_at[full])
            removed = np.where(done < NEVER, done, removed)
        offsets[1:] = np.cumsum(np.bincount(line, minlength=n))
        at, taken = r_at, capped
    structs = pa.StructArray.from_arrays([pa.array(at, pa.int64()).cast(_TS), pa.array(taken, pa.int32())],
                                         fields=list(REFUND_TYPE.value_type))
    return pa.table({
        "order_item_id": pa.array(item_ids, pa.int64()),
        "order_id": pa.array(order_ids, pa.int64()),
        "quantity": pa.array(quantity, pa.int64()),
        "removed_at": pa.array(np.where(removed == NEVER, 0, removed), pa.int64(),
                               mask=removed == NEVER).cast(_TS),
        "refunds": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), structs).cast(REFUND_TYPE),
    })


def micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def refunded_before(refunds: pa.ChunkedArray | pa.Array, moment: datetime | None) -> np.ndarray:
    """Units refunded per row before ``moment`` (None: all recorded so far)."""
    if isinstance(refunds, pa.ChunkedArray):
        refunds = refunds.combine_chunks() if refunds.num_chunks else pa.array([], REFUND_TYPE)
    n = len(refunds)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    filled = pc.fill_null(refunds, pa.scalar([], REFUND_TYPE))
    flat = pc.list_flatten(filled)
    if len(flat) == 0:
        return np.zeros(n, dtype=np.int64)
    parent = pc.list_parent_indices(filled).to_numpy()
    qty = flat.field("quantity").to_numpy(zero_copy_only=False).astype(np.int64)
    if moment is not None:
        at = flat.field("at").cast(pa.int64()).to_numpy(zero_copy_only=False)
        qty = np.where(at < micros(moment), qty, 0)
    return np.bincount(parent, weights=qty, minlength=n).astype(np.int64)


def kept_as_of(quantity: np.ndarray, refunds: pa.ChunkedArray | pa.Array, moment: datetime | None) -> np.ndarray:
    """Ordered minus refunded before ``moment`` (None: today's state), per row."""
    return np.asarray(quantity, dtype=np.int64) - refunded_before(refunds, moment)
