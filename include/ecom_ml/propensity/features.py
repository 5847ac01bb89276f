"""Purchase-propensity features: each customer's weekly behaviour, RFM and tenure as of a cutoff,
and the label "bought in the next ``label_days`` days", from the validated lake.

One module computes every input the propensity model and its baselines see (feature job, trainer,
evaluation, bench): a feature computed twice drifts.

What is stored, and why: the features partition (``lake/features/propensity/dt=…``) holds the
window's order lines reduced to what the features read (customer, order, product, placed, removed,
units, spend), not examples already cut at each cutoff. The examples of any cutoff are then one
function of that table (:func:`examples_at`), so the nightly training cutoffs, the validation
cutoff, the holdout and a champion with another sequence length all read the same facts, and the
partition stays the size of the window instead of (cutoffs x customers x weeks).

Choices, and why:

* **As of the cutoff, line by line.** Refunds are per line (``ecom_ml.ingest.refunds``): a stored
  line is split into what the customer kept (``removed_at`` null) and one piece per refund
  (``removed_at`` = when it was refunded), units and spend shared out by quantity; a line of an
  order without refund rows (an older lake, extracted before ``refund_lines`` existed) is one piece
  removed when its order was cancelled or refunded, the order-level rule. At a cutoff a piece counts
  as a purchase when it was not (yet) removed then; an order counts as a purchase while some of it
  is kept, and an order with a piece removed before the cutoff is a *refund* of the week it was
  placed in (a partial refund included). Training labels are
  read as known at the model's cutoff (the holdout start): an order refunded later still was a
  purchase then. The holdout's labels are today's state.
* **Population.** Every customer with an order placed before the cutoff (in the window), whatever
  its status: a customer whose every order was refunded is scored (no purchase, refunds > 0)
  rather than dropped. Lines without a customer cannot be attributed and are counted in the
  manifest (``lines_without_customer``).
* **Weeks end at the cutoff.** Position ``weeks - 1`` of the sequence is the 7 days just before the
  cutoff; weeks before the lake window read as zero and the tenure says how much history there is.
  Per week: orders, units, spend, distinct products (all of purchases as of the cutoff), refunds.
* **Rolling cutoffs.** Training examples come from cutoffs every :data:`CUTOFF_STEP_DAYS` days
  counted back from ``holdout_start - label_days`` (the latest cutoff whose label window ends at the
  holdout start), never one whose label window reaches past it, down to the first cutoff with at
  least :data:`MIN_HISTORY_DAYS` of lake history (in a short window: half the days before the
  newest cutoff, so there are still several; at least one cutoff).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ecom_ml.errors import EcomError
from ecom_ml.ingest.refunds import REFUND_TYPE, line_states
from ecom_ml.lake import FEATURES, Lake, Manifest

DATASET = "propensity"
#: Of the stored partition (the lines); the examples' features may grow without it.
FEATURE_VERSION = 2  # 2: lines split into kept and refunded pieces (line-level refunds)
#: Days between two training cutoffs (one week: each customer appears at most once a week).
CUTOFF_STEP_DAYS = 7
#: Lake history a training cutoff needs before it (tenure and RFM of shorter ones are mostly window).
MIN_HISTORY_DAYS = 56
#: A customer is "new" at a cutoff when their first order is within this many days before it.
NEW_CUSTOMER_DAYS = 30
#: The per-week sequence's channels, in order.
CHANNELS = ("orders", "units", "spend", "products", "refunds")
#: The static (RFM and tenure) features, in order; see :func:`examples_at`. New ones are appended
#: (a model records the names it was trained on and reads those columns, so an older champion is
#: still re-scored on the holdout).
STATIC = ("log_recency_days", "log_tenure_days", "log_orders", "log_orders_90d", "log_orders_30d",
          "log_spend", "log_avg_order_value", "refund_share", "has_purchase", "log_days_since_any_order",
          *("log_mean_gap_days", "log_overdue", "gap_cv", "log_active_weeks", "log_active_months", "trend_90d",
            "log_lines_per_order", "log_units_per_order"))

_TS = pa.timestamp("us", tz="UTC")
_DAY_US = 86_400 * 1_000_000
_WEEK_US = 7 * _DAY_US
#: "Never removed": a sentinel later than any moment.
_NEVER = np.iinfo(np.int64).max


class PropensityFeatureError(EcomError):
    """The lake or the settings cannot give propensity features; the message names what and where."""


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


@dataclass(frozen=True)
class PropensityParams:
    """What one feature build was asked for; stored in the manifest so the trainer and the evaluator
    read one split. ``holdout_days`` is the label window (the days after the cutoff in which a
    purchase makes the label 1); ``history_len`` the weeks of the behaviour sequence."""

    day: date
    window_days: int = 365
    holdout_days: int = 30
    history_len: int = 26
    version: int = FEATURE_VERSION

    def __post_init__(self) -> None:
        if self.history_len < 1:
            raise PropensityFeatureError(f"ecom_propensity_history_len={self.history_len}: must be at least 1 week")
        if self.holdout_days < 1:
            raise PropensityFeatureError(f"ecom_propensity_holdout_days={self.holdout_days}: must be at least 1 day")
        if self.window_days < 2 * self.holdout_days + CUTOFF_STEP_DAYS:
            raise PropensityFeatureError(
                f"ecom_propensity_window_days={self.window_days}: with a {self.holdout_days}-day label window the "
                f"window needs at least {2 * self.holdout_days + CUTOFF_STEP_DAYS} days (history before a training "
                f"cutoff, its label window, then the holdout's)")

    @property
    def end(self) -> datetime:
        return day_start(self.day + timedelta(days=1))

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.window_days)

    @property
    def holdout_start(self) -> datetime:
        """The holdout cutoff and the model's training cutoff: no training label reaches past it."""
        return self.end - timedelta(days=self.holdout_days)

    def training_cutoffs(self) -> list[datetime]:
        """Rolling training cutoffs, newest first; the first is the validation cutoff."""
        latest = self.holdout_start - timedelta(days=self.holdout_days)
        history = min(MIN_HISTORY_DAYS, max(CUTOFF_STEP_DAYS, (latest - self.start).days // 2))
        earliest = self.start + timedelta(days=history)
        cutoffs = []
        moment = latest
        while moment >= earliest or not cutoffs:
            cutoffs.append(moment)
            moment -= timedelta(days=CUTOFF_STEP_DAYS)
        return cutoffs

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.update(day=self.day.isoformat(), window_start=self.start.isoformat(), window_end=self.end.isoformat(),
                   holdout_start=self.holdout_start.isoformat(), label_days=self.holdout_days,
                   training_cutoffs=[c.isoformat() for c in self.training_cutoffs()])
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> PropensityParams:
        return cls(day=date.fromisoformat(doc["day"]), window_days=int(doc["window_days"]),
                   holdout_days=int(doc["holdout_days"]), history_len=int(doc["history_len"]),
                   version=int(doc.get("version", FEATURE_VERSION)))


def build_features(tables: Mapping[str, pa.Table], params: PropensityParams) -> tuple[dict[str, pa.Table], dict[str, int]]:
    """``({"lines": …}, counts)``: the window's order lines with customer, placed and removed times,
    from the current orders of the window (``ecom_ml.ingest.current.current_orders``)."""
    import pyarrow.compute as pc

    orders = tables["orders"]
    created = orders.column("created_at").cast(_TS)
    in_window = pc.and_(pc.greater_equal(created, pa.scalar(params.start, _TS)),
                        pc.less(created, pa.scalar(params.end, _TS)))
    orders = orders.filter(in_window)
    no_customer = pc.is_null(orders.column("customer_id"))
    head = pa.table({"order_id": orders.column("order_id").cast(pa.int64()),
                     "customer_id": orders.column("customer_id").cast(pa.int64()),
                     "created_at": orders.column("created_at").cast(_TS)})
    items = tables["order_items"]
    if "order_item_id" not in items.column_names:  # hand-made tables: lines are their own ids
        items = items.append_column("order_item_id", pa.array(np.arange(items.num_rows, dtype=np.int64)))
        tables = {name: table for name, table in tables.items() if name != "refund_lines"}
    lines = _pieces(items, line_states({**tables, "order_items": items})).join(head, keys="order_id",
                                                                                join_type="inner")
    orphan = pc.is_null(lines.column("customer_id"))
    without_customer = int(pc.sum(orphan.cast(pa.int64())).as_py() or 0)
    lines = lines.filter(pc.invert(orphan))
    quantity = lines.column("quantity").to_numpy()
    price = lines.column("unit_price").to_numpy()
    negative = int((quantity < 0).sum() + (price < 0).sum())
    units = np.clip(quantity, 0, None)
    out = pa.table({
        "customer_id": lines.column("customer_id"),
        "order_id": lines.column("order_id"),
        "product_id": lines.column("product_id"),
        "created_at": lines.column("created_at"),
        "removed_at": lines.column("removed_at").cast(_TS),
        "units": pa.array(units, pa.float64()),
        "spend": pa.array(units * np.clip(price, 0, None), pa.float64()),
    }).sort_by([("customer_id", "ascending"), ("created_at", "ascending"), ("order_id", "ascending")])
    removed_now = pc.is_valid(out.column("removed_at"))
    counts = {
        "lines": out.num_rows,
        "orders": len(pc.unique(out.column("order_id"))),
        "customers": len(pc.unique(out.column("customer_id"))),
        "lines_removed": int(pc.sum(removed_now.cast(pa.int64())).as_py() or 0),  # pieces removed by now
        "lines_without_customer": without_customer,
        "orders_without_customer": int(pc.sum(no_customer.cast(pa.int64())).as_py() or 0),
        "negative_clipped": negative,
    }
    return {"lines": out}, counts


def _pieces(items: pa.Table, states: pa.Table) -> pa.Table:
    """Each line as its kept part and one piece per refund (see the module doc), with ``removed_at``."""
    quantity = items.column("quantity").cast(pa.float64()).to_numpy()
    price = items.column("unit_price").cast(pa.float64()).to_numpy()
    order = items.column("order_id").cast(pa.int64()).to_numpy()
    product = items.column("product_id").cast(pa.int64()).to_numpy()
    removed = states.column("removed_at").cast(pa.int64()).fill_null(_NEVER).to_numpy()
    refunds = pc.fill_null(states.column("refunds").combine_chunks(), pa.scalar([], REFUND_TYPE)) \
        if items.num_rows else pa.array([], REFUND_TYPE)
    flat = pc.list_flatten(refunds)
    parent = pc.list_parent_indices(refunds).to_numpy().astype(np.int64)
    taken = flat.field("quantity").to_numpy(zero_copy_only=False).astype(np.float64)
    at = flat.field("at").cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
    kept = quantity - np.bincount(parent, weights=taken, minlength=len(quantity))
    # The kept part; a line refunded in full keeps nothing and is only its refund pieces.
    whole = (kept > 0) | (np.bincount(parent, minlength=len(quantity)) == 0)
    rows = np.r_[np.flatnonzero(whole), parent]
    units = np.r_[np.where(kept > 0, kept, quantity)[whole], taken]
    gone = np.r_[np.where(kept > 0, np.where(np.bincount(parent, minlength=len(quantity)) > 0, _NEVER, removed),
                          removed)[whole], at]
    return pa.table({
        "order_id": pa.array(order[rows], pa.int64()),
        "product_id": pa.array(product[rows], pa.int64()),
        "quantity": pa.array(units, pa.float64()),
        "unit_price": pa.array(price[rows], pa.float64()),
        "removed_at": pa.array(np.where(gone == _NEVER, 0, gone), pa.int64(), mask=gone == _NEVER).cast(_TS),
    })


def write_features(lake: Lake, params: PropensityParams, tables: Mapping[str, pa.Table],
                   counts: Mapping[str, int]) -> Manifest:
    return lake.write(FEATURES, DATASET, params.day, tables, extra={DATASET: {**params.to_dict(), "counts": dict(counts)}})


def stored_params(lake: Lake, day: date) -> PropensityParams:
    from ecom_ml.features import stored_settings

    return PropensityParams.from_dict(stored_settings(lake, DATASET, day, PropensityFeatureError))


def read_features(lake: Lake, day: date) -> tuple[PropensityParams, dict[str, pa.Table]]:
    return stored_params(lake, day), lake.read(FEATURES, DATASET, day)


# -- examples at a cutoff -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """The stored lines as numpy arrays (times in epoch µs; never removed = a far-future sentinel;
    orders and products as dense codes, since only their distinct counts are features)."""

    customer: np.ndarray
    order: np.ndarray
    product: np.ndarray
    created: np.ndarray
    removed: np.ndarray
    units: np.ndarray
    spend: np.ndarray

    @classmethod
    def from_tables(cls, tables: Mapping[str, pa.Table]) -> Facts:
        lines = tables["lines"]
        removed = lines.column("removed_at").cast(_TS).cast(pa.int64()).fill_null(_NEVER)
        # Orders and products as dense codes (0 .. distinct-1): distinct counts pack (group, code) in one int64.
        order = np.unique(lines.column("order_id").to_numpy(), return_inverse=True)[1]
        product = np.unique(lines.column("product_id").to_numpy(), return_inverse=True)[1]
        return cls(
            customer=lines.column("customer_id").to_numpy().astype(np.int64),
            order=order.astype(np.int64),
            product=product.astype(np.int64),
            created=lines.column("created_at").cast(_TS).cast(pa.int64()).to_numpy(),
            removed=removed.to_numpy(),
            units=lines.column("units").to_numpy().astype(np.float64),
            spend=lines.column("spend").to_numpy().astype(np.float64),
        )


@dataclass(frozen=True)
class Examples:
    """One row per customer at one cutoff: the model's and the baselines' inputs, and the label."""

    cutoff: datetime
    customer_ids: np.ndarray  # (n,) sorted
    sequence: np.ndarray  # (n, weeks, len(CHANNELS)) raw counts / amounts, oldest week first
    static: np.ndarray  # (n, len(STATIC))
    label: np.ndarray  # (n,) 1 = a purchase in the label window
    new: np.ndarray  # (n,) first order within NEW_CUSTOMER_DAYS before the cutoff
    spend: np.ndarray  # (n,) spend before the cutoff (as of it)
    recency_days: np.ndarray  # (n,) days since the last purchase (since the first order without one)
    label_purchases: int  # purchases (lines) in the label window over all customers, scored or not

    def __len__(self) -> int:
        return len(self.customer_ids)

    def column(self, name: str) -> np.ndarray:
        return self.static[:, STATIC.index(name)]

    def take(self, rows: np.ndarray) -> Examples:
        """The examples of ``rows`` (a mask or indices); ``label_purchases`` is kept as a whole-set count."""
        from dataclasses import replace

        return replace(self, customer_ids=self.customer_ids[rows], sequence=self.sequence[rows],
                       static=self.static[rows], label=self.label[rows], new=self.new[rows], spend=self.spend[rows],
                       recency_days=self.recency_days[rows])


def concat(parts: list[Examples]) -> Examples:
    """Several sets of examples stacked (the first one's cutoff names the result)."""
    return Examples(
        cutoff=parts[0].cutoff,
        customer_ids=np.concatenate([p.customer_ids for p in parts]),
        sequence=np.concatenate([p.sequence for p in parts]),
        static=np.concatenate([p.static for p in parts]),
        label=np.concatenate([p.label for p in parts]),
        new=np.concatenate([p.new for p in parts]),
        spend=np.concatenate([p.spend for p in parts]),
        recency_days=np.concatenate([p.recency_days for p in parts]),
        label_purchases=sum(p.label_purchases for p in parts),
    )


def validation_customers(customer_ids: np.ndarray) -> np.ndarray:
    """Half of the customers, fixed by their id (a multiplicative hash): the calibration half."""
    ids = np.asarray(customer_ids).astype(np.uint64)
    return ((ids * np.uint64(2654435761)) >> np.uint64(7)) % np.uint64(2) == 0


def _unique_count(groups: np.ndarray, keys: np.ndarray, size: int) -> np.ndarray:
    """Distinct ``keys`` per group index (0 .. size-1); keys are small dense codes (see ``Facts``)."""
    if len(groups) == 0:
        return np.zeros(size)
    width = int(keys.max()) + 1
    pairs = np.unique(groups.astype(np.int64) * width + keys)
    return np.bincount(pairs // width, minlength=size).astype(np.float64)


def examples_at(facts: Facts, cutoff: datetime, label_days: int, weeks: int,
                known_at: datetime | None = None) -> Examples:
    """The examples of every customer with an order placed before ``cutoff``.

    Features use what was known at ``cutoff``; the label is whether a purchase was placed in
    ``[cutoff, cutoff + label_days)`` that was still a purchase at ``known_at`` (None: today's state,
    for the holdout). See the module docstring for the rules.
    """
    c = micros(cutoff)
    label_end = micros(cutoff + timedelta(days=label_days))
    pre = facts.created < c
    customers = np.unique(facts.customer[pre])
    n = len(customers)
    kept = pre & (facts.removed >= c)
    refunded = pre & ~kept
    index = np.searchsorted(customers, facts.customer)

    # -- weekly sequence ---------------------------------------------------------------------------
    age = (c - facts.created) // _WEEK_US  # 0: the week just before the cutoff
    in_seq = pre & (age < weeks)
    position = np.where(in_seq, weeks - 1 - age, 0)
    cell = index * weeks + position
    size = n * weeks
    seq = np.zeros((size, len(CHANNELS)))
    keep_seq = kept & in_seq
    # Orders are counted as distinct order codes: pieces of one order may differ in removal.
    seq[:, 0] = _unique_count(cell[keep_seq], facts.order[keep_seq], size)
    seq[:, 1] = np.bincount(cell[keep_seq], weights=facts.units[keep_seq], minlength=size)
    seq[:, 2] = np.bincount(cell[keep_seq], weights=facts.spend[keep_seq], minlength=size)
    seq[:, 3] = _unique_count(cell[keep_seq], facts.product[keep_seq], size)
    ref_seq = refunded & in_seq
    seq[:, 4] = _unique_count(cell[ref_seq], facts.order[ref_seq], size)
    sequence = seq.reshape(n, weeks, len(CHANNELS))

    # -- RFM and tenure ----------------------------------------------------------------------------
    first_any = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first_any, index[pre], facts.created[pre])
    last_any = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last_any, index[pre], facts.created[pre])
    last_kept = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last_kept, index[kept], facts.created[kept])
    has_purchase = last_kept > np.iinfo(np.int64).min
    days = float(_DAY_US)
    tenure = (c - first_any) / days if n else np.zeros(0)
    since_any = (c - last_any) / days if n else np.zeros(0)
    recency = np.where(has_purchase, (c - np.where(has_purchase, last_kept, c)) / days, tenure)
    orders = _unique_count(index[kept], facts.order[kept], n)
    recent90 = kept & (facts.created >= c - 90 * _DAY_US)
    recent30 = kept & (facts.created >= c - 30 * _DAY_US)
    orders90 = _unique_count(index[recent90], facts.order[recent90], n)
    orders30 = _unique_count(index[recent30], facts.order[recent30], n)
    refunds = _unique_count(index[refunded], facts.order[refunded], n)
    spend = np.bincount(index[kept], weights=facts.spend[kept], minlength=n).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        aov = np.where(orders > 0, spend / np.maximum(orders, 1), 0.0)
        refund_share = np.where(orders + refunds > 0, refunds / np.maximum(orders + refunds, 1), 0.0)
    rhythm = _rhythm(facts, index, kept, c, n, recency, orders)
    static = np.stack([np.log1p(recency), np.log1p(tenure), np.log1p(orders), np.log1p(orders90),
                       np.log1p(orders30), np.log1p(spend), np.log1p(aov), refund_share,
                       has_purchase.astype(np.float64), np.log1p(since_any), *rhythm],
                      axis=1) if n else np.zeros((0, len(STATIC)))

    # -- label -------------------------------------------------------------------------------------
    known = _NEVER if known_at is None else micros(known_at)
    in_label = (facts.created >= c) & (facts.created < label_end) & (facts.removed >= known)
    if known_at is None:
        in_label &= facts.removed == _NEVER
    scored = in_label & np.isin(facts.customer, customers)
    label = np.zeros(n, dtype=np.int8)
    label[index[scored]] = 1
    return Examples(
        cutoff=cutoff, customer_ids=customers, sequence=sequence.astype(np.float32), static=static.astype(np.float32),
        label=label, new=(tenure <= NEW_CUSTOMER_DAYS) if n else np.zeros(0, dtype=bool), spend=spend,
        recency_days=recency, label_purchases=int(in_label.sum()),
    )


def _rhythm(facts: Facts, index: np.ndarray, kept: np.ndarray, c: int, n: int, recency: np.ndarray,
            orders: np.ndarray) -> list[np.ndarray]:
    """What a CRM analyst reads beyond RFM, as of the cutoff (purchases kept at it only):

    * the customer's own rhythm: mean gap between distinct purchase days, and how **overdue** they
      are (days since the last purchase / that mean gap: 3 means three usual gaps without a
      purchase, the sign that a customer has lapsed), and the gaps' coefficient of variation
      (regular re-stockers vs occasional buyers); 0 with fewer than two purchase days;
    * how spread out the buying is: distinct weeks and months (30-day blocks back from the cutoff)
      with a purchase;
    * trend: ``log1p(orders in the last 90 days) - log1p(orders in the 90 before)``;
    * basket: lines and units per order (a wholesaler buys many lines in bulk).
    """
    # Every kept piece, not one line per order: an order's first line may be a piece refunded already.
    cust = index[kept]
    order = facts.order[kept]
    day_no = (c - 1 - facts.created[kept]) // _DAY_US  # 0: the day before the cutoff
    span = int(day_no.max()) + 2 if len(day_no) else 1
    pairs = np.unique(cust * span + day_no)  # distinct (customer, purchase day), by customer then newest first
    pc, pd = pairs // span, pairs % span
    same = pc[1:] == pc[:-1]
    gap = (pd[1:] - pd[:-1])[same].astype(np.float64)
    gc = pc[1:][same]
    n_gaps = np.bincount(gc, minlength=n).astype(np.float64)
    gap_sum = np.bincount(gc, weights=gap, minlength=n)
    gap_sq = np.bincount(gc, weights=gap * gap, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_gap = np.where(n_gaps > 0, gap_sum / np.maximum(n_gaps, 1), 0.0)
        var = np.where(n_gaps > 0, gap_sq / np.maximum(n_gaps, 1) - mean_gap ** 2, 0.0)
        cv = np.where(mean_gap > 0, np.sqrt(np.clip(var, 0, None)) / np.maximum(mean_gap, 1e-9), 0.0)
        overdue = np.where(mean_gap > 0, recency / np.maximum(mean_gap, 1.0), 0.0)
    weeks = _unique_count(cust, day_no // 7, n)
    months = _unique_count(cust, day_no // 30, n)
    last90 = _unique_count(cust[day_no < 90], order[day_no < 90], n)
    early = (day_no >= 90) & (day_no < 180)
    before90 = _unique_count(cust[early], order[early], n)
    lines = np.bincount(index[kept], minlength=n).astype(np.float64)
    units = np.bincount(index[kept], weights=facts.units[kept], minlength=n)
    per = np.maximum(orders, 1)
    return [np.log1p(mean_gap), np.log1p(np.minimum(overdue, 50.0)), np.minimum(cv, 5.0), np.log1p(weeks),
            np.log1p(months), np.log1p(last90) - np.log1p(before90), np.log1p(lines / per), np.log1p(units / per)]


def holdout_examples(facts: Facts, params: PropensityParams, weeks: int | None = None) -> Examples:
    """The evaluation's examples: at the holdout start, labels as they stand today."""
    return examples_at(facts, params.holdout_start, params.holdout_days, weeks or params.history_len)


def training_examples(facts: Facts, params: PropensityParams, cutoffs: list[datetime], weeks: int,
                      label_days: int, known_at: datetime) -> Examples:
    """The examples of several cutoffs stacked (a customer once per cutoff), labels as of ``known_at``."""
    parts = [examples_at(facts, cutoff, label_days, weeks, known_at) for cutoff in cutoffs]
    parts = [p for p in parts if len(p)]
    if not parts:
        return examples_at(facts, cutoffs[0], label_days, weeks, known_at)
    return concat(parts)
