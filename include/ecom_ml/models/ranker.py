"""A learned ranker over candidates (Keras 3, ``keras`` / ``keras.ops`` only): two stages, retrieve then rank.

Why: on real retail data what a customer bought before dominates (design.md: the repeat baseline
beats popularity 2:1, and a time-decayed frequency blended with EASE beats both). A single
embedding model has to rediscover that; a ranker over explicit features of "this customer and this
item" gets it for free and learns *how much* each signal matters -- e.g. that an item bought every
month and last bought 35 days ago is due, one bought once a year ago is not.

Stage 1, candidates per customer: every product they bought before (at most ``max_own`` by decayed
frequency), EASE's top ``n_ease`` products (``ecom_ml.evaluation.baselines.EaseBaseline``) and the
``n_popular`` best sellers of the last ``recent_days`` (what is new and selling, which no personal
source proposes).
Stage 2, features of each (customer, candidate) pair, as of the reference time:

* customer x item: orders containing it (one count per order), lines, quantity, days since the
  last and first purchase, the customer's repurchase interval for it (mean gap between its orders)
  and how overdue it is, time-decayed frequency at three half-lives (raw and divided by the
  customer's maximum), "is own item";
* EASE: score, score divided by the customer's maximum |score|, rank among the candidates;
* customer: orders, distinct products, days since their last order, tenure; their share of
  purchases in the item's category (taste), when the caller gives the items' categories;
* item: lines in the last 30 days and the 30 before (trend), all-time lines and customers, age,
  log price (from the feature build's ``items`` table when given).

Training examples come from the data *before* the reference time only: for each of ``n_windows``
earlier cutoffs (``label_days`` apart), features as of that cutoff and labels = bought in the
``label_days`` after it; EASE is refitted at each cutoff so no example sees its own label. The
scorer is a small MLP on standardised features with a pointwise logistic loss. New customers (no
purchase before the reference time) get the popularity list, as every baseline does.

Optionally a **retrieval model** (the two-tower, ``ecom_ml.models.recommender``) adds a third
candidate source (its top ``n_retrieval`` products) and three features (its score, the score minus the
customer's best, its rank over the catalogue). It must never have seen the labels it helps predict, so
the caller trains it once on the data before the *earliest* labelled window (``retrieval_factory``) and
the same model serves every window and the final features: a fixed, leak-free feature extractor.

The recommender model kind (``ecom_ml.models.recommender``) trains this with the two-tower as
retrieval and ships it as ``save``/``load``: the scorer (``ranker.keras``) and the candidates with
their features as of the cutoff for every known customer (``candidates.npz``); a request is a slice
of those arrays and one forward pass of the scorer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ecom_ml.errors import EcomError
from ecom_ml.evaluation.baselines import EaseBaseline, popularity_order
from ecom_ml.evaluation.ranking import ItemIndex, fill, pad
from ecom_ml.features.recommender import histories_as_of, to_micros

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
    #: Candidates from the retrieval model (when one is given) and the history length it is fed.
    n_retrieval: int = 30
    history_len: int = 20
    #: The most popular products of the last ``recent_days`` as candidates of every known customer
    #: (what is new and selling is a next purchase no personal source proposes); 0: none.
    n_popular: int = 20

    def __post_init__(self) -> None:
        for name in ("max_own", "n_ease", "label_days", "n_windows", "hidden", "epochs", "batch_size", "recent_days",
                     "n_retrieval", "history_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RankerError(f"ranker setting {name} must be an integer >= 1, got {value!r}")
        if isinstance(self.n_popular, bool) or not isinstance(self.n_popular, int) or self.n_popular < 0:
            raise RankerError(f"ranker setting n_popular must be an integer >= 0, got {self.n_popular!r}")
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


class Retrieval(Protocol):
    """A model scoring the whole catalogue for a customer from their id and history (the two-tower)."""

    def catalogue_scores(self, customer_ids: np.ndarray, history: np.ndarray, counts: np.ndarray,
                         product_ids: np.ndarray) -> np.ndarray:
        """``(n, len(product_ids))`` scores; NaN for a product the model does not know.

        ``history``: ``(n, H)`` product ids, most recent first, ``-1``-padded; ``counts``: how often
        each was bought (0 for padding)."""
        ...


#: Features the retrieval model adds (zeros without one, so the scorer's input width is fixed).
N_RETRIEVAL_FEATURES = 4


class CandidateFeatures:
    """Candidates and their features for customers, as of ``as_of``, from interactions before it."""

    def __init__(self, train: pa.Table, as_of: datetime, params: RankerParams,
                 prices: pd.Series | None = None, retrieval: Retrieval | None = None,
                 categories: pd.Series | None = None) -> None:
        self.params = params
        self.retrieval = retrieval
        self.histories = histories_as_of(train, as_of, params.history_len) if retrieval is not None else None
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
        # The customer's taste by category: their share of purchases (orders) in the item's category.
        self.item_category = np.zeros(n, dtype=np.int64)
        if categories is not None and n:
            names = pd.Series(self.index.ids).map(categories).fillna("").astype(str)
            self.item_category = pd.factorize(names)[0].astype(np.int64)
        self.n_categories = int(self.item_category.max(initial=0)) + 1
        cat = self.item_category[pair["code"].to_numpy()]
        keys = pair["customer_id"].to_numpy() * self.n_categories + cat
        self._cat_keys, inverse = np.unique(keys, return_inverse=True)
        per_key = np.bincount(inverse, weights=pair["n_orders"].to_numpy().astype(np.float64))
        totals = pair.groupby("customer_id")["n_orders"].sum()
        owner = self._cat_keys // self.n_categories
        self._cat_share = per_key / totals.reindex(owner).to_numpy()

    def category_share(self, customer_ids: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Share of each customer's purchases in the category of the aligned item (0 if none)."""
        if len(self._cat_keys) == 0:
            return np.zeros(len(codes))
        query = np.asarray(customer_ids, dtype=np.int64) * self.n_categories + self.item_category[codes]
        pos = np.minimum(np.searchsorted(self._cat_keys, query), len(self._cat_keys) - 1)
        return np.where(self._cat_keys[pos] == query, self._cat_share[pos], 0.0)

    def _retrieval_scores(self, customer_ids: np.ndarray) -> np.ndarray:
        """``(n, catalogue)`` retrieval scores (NaN: unknown to it) from the histories as of ``as_of``."""
        h = self.histories.padded(customer_ids, self.params.history_len, fill=-1)
        codes = self.index.codes(h)
        counts = np.zeros(h.shape, dtype=np.int32)
        valid = codes >= 0
        if valid.any():
            keys = self.pairs["customer_id"].to_numpy() * (len(self.index) + 1) + self.pairs["code"].to_numpy()
            order = np.argsort(keys)
            keys, lines = keys[order], self.pairs["lines"].to_numpy()[order]
            query = (np.repeat(customer_ids[:, None], h.shape[1], axis=1) * (len(self.index) + 1) + codes)[valid]
            pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
            counts[valid] = np.where(keys[pos] == query, lines[pos], 1)
        return np.asarray(self.retrieval.catalogue_scores(customer_ids, h, counts, self.index.ids), dtype=np.float64)

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
        cand_rows, cand_codes = [own["row"].to_numpy(), e_rows[keep]], [own["code"].to_numpy(), e_codes[keep]]
        if self.retrieval is not None:
            tt = self._retrieval_scores(customer_ids)
            tt_known = np.isfinite(tt)
            tt_order = np.argsort(-np.where(tt_known, tt, -np.inf), axis=1, kind="stable")
            tt_rank = np.empty_like(tt_order)
            np.put_along_axis(tt_rank, tt_order, np.arange(tt_order.shape[1])[None, :], axis=1)
            tt_best = np.max(np.where(tt_known, tt, -np.inf), axis=1, keepdims=True)
            t_top = tt_order[:, : params.n_retrieval]
            t_rows = np.repeat(np.arange(len(customer_ids)), t_top.shape[1])
            t_codes = t_top.ravel()
            t_keep = has_own[t_rows] & tt_known[t_rows, t_codes]
            cand_rows.append(t_rows[t_keep])
            cand_codes.append(t_codes[t_keep])
        if params.n_popular > 0 and len(self.popular):
            top_popular = self.popular[: params.n_popular]
            p_rows = np.repeat(np.flatnonzero(has_own), len(top_popular))
            cand_rows.append(p_rows)
            cand_codes.append(np.tile(top_popular, int(has_own.sum())))
        cand = pd.DataFrame({"row": np.concatenate(cand_rows), "code": np.concatenate(cand_codes)})
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
        if self.retrieval is not None:
            known = tt_known[rows, codes]
            score = np.where(known, tt[rows, codes], 0.0)
            gap = np.where(known, tt[rows, codes] - tt_best[rows, 0], 0.0)
            gap = np.where(np.isfinite(gap), gap, 0.0)
            rank = np.where(known, np.log1p(tt_rank[rows, codes]), np.log1p(len(self.index)))
            retrieval_cols = [score, gap, rank, known.astype(np.float64)]
        else:
            retrieval_cols = [np.zeros(len(rows))] * N_RETRIEVAL_FEATURES
        share = self.category_share(merged["customer_id"].to_numpy(), codes)
        x = np.column_stack([*[np.asarray(c, dtype=np.float64) for c in pair_cols], *ease_cols, *retrieval_cols, share,
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


#: Builds the retrieval model from the interactions before a moment (``None``: no retrieval stage).
RetrievalFactory = Callable[[pa.Table, datetime], "Retrieval | None"]

SCORER_FILE = "ranker.keras"
CANDIDATES_FILE = "candidates.npz"


class LearnedRanker:
    """Candidates + features + a Keras scorer; a ``Recommender`` for the evaluation protocol.

    ``retrieval_factory(interactions, moment)`` is called once with the interactions before the
    earliest labelled window; what it returns (or nothing) is the retrieval stage of every window and
    of the final features, so no feature comes from a model that saw its example's label.
    """

    name = "learned_ranker"

    def __init__(self, train: pa.Table, cutoff: datetime, params: RankerParams | None = None,
                 prices: pd.Series | None = None, verbose: bool = False,
                 retrieval_factory: RetrievalFactory | None = None, log: Callable[[str], None] | None = None,
                 categories: pd.Series | None = None) -> None:
        self.settings = p = params or RankerParams()
        log = log or ((lambda message: print(f"   ranker: {message}")) if verbose else None)
        started = time.perf_counter()
        df = _frame(train)
        if len(df) and df["ts"].max() >= to_micros(cutoff):
            raise RankerError(f"the ranker's training interactions reach past the cutoff {cutoff.isoformat()}: "
                              "pass only what precedes it (split.train)")
        _TS = pa.timestamp("us", tz="UTC")
        # Labels cover ``label_days``, but a window needs history before it: with less than twice that
        # much training data (a long holdout on a short window) the windows shrink to half of it.
        span_days = int((to_micros(cutoff) - int(df["ts"].min())) // _DAY_US) if len(df) else 0
        label_days = p.label_days if span_days >= 2 * p.label_days else max(1, span_days // 2)
        self.label_days = label_days
        windows = []  # (t0, interactions before t0, label lines in [t0, t0 + label_days))
        for w in range(1, p.n_windows + 1):
            t0 = cutoff - timedelta(days=label_days * w)
            t0_us, t1_us = to_micros(t0), to_micros(t0 + timedelta(days=label_days))
            before = train.filter(pc.less(train.column("ts"), pa.scalar(t0, _TS)))
            window = df[(df["ts"] >= t0_us) & (df["ts"] < t1_us)]
            if before.num_rows == 0 or window.empty:
                break
            windows.append((t0, before, window))
        if not windows:
            raise RankerError(f"no labelled window of {label_days} days before {cutoff.date()}: cannot train the ranker")
        earliest, first_before, _ = windows[-1]
        retrieval = retrieval_factory(first_before, earliest) if retrieval_factory is not None else None
        self.retrieval_trained_until = earliest if retrieval is not None else None
        xs, ys = [], []
        for t0, before, window in windows:
            feats = CandidateFeatures(before, t0, p, prices, retrieval, categories)
            known = np.intersect1d(window["customer_id"].unique(), feats.customers.index.to_numpy())
            rows, codes, x = feats.build(known)
            xs.append(x)
            ys.append(_labels(window, known, rows, codes, feats.index))
        x, y = np.concatenate(xs), np.concatenate(ys)
        if len(y) == 0 or y.max() == 0:
            raise RankerError(f"the {len(windows)} labelled window(s) of {label_days} days before {cutoff.date()} "
                              "hold no repeat customer's purchase among the candidates: nothing to learn from")
        mean, std = x.mean(axis=0), x.std(axis=0)
        # A feature constant over the training windows (e.g. sales 30-60 days before a cutoff when the
        # window holds less history than that) carries nothing to learn from, but would be divided by
        # ~0 at serving, where it may vary: it is scaled to ~0 instead, i.e. ignored.
        std = np.where(std < 1e-6, 1e6, np.maximum(std, 1e-3))
        self.model = _scorer(x.shape[1], p, mean.astype(np.float32), std.astype(np.float32))
        fitted = self.model.fit(x, y, batch_size=min(p.batch_size, len(y)), epochs=p.epochs, shuffle=True, verbose=0)
        self.losses = [float(v) for v in fitted.history.get("loss", [])]
        if not self.losses or not all(np.isfinite(self.losses)):
            raise RankerError(f"the ranker's training diverged (losses {self.losses}); lower its learning rate")
        self.train_examples, self.positive_rate, self.n_windows = len(y), float(y.mean()), len(windows)
        self.n_features = int(x.shape[1])
        if log:
            log(f"{len(y):,} examples from {len(windows)} window(s) of {label_days} days (positives {y.mean():.3%}), "
                f"{x.shape[1]} features, fitted in {time.perf_counter() - started:.1f} s")
        features = CandidateFeatures(train, cutoff, p, prices, retrieval, categories)
        self.index, self.popular = features.index, features.popular
        self._precompute(features)
        self.train_seconds = time.perf_counter() - started
        self.params = {**asdict(p), "label_days_used": label_days, "train_examples": self.train_examples,
                       "windows": self.n_windows,
                       "retrieval": retrieval is not None, "train_seconds": round(self.train_seconds, 1)}
        if log:
            log(f"candidates of {len(self._ids):,} customers precomputed; {self.train_seconds:.1f} s in all")

    def _precompute(self, features: CandidateFeatures, batch: int = 1024) -> None:
        """Candidates and features of every known customer, as of the cutoff, computed once.

        They change only with the training data (nightly), so a request is a slice of these arrays
        plus one forward pass of the scorer -- the serving path whose latency the bench measures.
        """
        known = np.sort(features.customers.index.to_numpy())
        rows, codes, xs = [], [], []
        for start in range(0, len(known), batch):
            r, c, x = features.build(known[start : start + batch])
            rows.append(r + start)
            codes.append(c)
            xs.append(x)
        self._ids = known
        row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        self._offsets = np.searchsorted(row, np.arange(len(known) + 1))
        self._codes = np.concatenate(codes) if codes else np.zeros(0, dtype=np.int64)
        self._x = np.concatenate(xs) if xs else np.zeros((0, 0), dtype=np.float32)
        self._scores = self._score_all()

    def _score_all(self, batch: int = 65_536) -> np.ndarray:
        """The scorer over every precomputed candidate, in large batches: the features are fixed until
        the next training, so are the scores, and a request then costs a slice and a sort (no Keras
        call on the request path, which is what keeps p99 latency in single milliseconds)."""
        parts = [self.scores(self._x[lo : lo + batch]) for lo in range(0, len(self._x), batch)]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, dtype=np.float32)

    # -- artifacts -------------------------------------------------------------------------------

    def save(self, folder: Path) -> dict[str, str]:
        """Write the scorer (no optimizer state) and the precomputed candidates into ``folder``."""
        import keras

        folder.mkdir(parents=True, exist_ok=True)
        serving = keras.Model.from_config(self.model.get_config())
        serving.set_weights(self.model.get_weights())
        serving.save(folder / SCORER_FILE)
        np.savez(folder / CANDIDATES_FILE, customer_ids=self._ids, offsets=self._offsets.astype(np.int64),
                 codes=self._codes.astype(np.int32), x=self._x.astype(np.float32), catalogue=self.index.ids,
                 popular=self.popular.astype(np.int64),
                 params=np.array(json.dumps({k: v for k, v in self.params.items()}, sort_keys=True)))
        return {"scorer": SCORER_FILE, "candidates": CANDIDATES_FILE}

    @classmethod
    def load(cls, folder: Path, name: str | None = None) -> LearnedRanker:
        """A ranker written by ``save``; it scores without any training data."""
        import keras

        self = cls.__new__(cls)
        self.model = keras.saving.load_model(folder / SCORER_FILE, compile=False)
        with np.load(folder / CANDIDATES_FILE, allow_pickle=False) as arrays:
            self._ids = arrays["customer_ids"].astype(np.int64)
            self._offsets = arrays["offsets"].astype(np.int64)
            self._codes = arrays["codes"].astype(np.int64)
            self._x = arrays["x"].astype(np.float32)
            self.index = ItemIndex(arrays["catalogue"])
            self.popular = arrays["popular"].astype(np.int64)
            self.params = json.loads(str(arrays["params"]))
        self._scores = self._score_all()
        if name:
            self.name = name
        return self

    # -- serving ---------------------------------------------------------------------------------

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The scorer's logits for feature rows (one eager forward pass, no ``predict`` loop)."""
        from keras import ops

        if len(x) == 0:
            return np.zeros(0)
        return np.asarray(ops.convert_to_numpy(self.model(x, training=False))).ravel()

    def recommend(self, customer_ids: np.ndarray, histories: Sequence[np.ndarray], k: int) -> np.ndarray:
        """Known customers: their ranked candidates, then popularity. A customer unknown at the cutoff:
        the request history's products (most recent first), then popularity."""
        customer_ids = np.asarray(customer_ids, dtype=np.int64)
        k = int(k)
        if len(customer_ids) == 0 or k <= 0:
            return np.full((len(customer_ids), max(k, 0)), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._ids, customer_ids), max(len(self._ids) - 1, 0))
        known = (self._ids[pos] == customer_ids) if len(self._ids) else np.zeros(len(customer_ids), dtype=bool)
        lo = np.where(known, self._offsets[pos], 0)
        n = np.where(known, self._offsets[np.minimum(pos + 1, len(self._offsets) - 1)] - lo, 0)
        rows = np.repeat(np.arange(len(customer_ids)), n)
        take = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(int(n.sum()))
        codes, score = self._codes[take], self._scores[take]
        order = np.lexsort((codes, -score, rows))
        rows, codes = rows[order], codes[order]
        start = np.r_[0, np.flatnonzero(rows[1:] != rows[:-1]) + 1] if len(rows) else np.zeros(0, dtype=np.int64)
        rank = np.arange(len(rows)) - np.repeat(start, np.diff(np.r_[start, len(rows)]))
        keep = rank < k
        chosen = np.full((len(customer_ids), k), -1, dtype=np.int64)
        chosen[rows[keep], rank[keep]] = codes[keep]
        unknown = np.flatnonzero(~known)
        if len(unknown) and len(histories):
            chosen[unknown] = self.index.codes(pad([np.asarray(histories[i]) for i in unknown], k))
        return self.index.decode(fill(chosen, self.popular, k))

    def recommend_one(self, customer_id: int, history: np.ndarray | list[int], k: int) -> np.ndarray:
        """One request (the serving path's latency): ``(k,)`` product ids."""
        return self.recommend(np.array([customer_id], dtype=np.int64), [np.asarray(history, dtype=np.int64)], k)[0]
