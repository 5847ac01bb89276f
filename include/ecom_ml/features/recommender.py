"""Recommender features over a trailing window of orders: interactions, items and users.

One module computes every feature the recommender sees, for every consumer: the nightly feature
job (``build_features``), the trainer and the evaluation (``histories_as_of`` at a training or
holdout cutoff), and serving (the ``users`` table's histories, computed by that same function at the
window end). A feature computed twice drifts; computed once, training and scoring cannot disagree.

Choices, and why:

* **What counts as an interaction.** One order line of an order that has a customer, with some of
  it kept. A cancelled order is a purchase that did not happen, and a line the customer sent back in
  full a purchase regretted; neither should teach the model "this customer wants this". Guest orders
  have no one to recommend to.
* **Refunds are per line.** A returned line is a refund of that line (a quantity), not of the whole
  order (``ecom_ml.ingest.refunds``): each interaction keeps the quantity as ordered and its
  ``refunds`` (when, how many); a reader counts ``quantity`` = ordered - refunded, and a line
  refunded in full stops being a purchase (``removed_at``); the kept rest of the order stays. An
  order without refund rows (an older lake, extracted before ``refund_lines`` existed, or rows from
  before the migration) falls back to the order-level rule: a ``cancelled`` or ``refunded`` order
  is not a purchase from the moment it entered that state.
* **As of when.** Every line of a customer's order in the window is kept, with ``removed_at``: the
  moment the line stopped being a purchase (refunded in full, or its order cancelled; null while it
  is a purchase), from the order versions ``ecom_ml.ingest.current`` returns. A reader at moment *t*
  counts a line when ``removed_at`` is null or after *t*, with the refunds recorded before *t*
  subtracted (:func:`purchases_as_of`): training up to a cutoff sees an order cancelled, or a line
  refunded, *after* the cutoff as the purchase it still was then (no information from the future),
  while the holdout, the serving histories and popularity use today's state
  (:func:`current_purchases`), so a cancellation that arrives days later removes the lines there on
  the next run. Both return "cut" tables: ``quantity`` is the kept quantity and ``refunds`` is
  empty, so a second cut changes nothing.
* **Window.** ``[day - window_days + 1, day]`` in whole UTC days: start at 00:00 UTC of the first day,
  end (exclusive) at 00:00 UTC of ``day + 1``. Everything is relative to that end, so rebuilding a
  day gives identical tables (and an identical lake version).
* **Recency weight.** ``0.5 ** (age_days / half_life_days)`` with the age measured from the window
  end: an interaction one half-life old counts half. Any later re-reference (e.g. a training cutoff)
  only rescales all weights by one constant, so rankings built on them do not change.
* **Histories.** A customer's last ``history_len`` *distinct* products, most recent first (ties in
  time, i.e. lines of one order: lower product id first), from interactions strictly before a
  cutoff. Distinct, because a customer who re-buys one product ten times has not told us ten things.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ecom_ml.errors import EcomError
from ecom_ml.ingest.refunds import REFUND_TYPE, kept_as_of, line_states
from ecom_ml.lake import FEATURES, Lake, Manifest

#: Lake dataset under the ``features`` zone.
DATASET = "recommender"
#: Order states whose lines are not purchases (see module doc).
EXCLUDED_STATUSES = ("cancelled", "refunded")
#: Number of price bands (quantiles of the window's catalogue prices).
PRICE_BANDS = 5
#: An item's ``popularity`` counts its interactions in this many days before the window end.
POPULARITY_DAYS = 30
#: Bumped when a feature's definition changes, so stored features say which definition made them.
FEATURE_VERSION = 3  # 2: interactions carry removed_at; params carry holdout_days; 3: line-level refunds
#: Schema-metadata key carrying the parameters on every table ``build_features`` returns.
METADATA_KEY = b"ecom_ml.features.recommender"

_TS = pa.timestamp("us", tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DAY_US = 86_400 * 1_000_000

INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.int64(), nullable=False),
        pa.field("product_id", pa.int64(), nullable=False),
        pa.field("ts", _TS, nullable=False),
        pa.field("quantity", pa.int32(), nullable=False),
        pa.field("weight", pa.float32(), nullable=False),
        pa.field("order_id", pa.int64(), nullable=False),  # beyond the brief: lets n_orders and baskets be derived
        pa.field("removed_at", _TS, nullable=True),  # when the line stopped being a purchase; null: a purchase
        pa.field("refunds", REFUND_TYPE, nullable=True),  # partial refunds (at, quantity); see module doc
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.int64(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("price_band", pa.int8(), nullable=False),
        pa.field("popularity", pa.int64(), nullable=False),
        pa.field("first_seen", _TS, nullable=False),
    ]
)
USERS_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.int64(), nullable=False),
        pa.field("history", pa.list_(pa.int64()), nullable=False),
        pa.field("n_orders", pa.int64(), nullable=False),
        pa.field("first_seen", _TS, nullable=False),
        pa.field("last_seen", _TS, nullable=False),
    ]
)

_REQUIRED = {
    "orders": ("order_id", "customer_id", "status", "created_at"),
    "order_items": ("order_id", "product_id", "quantity"),
    "products": ("product_id", "category", "price"),
}


class FeatureError(EcomError):
    """The input tables cannot give recommender features (missing columns, unknown products, bad params)."""


# -- parameters -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureParams:
    """What one feature build was asked for; stored with the tables and in the lake manifest."""

    day: date
    window_days: int = 90
    history_len: int = 20
    half_life_days: float = 30.0
    #: Days at the end of the window that evaluation holds out: the one split setting that the
    #: trainer and the evaluator read from here, so they cannot disagree.
    holdout_days: int = 7
    version: int = FEATURE_VERSION

    def __post_init__(self) -> None:
        if self.window_days < 1:
            raise FeatureError(f"window_days must be >= 1, got {self.window_days}")
        if not 1 <= self.holdout_days < self.window_days:
            raise FeatureError(f"holdout_days must be from 1 to window_days - 1 ({self.window_days - 1}), "
                               f"got {self.holdout_days}: the days before the holdout are what a model trains on")
        if self.history_len < 1:
            raise FeatureError(f"history_len must be >= 1, got {self.history_len}")
        if not self.half_life_days > 0:
            raise FeatureError(f"half_life_days must be > 0, got {self.half_life_days}")

    @property
    def start(self) -> datetime:
        """First instant of the window (00:00 UTC of its first day)."""
        return day_start(self.day - timedelta(days=self.window_days - 1))

    @property
    def end(self) -> datetime:
        """End of the window, exclusive (00:00 UTC of the day after ``day``)."""
        return day_start(self.day + timedelta(days=1))

    @property
    def holdout_start(self) -> datetime:
        """First instant of the evaluation holdout: models are trained on what is strictly before."""
        return day_start(self.day - timedelta(days=self.holdout_days - 1))

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["day"] = self.day.isoformat()
        doc["window_start"] = self.start.isoformat()
        doc["window_end"] = self.end.isoformat()
        doc["holdout_start"] = self.holdout_start.isoformat()
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> FeatureParams:
        return cls(
            day=date.fromisoformat(doc["day"]),
            window_days=int(doc["window_days"]),
            history_len=int(doc["history_len"]),
            half_life_days=float(doc["half_life_days"]),
            # Features of version 1 predate the setting; 7 was the trainer's fixed default then.
            holdout_days=int(doc.get("holdout_days", 7)),
            version=int(doc.get("version", FEATURE_VERSION)),
        )


def day_start(day: date) -> datetime:
    """00:00 UTC of ``day``: the project's day boundaries are UTC, like the lake partitions."""
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def to_micros(moment: datetime) -> int:
    """Exact epoch microseconds of an aware datetime (no float rounding)."""
    if moment.tzinfo is None:
        raise FeatureError(f"{moment!r} has no time zone; pass an aware datetime (UTC)")
    return (moment - _EPOCH) // timedelta(microseconds=1)


def recency_weight(ts_us: np.ndarray, end: datetime | int, half_life_days: float) -> np.ndarray:
    """``0.5 ** (age_days / half_life_days)`` of epoch-microsecond times, age measured back from ``end``
    (an aware datetime or epoch microseconds)."""
    end_us = to_micros(end) if isinstance(end, datetime) else int(end)
    age_days = (end_us - np.asarray(ts_us, dtype=np.int64)) / _DAY_US
    return np.power(0.5, age_days / half_life_days).astype(np.float32)


# -- histories --------------------------------------------------------------------------------------


class Histories(Mapping[int, np.ndarray]):
    """Customers' recent distinct products, columnar: sorted ``customer_ids``, ``offsets``, ``values``.

    Customer ``customer_ids[i]`` owns ``values[offsets[i]:offsets[i + 1]]``, most recent first. It is
    also a read-only ``dict``-like mapping ``customer_id -> np.ndarray`` (a customer without history
    is absent), and converts to an Arrow list column or a padded matrix without per-row Python.
    """

    def __init__(self, customer_ids: np.ndarray, offsets: np.ndarray, values: np.ndarray) -> None:
        self.customer_ids = np.asarray(customer_ids, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.values = np.asarray(values, dtype=np.int64)
        if len(self.offsets) != len(self.customer_ids) + 1:
            raise ValueError("offsets must have one entry more than customer_ids")

    # Mapping protocol
    def __getitem__(self, customer_id: int) -> np.ndarray:
        i = int(np.searchsorted(self.customer_ids, customer_id))
        if i == len(self.customer_ids) or self.customer_ids[i] != customer_id:
            raise KeyError(customer_id)
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[int]:
        return iter(self.customer_ids.tolist())

    def __len__(self) -> int:
        return len(self.customer_ids)

    def _spans(self, customer_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start and end offsets per requested customer (an empty span for unknown customers)."""
        ids = np.asarray(customer_ids, dtype=np.int64)
        n = len(self.customer_ids)
        if n == 0:
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.customer_ids, ids), n - 1)
        found = self.customer_ids[pos] == ids
        return np.where(found, self.offsets[pos], 0), np.where(found, self.offsets[pos + 1], 0)

    def lookup(self, customer_ids: np.ndarray) -> list[np.ndarray]:
        """Histories aligned to ``customer_ids``; an unknown customer gets an empty array."""
        starts, ends = self._spans(customer_ids)
        return [self.values[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]

    def padded(self, customer_ids: np.ndarray, length: int, fill: int = -1) -> np.ndarray:
        """``(n, length)`` matrix of the first ``length`` history items, ``fill`` where shorter (model input)."""
        starts, ends = self._spans(customer_ids)
        cols = np.arange(length)
        index = starts[:, None] + cols[None, :]
        valid = index < ends[:, None]
        out = np.full((len(starts), length), fill, dtype=np.int64)
        out[valid] = self.values[index[valid]]
        return out

    def to_arrow(self) -> pa.Table:
        """``customer_id`` and ``history`` (list<int64>) columns, one row per customer."""
        history = pa.LargeListArray.from_arrays(pa.array(self.offsets, pa.int64()), pa.array(self.values, pa.int64()))
        return pa.table(
            {"customer_id": pa.array(self.customer_ids, pa.int64()), "history": history.cast(pa.list_(pa.int64()))}
        )


def histories_as_of(interactions: pa.Table, cutoff: datetime, history_len: int) -> Histories:
    """Each customer's last ``history_len`` distinct products bought strictly before ``cutoff``,
    as the orders stood at ``cutoff`` (a line cancelled later still counts, one cancelled before not).

    The one history function: serving features use it at the window end, training and evaluation at
    their cutoffs, so a model is scored on exactly the inputs it will see in production.
    """
    if history_len < 1:
        raise FeatureError(f"history_len must be >= 1, got {history_len}")
    if "removed_at" in interactions.column_names:
        interactions = purchases_as_of(interactions, cutoff)
    customers = _numpy(interactions, "customer_id")
    products = _numpy(interactions, "product_id")
    ts = _numpy(interactions, "ts")
    keep = ts < to_micros(cutoff)
    customers, products, ts = customers[keep], products[keep], ts[keep]
    # Customer ascending, newest first, then product ascending (lines of one order).
    order = np.lexsort((products, -ts, customers))
    customers, products = customers[order], products[order]
    # Keep each (customer, product)'s first row in that order, i.e. its most recent purchase
    # (lexsort is stable, so within a pair the newest row comes first).
    by_pair = np.lexsort((products, customers))
    pair_c, pair_p = customers[by_pair], products[by_pair]
    first = np.r_[True, (pair_c[1:] != pair_c[:-1]) | (pair_p[1:] != pair_p[:-1])][: len(by_pair)]
    distinct = np.zeros(len(products), dtype=bool)
    distinct[by_pair[first]] = True
    customers, products = customers[distinct], products[distinct]
    # Rank within each customer's run and cut at history_len.
    short = rank_in_runs(customers) < history_len
    customers, products = customers[short], products[short]
    ids, first_rows = np.unique(customers, return_index=True)
    return Histories(ids, np.r_[first_rows, len(customers)], products)


def rank_in_runs(keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal consecutive ``keys`` (sorted group keys), vectorised."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))


# -- the feature build ------------------------------------------------------------------------------


def removal_times(tables: Mapping[str, pa.Table]) -> pa.Table:
    """``order_id`` -> ``removed_at``: when each order entered the excluded state it is in now.

    From ``order_history`` (every version seen): the ``updated_at`` of the first version of the
    final run of excluded versions, so an order cancelled, reinstated and cancelled again counts as
    removed from the last cancellation on. Without ``order_history`` the current row's
    ``updated_at`` is the best knowledge of the moment. Orders that are purchases now are absent.
    """
    source = tables.get("order_history")
    if source is None:
        source = tables["orders"].select([c for c in ("order_id", "status", "updated_at")
                                          if c in tables["orders"].column_names])
        if "updated_at" not in source.column_names:
            source = source.append_column("updated_at", tables["orders"].column("created_at"))
    history = pa.table({
        "order_id": source.column("order_id").cast(pa.int64()),
        "excluded": pc.is_in(source.column("status"), pa.array(EXCLUDED_STATUSES)),
        "updated_at": source.column("updated_at").cast(_TS),
    }).sort_by([("order_id", "ascending"), ("updated_at", "ascending")])
    ids = history.column("order_id").to_numpy()
    excluded = history.column("excluded").to_numpy(zero_copy_only=False).astype(bool)
    stamps = _numpy(history, "updated_at")
    if len(ids) == 0:
        return pa.table({"order_id": pa.array([], pa.int64()), "removed_at": pa.array([], _TS)})
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    # Index of each order's last version that was a purchase (-1 if none): the final excluded run
    # starts right after it.
    last_ok = np.maximum.reduceat(np.where(excluded, -1, np.arange(len(ids))), starts)
    run_start = np.where(last_ok < starts, starts, last_ok + 1)
    removed = run_start < ends  # the current (last) version is excluded
    return pa.table({
        "order_id": pa.array(ids[starts[removed]], pa.int64()),
        "removed_at": pa.array(stamps[run_start[removed]], pa.int64()).cast(_TS),
    })


def purchases_as_of(interactions: pa.Table, moment: datetime) -> pa.Table:
    """The lines that were purchases at ``moment``: not (yet) cancelled or refunded in full then, with
    ``quantity`` what was kept at ``moment`` (refunds recorded before it subtracted, later ones not)."""
    removed = interactions.column("removed_at")
    kept = interactions.filter(pc.or_kleene(pc.is_null(removed), pc.greater_equal(removed, pa.scalar(moment, _TS))))
    return _cut(kept, moment)


def current_purchases(interactions: pa.Table) -> pa.Table:
    """The lines that are purchases in today's state of the orders, ``quantity`` net of every refund."""
    return _cut(interactions.filter(pc.is_null(interactions.column("removed_at"))), None)


def _cut(lines: pa.Table, moment: datetime | None) -> pa.Table:
    """Kept quantities as of ``moment`` in ``quantity``, ``refunds`` emptied (tables without it: as they are)."""
    if "refunds" not in lines.column_names:
        return lines
    refunds = lines.column("refunds")
    quantity = kept_as_of(_numpy(lines, "quantity"), refunds, moment)
    at = lines.schema.get_field_index("quantity")
    lines = lines.set_column(at, lines.schema.field(at), pa.array(quantity, lines.schema.field(at).type))
    at = lines.schema.get_field_index("refunds")
    return lines.set_column(at, lines.schema.field(at), pa.nulls(lines.num_rows, REFUND_TYPE))


def interactions_from_orders(
    tables: Mapping[str, pa.Table], start: datetime, end: datetime, half_life_days: float
) -> pa.Table:
    """Customers' order lines created in ``[start, end)`` with ``removed_at`` (see module doc),
    weighted by recency from ``end``."""
    _require(tables, ("orders", "order_items"))
    orders = tables["orders"]
    created = orders.column("created_at").cast(_TS)
    in_window = pc.and_(pc.greater_equal(created, pa.scalar(start, _TS)), pc.less(created, pa.scalar(end, _TS)))
    mask = pc.and_(pc.is_valid(orders.column("customer_id")), in_window)
    kept = pa.table(
        {
            "order_id": orders.column("order_id").cast(pa.int64()),
            "customer_id": orders.column("customer_id").cast(pa.int64()),
            "ts": created,
        }
    ).filter(mask)
    items = tables["order_items"]
    if "order_item_id" not in items.column_names:  # hand-made tables: lines are their own ids
        items = items.append_column("order_item_id", pa.array(np.arange(items.num_rows, dtype=np.int64)))
        tables = {name: table for name, table in tables.items() if name != "refund_lines"}
    states = line_states({**tables, "order_items": items})
    lines = pa.table(
        {
            "order_id": items.column("order_id").cast(pa.int64()),
            "order_item_id": items.column("order_item_id").cast(pa.int64()),
            "product_id": items.column("product_id").cast(pa.int64()),
            "quantity": items.column("quantity").cast(pa.int32()),
            "removed_at": states.column("removed_at"),
            "__row": pa.array(np.arange(items.num_rows, dtype=np.int64)),
        }
    )
    joined = lines.join(kept, keys="order_id", join_type="inner")
    # Sort on every column: the join's row order is not deterministic, the lake's bytes must be.
    joined = joined.sort_by(
        [(c, "ascending") for c in ("ts", "customer_id", "product_id", "order_id", "quantity", "order_item_id")]
    )
    # The list column is taken by row after the join (hash joins carry no list columns).
    joined = joined.append_column("refunds", states.column("refunds").take(joined.column("__row")))
    weight = recency_weight(_numpy(joined, "ts"), end, half_life_days)
    return pa.table(
        [
            joined.column("customer_id"),
            joined.column("product_id"),
            joined.column("ts"),
            joined.column("quantity"),
            pa.array(weight, pa.float32()),
            joined.column("order_id"),
            joined.column("removed_at").cast(_TS),
            joined.column("refunds").cast(REFUND_TYPE),
        ],
        schema=INTERACTIONS_SCHEMA,
    )


def price_bands(prices: np.ndarray, bands: int = PRICE_BANDS) -> np.ndarray:
    """Quantile band 0..bands-1 of each price among ``prices`` (the window's catalogue).

    Band = how many of the inner quantile edges (20%, 40%, ... for five bands) lie strictly below the
    price, so equal prices share a band and a catalogue of one price is all band 0.
    """
    prices = np.asarray(prices, dtype=np.float64)
    if len(prices) == 0:
        return np.zeros(0, dtype=np.int8)
    edges = np.quantile(prices, np.arange(1, bands) / bands)
    return np.searchsorted(edges, prices, side="left").astype(np.int8)


def _items(interactions: pa.Table, products: pa.Table, end: datetime) -> pa.Table:
    seen = interactions.group_by("product_id").aggregate([("ts", "min")])
    recent_from = pa.scalar(end - timedelta(days=POPULARITY_DAYS), _TS)
    recent = (
        interactions.filter(pc.greater_equal(interactions.column("ts"), recent_from))
        .group_by("product_id")
        .aggregate([("product_id", "count")])
    )
    catalogue = pa.table(
        {
            "product_id": products.column("product_id").cast(pa.int64()),
            "category": products.column("category").cast(pa.string()),
            "price": products.column("price").cast(pa.float64()),
            "__found": pa.array(np.ones(products.num_rows, dtype=bool)),
        }
    )
    joined = seen.join(catalogue, "product_id", join_type="left outer")
    joined = joined.join(recent, "product_id", join_type="left outer")
    if joined.num_rows != seen.num_rows:
        raise FeatureError("the products table lists a product_id more than once; pass the current products only")
    missing = pc.is_null(joined.column("__found"))
    if pc.any(missing).as_py():
        ids = joined.filter(missing).column("product_id").to_pylist()
        raise FeatureError(f"{len(ids)} purchased product(s) missing from the products table, e.g. {sorted(ids)[:5]}")
    joined = joined.sort_by("product_id")
    prices = joined.column("price").to_numpy()
    return pa.table(
        [
            joined.column("product_id"),
            joined.column("category"),
            joined.column("price"),
            pa.array(price_bands(prices), pa.int8()),
            pc.fill_null(joined.column("product_id_count"), 0).cast(pa.int64()),
            joined.column("ts_min"),
        ],
        schema=ITEMS_SCHEMA,
    )


def _users(interactions: pa.Table, end: datetime, history_len: int) -> pa.Table:
    stats = (
        interactions.group_by("customer_id")
        .aggregate([("order_id", "count_distinct"), ("ts", "min"), ("ts", "max")])
        .sort_by("customer_id")
    )
    histories = histories_as_of(interactions, end, history_len)
    # Every interaction is before ``end``, so both are the same sorted customer set.
    if not np.array_equal(histories.customer_ids, _numpy(stats, "customer_id")):
        raise RuntimeError("user histories and user statistics disagree on the customer set")
    return pa.table(
        [
            stats.column("customer_id"),
            histories.to_arrow().column("history"),
            stats.column("order_id_count_distinct").cast(pa.int64()),
            stats.column("ts_min"),
            stats.column("ts_max"),
        ],
        schema=USERS_SCHEMA,
    )


def build_features(
    tables: Mapping[str, pa.Table],
    day: date,
    window_days: int = 90,
    history_len: int = 20,
    half_life_days: float = 30.0,
    holdout_days: int = 7,
) -> dict[str, pa.Table]:
    """``interactions``, ``items`` and ``users`` over the window ending with ``day`` (see module doc).

    ``tables`` are the tables of ``ecom_ml.ingest.current.current_orders`` (orders, order_items,
    products, and ``order_history`` for the as-of-cutoff view; customers is not needed). Every
    returned table carries the parameters, ``holdout_days`` included, in its schema metadata
    (``feature_params`` reads them back). ``items`` and ``users`` (serving) use today's state.
    """
    params = FeatureParams(day, window_days, history_len, half_life_days, holdout_days)
    _require(tables, ("orders", "order_items", "products"))
    interactions = interactions_from_orders(tables, params.start, params.end, half_life_days)
    purchases = current_purchases(interactions)
    features = {
        "interactions": interactions,
        "items": _items(purchases, tables["products"], params.end),
        "users": _users(purchases, params.end, history_len),
    }
    meta = {METADATA_KEY: json.dumps(params.to_dict(), sort_keys=True).encode()}
    return {name: table.replace_schema_metadata(meta) for name, table in features.items()}


def feature_params(features: Mapping[str, pa.Table]) -> FeatureParams:
    """The parameters a feature set was built with (from its tables' schema metadata)."""
    for table in features.values():
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        if raw is not None:
            return FeatureParams.from_dict(json.loads(raw))
    raise FeatureError("these tables carry no recommender feature parameters (not made by build_features?)")


# -- the lake -------------------------------------------------------------------------------------


def write_features(lake: Lake, day: date, features: Mapping[str, pa.Table]) -> Manifest:
    """Publish the day's features atomically under ``features/recommender/dt=day``; params go in the manifest."""
    params = feature_params(features)
    if params.day != day:
        raise FeatureError(f"features were built for {params.day}, not for {day}; refusing to store them there")
    return lake.write(FEATURES, DATASET, day, features, extra={"recommender": params.to_dict()})


def read_features(lake_or_uri: Lake | str, day: date) -> dict[str, pa.Table]:
    """The stored features of ``day`` (``interactions``, ``items``, ``users``)."""
    lake = Lake(lake_or_uri) if isinstance(lake_or_uri, str) else lake_or_uri
    return lake.read(FEATURES, DATASET, day)


# -- helpers ----------------------------------------------------------------------------------------


def _require(tables: Mapping[str, pa.Table], names: tuple[str, ...]) -> None:
    """Fail with every missing table/column named, before any work."""
    missing = []
    for name in names:
        if name not in tables:
            missing.append(name)
            continue
        present = set(tables[name].column_names)
        missing += [f"{name}.{column}" for column in _REQUIRED[name] if column not in present]
    if missing:
        raise FeatureError(f"recommender features need {', '.join(missing)}, which the input tables lack")


def _numpy(table: pa.Table, column: str) -> np.ndarray:
    """A column as a contiguous int64 numpy array (timestamps as epoch microseconds)."""
    values = table.column(column)
    if pa.types.is_timestamp(values.type):
        values = values.cast(_TS).cast(pa.int64())
    return values.to_numpy().astype(np.int64, copy=False)
