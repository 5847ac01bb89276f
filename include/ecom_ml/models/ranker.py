"""A learned ranker over candidates (Keras 3, ``keras`` / ``keras.ops`` only): two stages, retrieve then rank.

Why: on real retail data what a customer bought before dominates (design.md: the repeat baseline
beats popularity 2:1, and a time-decayed frequency blended with EASE beats both). A single
embedding model has to rediscover that; a ranker over explicit features of "this customer and this
item" gets it for free and learns *how much* each signal matters -- e.g. that an item bought every
month and last bought 35 days ago is due, one bought once a year ago is not.

Stage 1, candidates per customer: every product they bought before (at most ``max_own`` by decayed
frequency) plus EASE's top ``n_ease`` products (``ecom_ml.evaluation.baselines.EaseBaseline``).
Stage 2, features of each (customer, candidate) pair, as of the reference time:

* customer x item: orders containing it (one count per order), lines, quantity, days since the
  last and first purchase, the customer's repurchase interval for it (mean gap between its orders)
  and how overdue it is, time-decayed frequency at three half-lives (raw and divided by the
  customer's maximum), "is own item";
* EASE: score, score divided by the customer's maximum |score|, rank among the candidates;
* customer: orders, distinct products, days since their last order, tenure;
* item: lines in the last 30 days and the 30 before (trend), all-time lines and customers, age,
  log price (from the feature build's ``items`` table when given).

Training examples come from the data *before* the reference time only: for each of ``n_windows``
earlier cutoffs (``label_days`` apart), features as of that cutoff and labels = bought in the
``label_days`` after it; EASE is refitted at each cutoff so no example sees its own label. The
scorer is a small MLP on standardised features with a pointwise logistic loss. New customers (no
purchase before the reference time) get the popularity list, as every baseline does.

Not wired into the training entrypoint or the registry (see the bench, bench/baselines_retail.py
``--ranker``); it is a ``Recommender`` for ``ecom_ml.evaluation``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ecom_ml.errors import EcomError
from ecom_ml.evaluation.baselines import EaseBaseline, popularity_order
from ecom_ml.evaluation.ranking import ItemIndex, fill
from ecom_ml.features.recommender import to_micros

_DAY_US = 86_400 * 1_000_000
HALF_LIVES = (30.0, 120.0, 365.0)


class RankerError(EcomError):
    """The ranker cannot be trained (no labelled window, bad settings)."""


@dataclass(frozen=True)
class RankerParams:
    max_own: int = 150
    n_ease: int = 60
    ease_l2: float = 500.0
    label_days: int = 31
    n_windows: int = 3
    hidden: int = 64
    epochs: int = 6
    batch_size: int = 2048
    learning_rate: float = 2e-3
    seed: int = 0
    recent_days: int = 30

    def __post_init__(self) -> None:
        for name in ("max_own", "n_ease", "label_days", "n_windows", "hidden", "epochs", "batch_size", "recent_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RankerError(f"ranker setting {name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.ease_l2, (int, float)) and self.ease_l2 > 0):
            raise RankerError(f"ranker setting ease_l2 must be a positive number, got {self.ease_l2!r}")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < 1):
            raise RankerError(f"ranker setting learning_rate must be in (0, 1), got {self.learning_rate!r}")


def _frame(train: pa.Table) -> pd.DataFrame:
    ts = train.column("ts").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    return pd.DataFrame({
        "customer_id": train.column("customer_id").to_numpy().astype(np.int64),
        "product_id": train.column("product_id").to_numpy().astype(np.int64),
        "order_id": train.column("order_id").to_numpy().astype(np.int64),
        "quantity": train.column("quantity").to_numpy().astype(np.float64),
        "ts": ts.astype(np.int64),
    })


class CandidateFeatures:
    """Candidates and their features for customers, as of ``as_of``, from interactions before it."""

    def __init__(self, train: pa.Table, as_of: datetime, params: RankerParams,
                 prices: pd.Series | None = None) -> None:
        self.params = params
        self.as_of_us = to_micros(as_of)
        self.ease = EaseBaseline(train, l2=params.ease_l2, recent_days=params.recent_days, as_of=as_of)
        self.index = self.ease.index
        df = _frame(train)
        df["code"] = self.index.codes(df["product_id"].to_numpy())
        now = self.as_of_us
        # One row per (customer, product, order): one purchase.
        orders = df.groupby(["customer_id", "code", "order_id"], sort=False).agg(
            ts=("ts", "min"), quantity=("quantity", "sum"), lines=("ts", "size")).reset_index()
        age = (now - orders["ts"].to_numpy()) / _DAY_US
        for hl in HALF_LIVES:
            orders[f"decay_{hl:g}"] = np.power(0.5, age / hl)
        pair = orders.groupby(["customer_id", "code"], sort=True).agg(
            n_orders=("order_id", "size"), lines=("lines", "sum"), quantity=("quantity", "sum"),
            last=("ts", "max"), first=("ts", "min"),
            **{f"decay_{hl:g}": (f"decay_{hl:g}", "sum") for hl in HALF_LIVES}).reset_index()
        pair["since_last"] = (now - pair["last"]) / _DAY_US
        pair["since_first"] = (now - pair["first"]) / _DAY_US
        interval = (pair["last"] - pair["first"]) / _DAY_US / np.maximum(pair["n_orders"] - 1, 1)
        pair["has_interval"] = (pair["n_orders"] > 1).astype(np.float64)
        pair["interval"] = np.where(pair["n_orders"] > 1, interval, 0.0)
        pair["overdue"] = np.where(pair["n_orders"] > 1, pair["since_last"] / np.maximum(interval, 1.0), 0.0)
        for hl in HALF_LIVES:
            col = f"decay_{hl:g}"
            pair[f"{col}_norm"] = pair[col] / pair.groupby("customer_id")[col].transform("max")
        self.pairs = pair
        cust_orders = df.groupby(["customer_id", "order_id"]).agg(ts=("ts", "min")).reset_index()
        cust = cust_orders.groupby("customer_id").agg(c_orders=("order_id", "size"), c_last=("ts", "max"),
                                                      c_first=("ts", "min"))
        cust["c_items"] = pair.groupby("customer_id").size()
        cust["c_since_last"] = (now - cust["c_last"]) / _DAY_US
        cust["c_tenure"] = (now - cust["c_first"]) / _DAY_US
        self.customers = cust[["c_orders", "c_items", "c_since_last", "c_tenure"]]
        n = len(self.index)
        codes, ts = df["code"].to_numpy(), df["ts"].to_numpy()
        recent = ts >= now - 30 * _DAY_US
        previous = (ts >= now - 60 * _DAY_US) & ~recent
        buyers = df.drop_duplicates(["customer_id", "code"])["code"].to_numpy()
        first_sale = np.full(n, now, dtype=np.float64)
        np.minimum.at(first_sale, codes, ts.astype(np.float64))
        price = np.zeros(n)
        if prices is not None:
            price = np.log1p(pd.Series(self.index.ids).map(prices).fillna(prices.median()).to_numpy())
        self.item_features = np.stack([
            np.log1p(np.bincount(codes[recent], minlength=n)),
            np.log1p(np.bincount(codes[previous], minlength=n)),
            np.log1p(np.bincount(codes, minlength=n)),
            np.log1p(np.bincount(buyers, minlength=n)),
            np.log1p((now - first_sale) / _DAY_US),
            price,
        ], axis=1)
        self.item_features = np.column_stack([self.item_features, self.item_features[:, 0] - self.item_features[:, 1]])
        self.popular = self.index.codes(popularity_order(train, params.recent_days, as_of))

    def build(self, customer_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row customer position, candidate code, feature matrix) for the known ones of ``customer_ids``."""
        params = self.params
        customer_ids = np.asarray(customer_ids, dtype=np.int64)
        empty = [np.zeros(0, dtype=np.int64) for _ in customer_ids]
        ease = self.ease.scores(customer_ids, empty)
        finite = np.isfinite(ease)
        ease0 = np.where(finite, ease, 0.0)
        scale = np.max(np.abs(ease0), axis=1, keepdims=True)
        ease_norm = np.divide(ease0, scale, out=np.zeros_like(ease0), where=scale > 0)
        order = np.argsort(-np.where(finite, ease, -np.inf), axis=1, kind="stable")
        ease_rank = np.empty_like(order)
        np.put_along_axis(ease_rank, order, np.arange(order.shape[1])[None, :], axis=1)

        pos = pd.Series(np.arange(len(customer_ids)), index=customer_ids)
        own = self.pairs[self.pairs["customer_id"].isin(customer_ids)].copy()
        own["row"] = pos.loc[own["customer_id"].to_numpy()].to_numpy()
        own = own.sort_values(["row", "decay_365_norm"], ascending=[True, False])
        own = own[own.groupby("row").cumcount() < params.max_own]
        has_own = np.zeros(len(customer_ids), dtype=bool)
        has_own[own["row"].to_numpy()] = True
        # EASE candidates only for customers with a purchase (the rest are new: popularity).
        top = order[:, : params.n_ease]
        e_rows = np.repeat(np.arange(len(customer_ids)), top.shape[1])
        e_codes = top.ravel()
        keep = has_own[e_rows] & finite[e_rows, e_codes]
        cand = pd.DataFrame({"row": np.concatenate([own["row"].to_numpy(), e_rows[keep]]),
                             "code": np.concatenate([own["code"].to_numpy(), e_codes[keep]])})
        cand = cand.drop_duplicates(["row", "code"]).sort_values(["row", "code"]).reset_index(drop=True)
        cand["customer_id"] = customer_ids[cand["row"].to_numpy()]
        merged = cand.merge(self.pairs, on=["customer_id", "code"], how="left")
        is_own = merged["n_orders"].notna().to_numpy().astype(np.float64)
        merged = merged.fillna(0.0)
        rows, codes = merged["row"].to_numpy(), merged["code"].to_numpy()
        cust = self.customers.reindex(merged["customer_id"].to_numpy()).fillna(0.0).to_numpy()
        big = 10_000.0
        pair_cols = [np.log1p(merged["n_orders"]), np.log1p(merged["lines"]), np.log1p(merged["quantity"]),
                     np.where(is_own > 0, np.log1p(merged["since_last"]), np.log1p(big)),
                     np.where(is_own > 0, np.log1p(merged["since_first"]), np.log1p(big)),
                     merged["has_interval"], np.log1p(merged["interval"]), np.log1p(merged["overdue"]),
                     *[merged[f"decay_{hl:g}"] for hl in HALF_LIVES],
                     *[merged[f"decay_{hl:g}_norm"] for hl in HALF_LIVES], is_own]
        ease_cols = [ease[rows, codes], ease_norm[rows, codes], np.log1p(ease_rank[rows, codes])]
        ease_cols[0] = np.where(np.isfinite(ease_cols[0]), ease_cols[0], 0.0)
        x = np.column_stack([*[np.asarray(c, dtype=np.float64) for c in pair_cols], *ease_cols,
                             np.log1p(cust), self.item_features[codes]])
        return rows, codes, x.astype(np.float32)


def _labels(test: pd.DataFrame, customer_ids: np.ndarray, rows: np.ndarray, codes: np.ndarray,
            index: ItemIndex) -> np.ndarray:
    bought = set(zip(test["customer_id"].to_numpy().tolist(), index.codes(test["product_id"].to_numpy()).tolist()))
    return np.fromiter(((int(customer_ids[r]), int(c)) in bought for r, c in zip(rows, codes)), dtype=np.float32,
                       count=len(rows))


def _scorer(n_features: int, params: RankerParams, mean: np.ndarray, std: np.ndarray) -> Any:
    import keras

    keras.utils.set_random_seed(params.seed)
    inputs = keras.Input(shape=(n_features,))
    # Standardisation as a layer with fixed statistics: saved with the model, no Python closure.
    x = keras.layers.Normalization(mean=mean, variance=np.square(std))(inputs)
    x = keras.layers.Dense(params.hidden, activation="relu")(x)
    x = keras.layers.Dense(params.hidden, activation="relu")(x)
    out = keras.layers.Dense(1)(x)
    model = keras.Model(inputs, out)
    model.compile(optimizer=keras.optimizers.Adam(params.learning_rate),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    return model


class LearnedRanker:
    """Candidates + features + a Keras scorer; a ``Recommender`` for the evaluation protocol."""

    name = "learned_ranker"

    def __init__(self, train: pa.Table, cutoff: datetime, params: RankerParams | None = None,
                 prices: pd.Series | None = None, verbose: bool = False) -> None:
        self.settings = p = params or RankerParams()
        started = time.perf_counter()
        df = _frame(train)
        if len(df) and df["ts"].max() >= to_micros(cutoff):
            raise RankerError(f"the ranker's training interactions reach past the cutoff {cutoff.isoformat()}: "
                              "pass only what precedes it (split.train)")
        xs, ys = [], []
        for w in range(1, p.n_windows + 1):
            t0 = cutoff - timedelta(days=p.label_days * w)
            t0_us, t1_us = to_micros(t0), to_micros(t0 + timedelta(days=p.label_days))
            before = train.filter(pc.less(train.column("ts"), pa.scalar(t0, pa.timestamp("us", tz="UTC"))))
            window = df[(df["ts"] >= t0_us) & (df["ts"] < t1_us)]
            if before.num_rows == 0 or window.empty:
                break
            feats = CandidateFeatures(before, t0, p, prices)
            known = np.intersect1d(window["customer_id"].unique(), feats.customers.index.to_numpy())
            rows, codes, x = feats.build(known)
            xs.append(x)
            ys.append(_labels(window, known, rows, codes, feats.index))
        if not xs:
            raise RankerError(f"no labelled window of {p.label_days} days before {cutoff.date()}: cannot train the ranker")
        x, y = np.concatenate(xs), np.concatenate(ys)
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
        self.model = _scorer(x.shape[1], p, mean.astype(np.float32), std.astype(np.float32))
        self.model.fit(x, y, batch_size=p.batch_size, epochs=p.epochs, shuffle=True, verbose=0)
        self.train_examples, self.positive_rate = len(y), float(y.mean())
        self.features = CandidateFeatures(train, cutoff, p, prices)
        self._precompute()
        self.train_seconds = time.perf_counter() - started
        self.params = {**asdict(p), "train_examples": self.train_examples, "train_seconds": round(self.train_seconds, 1)}
        if verbose:
            print(f"   ranker: {len(y):,} examples from {len(xs)} windows (positives {y.mean():.3%}), "
                  f"{x.shape[1]} features, trained in {self.train_seconds:.1f} s")

    def _precompute(self, batch: int = 1024) -> None:
        """Candidates and features of every known customer, as of the cutoff, computed once.

        They change only with the training data (nightly), so a request is a slice of these arrays
        plus one forward pass of the scorer -- the serving path whose latency the bench measures.
        """
        known = np.sort(self.features.customers.index.to_numpy())
        rows, codes, xs = [], [], []
        for start in range(0, len(known), batch):
            r, c, x = self.features.build(known[start : start + batch])
            rows.append(r + start)
            codes.append(c)
            xs.append(x)
        self._ids = known
        row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        self._offsets = np.searchsorted(row, np.arange(len(known) + 1))
        self._codes = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)
        self._x = np.concatenate(xs) if xs else np.zeros((0, 0), dtype=np.float32)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The scorer's logits for feature rows (one eager forward pass, no ``predict`` loop)."""
        from keras import ops

        if len(x) == 0:
            return np.zeros(0)
        return np.asarray(ops.convert_to_numpy(self.model(x, training=False))).ravel()

    def recommend(self, customer_ids: np.ndarray, histories: Sequence[np.ndarray], k: int) -> np.ndarray:
        feats = self.features
        customer_ids = np.asarray(customer_ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._ids, customer_ids), max(len(self._ids) - 1, 0))
        known = (self._ids[pos] == customer_ids) if len(self._ids) else np.zeros(len(customer_ids), dtype=bool)
        lo = np.where(known, self._offsets[pos], 0)
        n = np.where(known, self._offsets[pos + 1] - lo, 0)
        rows = np.repeat(np.arange(len(customer_ids)), n)
        take = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(int(n.sum()))
        codes, x = self._codes[take], self._x[take]
        score = self.scores(x)
        order = np.lexsort((codes, -score, rows))
        rows, codes = rows[order], codes[order]
        start = np.r_[0, np.flatnonzero(rows[1:] != rows[:-1]) + 1] if len(rows) else np.zeros(0, dtype=np.int64)
        rank = np.arange(len(rows)) - np.repeat(start, np.diff(np.r_[start, len(rows)]))
        keep = rank < k
        chosen = np.full((len(customer_ids), k), -1, dtype=np.int64)
        chosen[rows[keep], rank[keep]] = codes[keep]
        return feats.index.decode(fill(chosen, feats.popular, k))
