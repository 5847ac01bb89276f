"""Link cancellation lines to the orders they cancel, and derive those orders' status.

In the export a cancellation is its own invoice (``C489449``) with negative quantities and no
pointer to the order it cancels, so the link is inferred. The rule, applied to cancellation lines in
time order (then file order), one line at a time:

* candidates are accepted order lines with the **same customer** and the **same SKU**, whose order
  was created **strictly before** the cancellation (an order cannot be cancelled before it exists,
  and strictness keeps ``updated_at > created_at``);
* quantities are pooled per (order, SKU), minus what earlier cancellations already took;
* the **latest** candidate order that still holds **at least** the cancelled quantity wins (ties on
  the order's time go to the order starting later in the file). A cancellation is not split across
  orders: a partial match would invent a history the export does not show.

A line with no such order is rejected as ``unlinked_cancellation`` (typically it cancels an order
from before the export's first day, or a guest order without customer). A linked order whose every
SKU is fully taken becomes ``cancelled``, one only partly taken ``refunded``; its ``updated_at`` is
the time of its latest linked cancellation. Order lines keep the quantities as ordered; what a
linked cancellation line takes back is recorded at line level (``refund_lines``, migration 0003):
``Links.refunds`` names each linked line's order, SKU, quantity, time and source (invoice and its
1-based line in file order), and ``derive`` spreads it over that order's lines of the SKU, first line
first (the pooled quantity the link was judged on).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Links:
    """Outcome of linking: which cancellation rows found an order, and what that did to orders."""

    linked: pd.Series  # index: row position of a cancellation line; value: the order_ref it cancels
    unlinked: pd.Series  # index: row position of a cancellation line with no order; value: why not
    orders: pd.DataFrame  # index order_ref; columns status ("cancelled"/"refunded"), updated_at (UTC)
    #: One row per linked cancellation line, in linking order: order_ref, sku, quantity (> 0, taken
    #: back), refunded_at (UTC), source_ref (the cancellation invoice), source_line (1-based within it).
    refunds: pd.DataFrame


def link_cancellations(rows: pd.DataFrame, accepted: np.ndarray) -> Links:
    """Link the accepted cancellation rows in ``rows`` (see module doc) against its accepted order lines.

    ``rows`` has the columns produced by ``rules.classify``; ``accepted`` masks rows without a reason.
    """
    is_cancel = rows["is_cancellation"].to_numpy(dtype=bool)
    lines = rows[accepted & ~is_cancel]
    cancels = rows[accepted & is_cancel].sort_values(["ts", "line"], kind="stable")
    keys = ["customer_ref", "sku"]
    # Only (customer, SKU) pairs that some cancellation names can be linked: a few percent of lines.
    wanted = lines.merge(cancels[keys].drop_duplicates(), on=keys, how="inner")
    held = (
        wanted[wanted["customer_ref"] != ""]
        .groupby([*keys, "order_ref"], sort=False)
        .agg(quantity=("quantity", "sum"), first_line=("line", "min"))
        .reset_index()
    )
    held["created"] = held["order_ref"].map(lines.groupby("order_ref", sort=False)["ts"].min())
    held = held.sort_values(["created", "first_line"], kind="stable").reset_index(drop=True)
    remaining = held["quantity"].to_numpy(dtype=np.int64).copy()
    created_ns = _nanoseconds(held["created"])

    # (customer, sku) -> positions in ``held`` ascending by order time, and those times for bisect.
    slots: dict[tuple[str, str], list[int]] = {}
    for position, key in enumerate(zip(held["customer_ref"].tolist(), held["sku"].tolist(), strict=True)):
        slots.setdefault(key, []).append(position)
    times = {key: created_ns[positions].tolist() for key, positions in slots.items()}

    linked_rows: list[int] = []
    linked_held: list[int] = []
    unlinked: dict[int, str] = {}
    for row, customer, sku, quantity, at in zip(
        cancels.index.tolist(),
        cancels["customer_ref"].tolist(),
        cancels["sku"].tolist(),
        (-cancels["quantity"]).tolist(),
        _nanoseconds(cancels["ts"]).tolist(),
        strict=True,
    ):
        key = (customer, sku)
        positions = slots.get(key, [])
        earlier = bisect.bisect_left(times.get(key, []), at)
        chosen = next((positions[i] for i in range(earlier - 1, -1, -1) if remaining[positions[i]] >= quantity), None)
        if chosen is None:
            unlinked[row] = _why_unlinked(customer, quantity, [int(remaining[p]) for p in positions[:earlier]])
            continue
        remaining[chosen] -= quantity
        linked_rows.append(row)
        linked_held.append(chosen)

    linked = pd.Series(
        held["order_ref"].to_numpy()[linked_held], index=pd.Index(linked_rows, dtype=np.int64), dtype="str"
    )
    why = pd.Series(list(unlinked.values()), index=pd.Index(list(unlinked), dtype=np.int64), dtype="str")
    return Links(linked, why, _order_updates(lines, rows, linked), _refunds(rows, is_cancel, linked))


def _refunds(rows: pd.DataFrame, is_cancel: np.ndarray, linked: pd.Series) -> pd.DataFrame:
    """The linked cancellation lines as refunds; ``source_line`` counts every row of the invoice in
    file order (rejected ones too), so it names the same line in any export holding that invoice."""
    cancels = rows[is_cancel].sort_values("line", kind="stable")
    position = cancels.groupby("order_ref", sort=False).cumcount() + 1
    picked = rows.loc[linked.index]
    return pd.DataFrame(
        {
            "order_ref": linked.to_numpy(dtype=str),
            "sku": picked["sku"].to_numpy(),
            "quantity": (-picked["quantity"]).to_numpy(dtype=np.int64),
            "refunded_at": picked["ts"].to_numpy(),
            "source_ref": picked["order_ref"].to_numpy(),
            "source_line": position.reindex(linked.index).to_numpy(dtype=np.int64),
        }
    )


def _why_unlinked(customer: str, quantity: int, left: list[int]) -> str:
    if customer == "":
        return "no customer to link the cancellation by"
    if not left:
        return "no earlier order of this customer has this SKU"
    return f"no earlier order of this customer has {quantity} of this SKU left to cancel (most left: {max(left)})"


def _nanoseconds(values: pd.Series) -> np.ndarray:
    """UTC instants as int64 nanoseconds, for cheap comparisons in the linking loop."""
    return values.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]").astype(np.int64)


def _order_updates(lines: pd.DataFrame, rows: pd.DataFrame, linked: pd.Series) -> pd.DataFrame:
    """Status and ``updated_at`` of every order at least one cancellation line was linked to.

    A link never takes more of a SKU than the order holds, so "every SKU fully taken" is the same as
    "the quantities taken add up to the order's total quantity".
    """
    touched = pd.Index(linked.unique(), dtype="str")
    taken = (-rows.loc[linked.index, "quantity"]).groupby(linked.to_numpy()).sum().reindex(touched)
    ordered = lines.groupby("order_ref")["quantity"].sum().reindex(touched)
    updated_at = rows.loc[linked.index, "ts"].groupby(linked.to_numpy()).max().reindex(touched)
    return pd.DataFrame(
        {
            "status": pd.Series(
                np.where(taken.to_numpy() == ordered.to_numpy(), "cancelled", "refunded"), index=touched, dtype="str"
            ),
            "updated_at": updated_at,
        },
        index=touched,
    )
