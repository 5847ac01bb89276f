"""Parse the raw text into typed values and give every row that cannot be loaded exactly one reason.

Reasons are checked in the order of ``REASONS`` and the first that applies wins, so the counts per
reason add up to the rows rejected and a row's reason does not depend on which checks run later.
The order goes from "the row cannot be read" to "the row is readable but is not an order line", and
every check up to ``duplicate_row`` looks at the row alone; that is what makes "duplicate" mean
"an exact repeat of an earlier row" (identical rows always get the same earlier verdict).

Duplicates: 6,865 rows of the 2009-2010 file equal an earlier row in every column (same invoice,
minute, SKU, quantity and price). A basket that really held the same item twice would have been
one line with the summed quantity, so they are read as lines the export recorded twice: the first
copy is loaded, later copies are rejected as ``duplicate_row`` (the reject file names the line they
repeat). A shop whose system does write repeated lines sets ``rules.reject_duplicate_rows: false``.

A column whose values are *mostly* unparseable is a wrong mapping (say, dates in another format),
not dirty data: past ``rules.max_bad_share`` the whole file is refused with one line naming the
column, an example and the expected format, instead of rejecting 100% of the rows one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ecom_ml.importer.mapping import REQUIRED_FIELDS, Mapping, normalise_sku
from ecom_ml.importer.read import Source, SourceError

#: Reject reasons in priority order (the first that applies is the row's reason), with their meaning.
REASONS: dict[str, str] = {
    "wrong_field_count": "the line has more or fewer fields than the header",
    "missing_value": "a required field (order ref, SKU, quantity, timestamp, unit price) is empty",
    "bad_timestamp": "the timestamp does not match the mapping's format",
    "bad_number": "quantity is not a whole number in integer range, or the price is not a finite number below 10^10",
    "adjustment_invoice": "the invoice carries the adjustment prefix (bad-debt bookkeeping, not a sale)",
    "non_product_code": "the SKU is a fee, postage, discount, test or voucher code, not goods",
    "missing_customer": "no customer reference while rules.require_customer is true",
    "negative_price": "an order line with a unit price below zero",
    "zero_price": "an order line whose unit price is 0.00 after rounding to pence",
    "nonpositive_quantity": "an order line (not a cancellation) with quantity <= 0",
    "nonnegative_cancellation_quantity": "a cancellation line with quantity >= 0 (it cancels nothing)",
    "duplicate_row": "every field equals an earlier row's (the export recorded the line twice)",
    "incomplete_invoice": "another line of the same invoice could not be read, so none of its lines is loaded",
    "unlinked_cancellation": "a cancellation line with no earlier order it can cancel (see cancellations.py)",
}

_INT32_MAX = 2**31 - 1
_PRICE_LIMIT = 1e10  # numeric(12, 2)


@dataclass
class Classified:
    """Typed rows plus each row's verdict (reason None: accepted so far).

    ``rows`` is positionally aligned with the source frame and has the columns ``line``,
    ``order_ref``, ``sku``, ``description``, ``quantity`` (int64), ``price_cents`` (int64), ``ts``
    (UTC), ``customer_ref``, ``country`` and ``is_cancellation``; values of rejected rows may be
    placeholders.
    """

    rows: pd.DataFrame
    reason: np.ndarray  # object: reason name or None
    detail: np.ndarray  # object: human detail or None

    def open_mask(self) -> np.ndarray:
        return pd.isna(self.reason)

    def reject(
        self, mask: np.ndarray, reason: str, detail: str | Callable[[np.ndarray], list[str]] | None = None
    ) -> None:
        """Give ``reason`` to the rows in ``mask`` that have no reason yet.

        ``detail`` is fixed text or a function of the hit positions, so per-row text is only built
        for the (usually few) rows rejected.
        """
        if reason not in REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        hit = np.flatnonzero(np.asarray(mask, dtype=bool) & self.open_mask())
        if len(hit) == 0:
            return
        self.reason[hit] = reason
        if detail is not None:
            self.detail[hit] = detail if isinstance(detail, str) else detail(hit)


def classify(source: Source, mapping: Mapping) -> Classified:
    """Parse every mapped column and apply the row rules in ``REASONS`` order (all but linking)."""
    parsed = _parse(source, mapping)
    n = len(source)
    out = Classified(parsed.rows, np.full(n, None, dtype=object), np.full(n, None, dtype=object))
    _reject_unreadable(out, source, parsed, mapping)
    _reject_non_order_lines(out, mapping)
    if mapping.rules.reject_duplicate_rows:
        _reject_duplicates(out, source)
    _reject_incomplete_invoices(out)
    return out


#: Reasons that mean "this line was in the invoice but we cannot tell what it held".
_UNREADABLE = ("wrong_field_count", "missing_value", "bad_timestamp", "bad_number")


def _reject_incomplete_invoices(out: Classified) -> None:
    """An invoice is loaded with all its lines or not at all.

    A line rejected for a rule (a fee code, a zero price, a repeat) is not an order line and the
    invoice is whole without it; a line that could not be *read* was an order line we lost, and
    loading the others would store a different basket, which a later import can no longer repair.
    """
    refs = out.rows["order_ref"]
    broken = pd.Series(out.reason).isin(_UNREADABLE).to_numpy() & (refs != "").to_numpy()
    if not broken.any():
        return
    first_bad = pd.Series(out.rows["line"].to_numpy()[broken], index=refs.to_numpy()[broken]).groupby(level=0).min()
    mask = refs.isin(first_bad.index).to_numpy()
    out.reject(mask, "incomplete_invoice",
               lambda hit: [f"line {first_bad[ref]} of invoice {ref} could not be read" for ref in refs.iloc[hit]])


@dataclass(frozen=True)
class _Parsed:
    rows: pd.DataFrame  # the ``Classified.rows`` columns
    text: dict[str, pd.Series]  # target field -> stripped source text
    aligned: np.ndarray  # the row has as many fields as the header
    bad: dict[str, np.ndarray]  # "timestamp" / "quantity" / "unit_price" -> present but unparseable


def _parse(source: Source, mapping: Mapping) -> _Parsed:
    """Typed columns; refuses the file when a column is mostly unparseable (see module doc)."""
    frame, cols = source.frame, mapping.columns
    text = {field: frame[column].str.strip() for field, column in cols.mapped().items()}
    empty = pd.Series("", index=frame.index, dtype="str")
    ts = _parse_timestamps(text["timestamp"], mapping)
    quantity = pd.to_numeric(text["quantity"], errors="coerce")
    price = pd.to_numeric(text["unit_price"], errors="coerce")
    # Only well-formed rows count towards a column's bad share: a ragged row's values are shifted.
    aligned = source.field_counts == len(source.header)
    present = {field: aligned & (text[field] != "").to_numpy() for field in ("timestamp", "quantity", "unit_price")}
    bad = {
        "timestamp": present["timestamp"] & ts.isna().to_numpy(),
        "quantity": present["quantity"]
        & ~(np.isfinite(quantity) & (quantity == np.round(quantity)) & (quantity.abs() <= _INT32_MAX)).to_numpy(),
        "unit_price": present["unit_price"] & ~(np.isfinite(price) & (price.abs() < _PRICE_LIMIT)).to_numpy(),
    }
    expected = {
        "timestamp": f"timestamps in the format {mapping.timestamp_format!r}",
        "quantity": "whole numbers",
        "unit_price": "decimal numbers",
    }
    for field, what in expected.items():
        _refuse_mostly_bad(source, mapping, field, bad[field], present[field], what)

    rows = pd.DataFrame(
        {
            "line": source.lines,
            "order_ref": text["order_ref"],
            "sku": _normalised_skus(frame[cols.sku]),
            "description": text.get("description", empty),
            "quantity": quantity.where(~bad["quantity"], 0).fillna(0).astype(np.int64),
            "price_cents": np.rint(price.where(~bad["unit_price"], 0).fillna(0) * 100).astype(np.int64),
            "ts": ts,
            # Spreadsheets turn integer ids into floats: "12345.0" is customer "12345".
            "customer_ref": text.get("customer_ref", empty).str.replace(r"^(\d+)\.0+$", r"\1", regex=True),
            "country": text.get("country", empty),
            "is_cancellation": _starts_with(text["order_ref"], mapping.rules.cancellation_prefix),
        }
    )
    return _Parsed(rows, text, aligned, bad)


def _reject_unreadable(out: Classified, source: Source, parsed: _Parsed, mapping: Mapping) -> None:
    """wrong_field_count, missing_value, bad_timestamp, bad_number."""
    cols, text, width, counts = mapping.columns, parsed.text, len(source.header), source.field_counts
    out.reject(
        ~parsed.aligned, "wrong_field_count", lambda hit: [f"{c} fields, the header has {width}" for c in counts[hit]]
    )
    for field in REQUIRED_FIELDS:
        out.reject((text[field] == "").to_numpy(), "missing_value", f"{getattr(cols, field)} is empty")
    problems = {
        "timestamp": ("bad_timestamp", f"does not match {mapping.timestamp_format!r}"),
        "quantity": ("bad_number", "is not a whole number in integer range"),
        "unit_price": ("bad_number", "is not a number below 10^10"),
    }
    for field, (reason, problem) in problems.items():
        out.reject(parsed.bad[field], reason, _describe_values(text[field], getattr(cols, field), problem))


def _reject_non_order_lines(out: Classified, mapping: Mapping) -> None:
    """Readable rows that are not goods sold (or cancelled) to a known customer."""
    rows, rules = out.rows, mapping.rules
    out.reject(_starts_with(rows["order_ref"], rules.adjustment_prefix), "adjustment_invoice")
    non_product = rows["sku"].isin(rules.non_product_codes)
    if rules.non_product_pattern is not None:
        non_product |= rows["sku"].str.fullmatch(rules.non_product_pattern.pattern)
    out.reject(non_product.to_numpy(dtype=bool), "non_product_code")
    if rules.require_customer:
        out.reject((rows["customer_ref"] == "").to_numpy(), "missing_customer")
    is_cancel = rows["is_cancellation"].to_numpy(dtype=bool)
    cents, quantity = rows["price_cents"].to_numpy(), rows["quantity"].to_numpy()
    # A cancellation's price is never loaded (it changes an order's status), so only lines are priced.
    out.reject(~is_cancel & (cents < 0), "negative_price")
    out.reject(~is_cancel & (cents == 0), "zero_price")
    out.reject(~is_cancel & (quantity <= 0), "nonpositive_quantity")
    out.reject(is_cancel & (quantity >= 0), "nonnegative_cancellation_quantity")


def _parse_timestamps(text: pd.Series, mapping: Mapping) -> pd.Series:
    """Local wall-clock text -> UTC instants.

    Autumn's repeated hour is read as the first (summer-time) pass and spring's skipped hour is
    moved forward: a shop's export has no way to say otherwise, and rejecting real sales for it
    would be worse than a one-hour doubt at 01:00 on two Sundays a year.
    """
    fmt = mapping.timestamp_format
    if "%z" in fmt or "%Z" in fmt:
        return pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
    local = pd.to_datetime(text, format=fmt, errors="coerce")
    local = local.dt.tz_localize(
        mapping.timezone, ambiguous=np.ones(len(local), dtype=bool), nonexistent="shift_forward"
    )
    return local.dt.tz_convert("UTC")


def _refuse_mostly_bad(
    source: Source, mapping: Mapping, field: str, bad: np.ndarray, present: np.ndarray, expected: str
) -> None:
    n_bad, n_present = int(bad.sum()), int(present.sum())
    if n_present == 0 or n_bad / n_present <= mapping.rules.max_bad_share:
        return
    column = getattr(mapping.columns, field)
    first = int(np.flatnonzero(bad)[0])
    value = source.frame[column].iloc[first]
    raise SourceError(
        f"{source.path}: column {column!r} ({field}): {n_bad:,} of {n_present:,} values ({n_bad / n_present:.1%}) "
        f"are not {expected}, e.g. line {source.lines[first]}: {value!r}; more than rules.max_bad_share "
        f"({mapping.rules.max_bad_share:.0%}) in {mapping.path.name} allows, so the mapping is wrong for this file"
    )


def _describe_values(values: pd.Series, column: str, problem: str) -> Callable[[np.ndarray], list[str]]:
    return lambda hit: [f"{column} {value!r} {problem}" for value in values.iloc[hit]]


def _normalised_skus(values: pd.Series) -> pd.Series:
    """``normalise_sku`` applied once per distinct code (a few thousand) rather than once per row."""
    lookup = {code: normalise_sku(code) for code in values.unique()}
    return values.map(lookup).astype("str")


def _starts_with(values: pd.Series, prefix: str | None) -> np.ndarray:
    if not prefix:
        return np.zeros(len(values), dtype=bool)
    return values.str.startswith(prefix).to_numpy(dtype=bool)


def _reject_duplicates(out: Classified, source: Source) -> None:
    """Reject later copies of an identical row (all source columns, raw text), naming the first copy."""
    candidates = np.flatnonzero(out.open_mask())
    subset = source.frame.iloc[candidates]
    repeated = subset.duplicated(keep="first").to_numpy()
    if not repeated.any():
        return
    keys = pd.util.hash_pandas_object(subset, index=False).to_numpy()
    first_line = pd.Series(source.lines[candidates]).groupby(keys).transform("first").to_numpy()
    mask = np.zeros(len(out.reason), dtype=bool)
    mask[candidates[repeated]] = True
    first_of = dict(zip(candidates[repeated].tolist(), first_line[repeated].tolist(), strict=True))
    out.reject(mask, "duplicate_row", lambda hit: [f"repeats line {first_of[position]}" for position in hit.tolist()])
