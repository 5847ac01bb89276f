"""The recommender model kind: features -> two stages (two-tower retrieval, learned ranker) -> ``<out>/model/``.

``train(request)`` is the registry's trainer (``python -m ecom_ml.train --model recommender``);
``load_recommender(model_dir)`` gives the evaluator (candidate and champion alike) and batch
publishing an object with the ``ecom_ml.evaluation.protocol.Recommender`` interface: ``name`` and
batched ``recommend``, plus ``recommend_one`` for the CPU latency figure of the cost gate.

Why two stages: on real retail data what a customer bought before dominates (design.md; on the
shared Online Retail II year "the customer's own items by time-decayed frequency, blended with
EASE" beats the two-tower alone). A ranker over explicit features of (customer, item) -- how often
and how recently they bought it, their usual interval for it, EASE and two-tower scores, the
customer's taste for its category, the item's popularity, trend and price -- learns how much each
signal is worth, which no fixed blend does.

* **Stage 1, retrieval**: the two-tower below (``prepare`` / ``fit``, ``ecom_ml.models.two_tower``),
  trained once on the interactions before the ranker's *earliest* labelled window, so its scores
  are leak-free features for every window and for serving. Optional (``retrieval``, off by
  default): on the shared real year it did not improve the ranker and cost most of the training
  time; without it the candidates are own items, EASE and what sells now.
* **Stage 2, ranking**: ``ecom_ml.models.ranker.LearnedRanker``: candidates (own items, EASE, the
  two-tower's top products, what sells now), features, a Keras MLP trained on ``n_windows``
  earlier windows whose labels are the ``label_days`` (default: the holdout's length) after each.
* **Artifacts**: ``ranker.keras`` (the scorer) and ``candidates.npz`` (every known customer's
  candidates and their features as of the cutoff, the two-tower's scores among them), plus
  ``model.json``. Serving needs no second model and no training data: a request is a slice of
  the precomputed scores; a customer unknown at the cutoff gets their request history's products,
  then popularity (the protocol's cold start).

The two-tower stage, as it was the whole model before (format 1, ``load_two_tower``):

How training data is made, and why

* **Split.** ``time_split`` of the features' interactions at ``day`` with ``holdout_days``: the model
  learns from the interactions before the cutoff only, each order as it stood at the cutoff, so the
  evaluator's holdout is unseen. ``holdout_days`` and ``history_len`` default to the values the
  features were built with (their manifest/metadata, set once by the Variables
  ``ecom_recommender_holdout_days`` / ``…_history_len``): trainer and evaluator read one split.
  ``holdout_days=0`` trains on everything (a final refit; such a model must not be evaluated on the
  same days).
* **Examples.** Every training interaction is one positive ``(customer, product)`` pair, weighted by
  its recency weight from the features. Its history is the customer's history *as of 00:00 UTC of
  the interaction's day*, computed by ``ecom_ml.features.recommender.histories_as_of`` - the one
  history function, the one evaluation and serving use - so a training example sees exactly the kind
  of input a request will carry (recent distinct products as of a midnight cutoff) and nothing from
  the same day or later: no leakage, not even from the same basket. One call per day, over only the
  customers who buy that day. Beside each history item goes how often the customer had bought it
  before the same cutoff - the purchase count is what makes "own items, most bought first" the
  strongest baseline, and distinct histories alone do not carry it.
* **Vocabularies.** Customers and products seen in training get indices 1..n; index 0 is the
  out-of-vocabulary customer and the history padding. A random ``id_dropout`` share of examples is
  trained with the customer index replaced by 0, so the OOV embedding learns "a customer known only by
  their history" - exactly what a new customer at serving time is. The catalogue (the candidates) is
  every product seen in training, as the evaluation protocol defines it; product features (category,
  price band, days since first seen) come from the ``items`` table, as of the cutoff.
* **log Q.** The sampling probability of an item in a batch is its share of training examples; the
  model stores ``log q`` per item and the loss subtracts it (see ``two_tower``).

Serving: known customers and anyone with a known history item are scored by the model over the
whole catalogue (their own past items included, ranked by the learned repeat bias, never excluded);
an unknown customer with no usable history gets the recency-weighted popularity list of the training
window, the protocol's cold-start fallback. A request carries distinct history items only (the
protocol's shape), so their purchase counts come from a table shipped with the model: the
(customer, product) pairs bought more than once before the cutoff; every other history item counts 1.
Scoring runs through a compiled ``TopKServer`` (one per ``k``), in row chunks padded to powers of
two so the compiled function sees few shapes.

Artifacts in ``<out>/model/``: ``two_tower.keras`` (weights, architecture and the catalogue's feature
tables; no optimizer state), ``model.json`` (small: format, sizes, parameters, cutoff) and
``ids.npz`` (the id <-> index arrays, the popularity list and the repeat-count table - numpy
arrays rather than JSON because a million customer ids are 8 MB of JSON text but a cheap,
pickle-free array file).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ecom_ml.errors import EcomError
from ecom_ml.models import TrainRequest, fetch_dir
from ecom_ml.training.model_dir import resolve_features as resolve_partition
from ecom_ml.training.model_dir import trainer_log, write_model_dir

KIND = "recommender"
#: What the model kind ships (format 2): the two-stage ranker. Format 1 was the two-tower alone.
MODEL_NAME = "two_stage_ranker"
FORMAT_VERSION = 2
TWO_TOWER_NAME = "two_tower"
TWO_TOWER_FORMAT = 1
KERAS_FILE = "two_tower.keras"
META_FILE = "model.json"
IDS_FILE = "ids.npz"
_DAY_US = 86_400 * 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class RecommenderError(EcomError):
    """Bad parameters or unusable features for the recommender."""


# -- parameters ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainParams:
    """Training parameters. ``epochs`` .. ``pooling`` are the two-tower's (used with ``retrieval``);
    ``ranker_*`` and the candidate counts are stage 2's; ``history_len``/``holdout_days`` the split's."""

    epochs: int = 5
    batch_size: int = 1024
    embedding_dim: int = 64
    hidden_dim: int = 256
    #: None: the features' own value (their ``feature_params``), so one setting drives everything.
    history_len: int | None = None
    learning_rate: float = 2e-3
    holdout_days: int | None = None
    temperature: float = 0.25
    id_dropout: float = 0.1
    pooling: str = "attention"
    seed: int = 0
    # -- the ranker (stage 2) and its candidates; see ``ecom_ml.models.ranker``.
    #: Also train the two-tower as a retrieval stage (candidates and score features; the settings above
    #: are its own). Off by default: on the shared Online Retail II year it added nothing measurable to
    #: the ranker (Recall@10 0.318 with it, 0.321 without) and took most of the training time.
    retrieval: bool = False
    ranker_epochs: int = 6
    ranker_hidden: int = 64
    ranker_batch_size: int = 2048
    ranker_learning_rate: float = 2e-3
    max_own: int = 150
    n_ease: int = 60
    n_retrieval: int = 30
    n_popular: int = 20
    ease_l2: float = 500.0
    #: Days of purchases each training window's labels cover. None: the holdout's length (what the
    #: evaluation asks the model to predict), or 7 days when training with no holdout.
    label_days: int | None = None
    n_windows: int = 3

    _FROM_FEATURES: ClassVar[tuple[str, ...]] = ("history_len", "holdout_days", "label_days")
    _LIMITS: ClassVar[dict[str, tuple[int, int]]] = {
        "epochs": (1, 10_000),
        "batch_size": (2, 1_000_000),  # in-batch negatives need at least one other row
        "embedding_dim": (1, 4096),
        "hidden_dim": (1, 16_384),
        "history_len": (1, 1000),
        "holdout_days": (0, 366),
        "seed": (0, 2**32 - 1),
        "ranker_epochs": (1, 1000),
        "ranker_hidden": (1, 4096),
        "ranker_batch_size": (1, 1_000_000),
        "max_own": (1, 100_000),
        "n_ease": (1, 100_000),
        "n_retrieval": (1, 100_000),
        "n_popular": (0, 100_000),
        "label_days": (1, 366),
        "n_windows": (1, 100),
    }

    def __post_init__(self) -> None:
        for name, (low, high) in self._LIMITS.items():
            value = getattr(self, name)
            if value is None and name in self._FROM_FEATURES:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise RecommenderError(
                    f"--{name.replace('_', '-')} {value!r}: must be a whole number from {low} to {high:,}"
                )
        if not (isinstance(self.learning_rate, float | int) and 0 < self.learning_rate < 1):
            raise RecommenderError(f"--learning-rate {self.learning_rate!r}: must be between 0 and 1")
        if not (isinstance(self.temperature, float | int) and 0 < self.temperature <= 10):
            raise RecommenderError(f"--temperature {self.temperature!r}: must be in (0, 10]")
        if not (isinstance(self.id_dropout, float | int) and 0 <= self.id_dropout < 1):
            raise RecommenderError(f"--id-dropout {self.id_dropout!r}: must be in [0, 1)")
        if self.pooling not in ("attention", "mean"):
            raise RecommenderError(f"--pooling {self.pooling!r}: must be 'attention' or 'mean'")
        if not isinstance(self.retrieval, bool):
            raise RecommenderError(f"retrieval {self.retrieval!r}: must be true or false")
        if not (isinstance(self.ranker_learning_rate, float | int) and 0 < self.ranker_learning_rate < 1):
            raise RecommenderError(f"ranker_learning_rate {self.ranker_learning_rate!r}: must be between 0 and 1")
        if isinstance(self.ease_l2, bool) or not (isinstance(self.ease_l2, float | int) and 0 < self.ease_l2 < 1e9):
            raise RecommenderError(f"ease_l2 {self.ease_l2!r}: must be a positive number")

    def ranker(self) -> Any:
        """The ranker's settings (``ecom_ml.models.ranker.RankerParams``) from these."""
        from ecom_ml.models.ranker import RankerParams

        label_days = self.label_days if self.label_days is not None else (self.holdout_days or 7)
        return RankerParams(max_own=self.max_own, n_ease=self.n_ease, ease_l2=float(self.ease_l2),
                            label_days=label_days, n_windows=self.n_windows, hidden=self.ranker_hidden,
                            epochs=self.ranker_epochs, batch_size=self.ranker_batch_size,
                            learning_rate=float(self.ranker_learning_rate), seed=self.seed,
                            n_retrieval=self.n_retrieval, n_popular=self.n_popular, history_len=self.history_len or 20)

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any]) -> TrainParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise RecommenderError(
                f"the recommender takes no parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_features(self, history_len: int, holdout_days: int) -> TrainParams:
        """These parameters with the split settings the features carry filled in where not given."""
        from dataclasses import replace

        return replace(self, history_len=self.history_len if self.history_len is not None else history_len,
                       holdout_days=self.holdout_days if self.holdout_days is not None else holdout_days)


# -- features ------------------------------------------------------------------------------------------

def resolve_features(features: str, day: date | None) -> tuple[str, date]:
    """``(lake root URI, day)`` from ``--features`` (a lake root, or a features partition) and ``--day``."""
    from ecom_ml.features.recommender import DATASET

    return resolve_partition(features, day, DATASET, RecommenderError)


def read_training_features(root: str, day: date) -> dict[str, Any]:
    """The day's stored features; a missing partition is a one-line error naming where we looked."""
    from ecom_ml.features.recommender import read_features

    try:
        return read_features(root, day)
    except FileNotFoundError as exc:
        raise RecommenderError(f"no recommender features for {day} under {root} ({exc})") from None


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _ts_us(table: Any, column: str = "ts") -> np.ndarray:
    import pyarrow as pa

    values = table.column(column).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return values.to_numpy().astype(np.int64, copy=False)


def _int64(table: Any, column: str) -> np.ndarray:
    return table.column(column).to_numpy().astype(np.int64, copy=False)


def age_band(days: np.ndarray) -> np.ndarray:
    """Index 1..AGE_BANDS of ``floor(log2(1 + days on sale))``: new-in products are a signal of their own."""
    from ecom_ml.models.two_tower import AGE_BANDS

    bands = np.floor(np.log2(1.0 + np.maximum(np.asarray(days, dtype=np.float64), 0.0)))
    return 1 + np.minimum(bands, AGE_BANDS - 1).astype(np.int32)


@dataclass
class Vocab:
    """Ids <-> model indices (index 0 = unknown / padding) and the cold-start popularity list."""

    customer_ids: np.ndarray  # sorted int64; customer_ids[i] has index i + 1
    product_ids: np.ndarray  # sorted int64; product_ids[i] has index i + 1
    popular: np.ndarray  # product ids, most popular first
    count_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # sorted pair keys
    count_values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))  # purchases (> 1)

    def pair_keys(self, user_index: np.ndarray, item_index: np.ndarray) -> np.ndarray:
        """One int64 per (customer index, item index) pair."""
        return np.asarray(user_index, dtype=np.int64) * (len(self.product_ids) + 1) + np.asarray(
            item_index, dtype=np.int64
        )

    def history_counts(self, user_index: np.ndarray, history: np.ndarray) -> np.ndarray:
        """Purchase counts ``(n, H)`` of history items (indices) as of training: 1 unless bought more, 0 = padding."""
        query = self.pair_keys(np.asarray(user_index)[:, None], history)
        counts = _lookup(self.count_keys, self.count_values, query, default=1)
        return np.where((history > 0) & (np.asarray(user_index)[:, None] > 0), counts, (history > 0).astype(np.int32))

    @staticmethod
    def _index(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if len(sorted_ids) == 0:
            return np.zeros(ids.shape, dtype=np.int32)
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == ids, pos + 1, 0).astype(np.int32)

    def user_index(self, customer_ids: np.ndarray) -> np.ndarray:
        return self._index(self.customer_ids, customer_ids)

    def item_index(self, product_ids: np.ndarray) -> np.ndarray:
        return self._index(self.product_ids, product_ids)


@dataclass
class TrainingData:
    """Model inputs for ``fit`` plus what the model's catalogue tables and ``return.json`` need."""

    x: dict[str, np.ndarray]
    weight: np.ndarray
    vocab: Vocab
    categories: list[str]
    item_category: np.ndarray
    item_band: np.ndarray
    item_age: np.ndarray
    item_log_q: np.ndarray
    cutoff: datetime
    train_interactions: int
    holdout_interactions: int


def split_train(interactions: Any, day: date, holdout_days: int) -> tuple[Any, datetime, int]:
    """``(train interactions, cutoff, holdout size)`` by the evaluation protocol's ``time_split``."""
    from ecom_ml.features.recommender import day_start

    if holdout_days == 0:
        from ecom_ml.features.recommender import current_purchases

        return current_purchases(interactions), day_start(day + timedelta(days=1)), 0
    from ecom_ml.evaluation.protocol import time_split

    split = time_split(interactions, day, holdout_days=holdout_days)
    return split.train, split.cutoff, split.test.num_rows


def daily_histories(train: Any, vocab: Vocab, history_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Each interaction's history as of 00:00 UTC of its day, and how often each history item was bought.

    Returns ``(history, counts)``, both ``(n, history_len)``: item indices (0 = padding) from
    ``histories_as_of``, and the customer's purchase count of that item before the same cutoff
    (0 for padding). One ``histories_as_of`` call per day, over the customers buying that day only.
    """
    import pyarrow as pa

    from ecom_ml.features.recommender import histories_as_of

    ts = _ts_us(train)
    customers = _int64(train, "customer_id")
    keys = vocab.pair_keys(vocab.user_index(customers), vocab.item_index(_int64(train, "product_id")))
    history = np.zeros((len(ts), history_len), dtype=np.int32)
    counts = np.zeros((len(ts), history_len), dtype=np.int32)
    days = ts // _DAY_US
    order = np.argsort(days, kind="stable")
    bounds = np.flatnonzero(np.r_[True, days[order][1:] != days[order][:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        rows = order[lo:hi]
        boundary = int(days[rows[0]]) * _DAY_US
        prior = np.flatnonzero((ts < boundary) & np.isin(customers, np.unique(customers[rows])))
        if prior.size == 0:
            continue
        cutoff = _EPOCH + timedelta(microseconds=boundary)
        found = histories_as_of(train.take(pa.array(prior)), cutoff, history_len)
        items = vocab.item_index(found.padded(customers[rows], history_len, fill=-1))
        history[rows] = items
        pair_keys, pair_counts = np.unique(keys[prior], return_counts=True)
        counts[rows] = _lookup(
            pair_keys, pair_counts, vocab.pair_keys(vocab.user_index(customers[rows])[:, None], items)
        )
        counts[rows] = np.where(items > 0, counts[rows], 0)
    return history, counts


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, query: np.ndarray, default: int = 0) -> np.ndarray:
    """``values`` at ``query`` keys (any shape) in ``sorted_keys``; ``default`` where absent."""
    if len(sorted_keys) == 0:
        return np.full(query.shape, default, dtype=np.int32)
    pos = np.minimum(np.searchsorted(sorted_keys, query), len(sorted_keys) - 1)
    return np.where(sorted_keys[pos] == query, values[pos], default).astype(np.int32)


def purchase_counts(train: Any, vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """``(pair keys, counts)`` of (customer, product) pairs bought more than once in ``train``.

    Shipped with the model so a request's history items get their purchase counts at serving time
    (the protocol's requests carry distinct products only); once-bought pairs are left out because
    every history item was bought at least once, which is the default.
    """
    keys = vocab.pair_keys(
        vocab.user_index(_int64(train, "customer_id")), vocab.item_index(_int64(train, "product_id"))
    )
    unique, counts = np.unique(keys, return_counts=True)
    repeated = counts > 1
    return unique[repeated], counts[repeated].astype(np.int32)


def resolve_params(features: dict[str, Any], params: TrainParams) -> TrainParams:
    """``params`` with ``history_len``/``holdout_days`` taken from the features where not given."""
    if params.history_len is not None and params.holdout_days is not None:
        return params
    from ecom_ml.features.recommender import FeatureError, feature_params

    try:
        built = feature_params(features)
    except FeatureError as exc:
        raise RecommenderError(f"cannot tell the holdout and history length: {exc}") from None
    return params.with_features(history_len=built.history_len, holdout_days=built.holdout_days)


def prepare(features: dict[str, Any], day: date, params: TrainParams) -> TrainingData:
    """Training examples, vocabularies and catalogue tables from the day's features (see module doc)."""
    params = resolve_params(features, params)
    for name in ("interactions", "items"):
        if name not in features:
            raise RecommenderError(f"the features have no {name!r} table (found: {', '.join(sorted(features))})")
    interactions = features["interactions"]
    missing = [c for c in ("customer_id", "product_id", "ts", "weight") if c not in interactions.column_names]
    if missing:
        raise RecommenderError(f"the interactions table lacks column(s) {', '.join(missing)}")
    train, cutoff, holdout = split_train(interactions, day, params.holdout_days)
    if train.num_rows < 2:
        raise RecommenderError(
            f"only {train.num_rows} interaction(s) before the cutoff {cutoff.isoformat()} "
            f"(day {day}, holdout {params.holdout_days} days): nothing to train on"
        )
    customers = _int64(train, "customer_id")
    products = _int64(train, "product_id")
    weight = train.column("weight").to_numpy().astype(np.float32)
    ts = _ts_us(train)

    # Popularity fallback: recency-weighted purchase counts over the training window.
    product_ids, product_codes = np.unique(products, return_inverse=True)
    mass = np.bincount(product_codes, weights=weight, minlength=len(product_ids))
    popular = product_ids[np.lexsort((product_ids, -mass))]
    vocab = Vocab(np.unique(customers), product_ids, popular)

    # Catalogue tables from the items table (row 0: padding/unknown).
    items = features["items"]
    n_items = len(product_ids)
    item_rows = Vocab._index(_int64(items, "product_id"), product_ids)  # 1-based row in items, 0 if absent
    found = item_rows > 0
    row = np.maximum(item_rows - 1, 0)
    raw_categories = (
        np.asarray(items.column("category").to_pylist(), dtype=object) if items.num_rows else np.array([], dtype=object)
    )
    present = raw_categories[row[found]] if found.any() else np.array([], dtype=object)
    categories = sorted({str(c) for c in present if c is not None})
    category_index = {c: i + 1 for i, c in enumerate(categories)}
    item_category = np.zeros(n_items + 1, dtype=np.int32)
    item_band = np.zeros(n_items + 1, dtype=np.int32)
    item_age = np.zeros(n_items + 1, dtype=np.int32)
    if found.any():
        idx = np.flatnonzero(found) + 1
        item_category[idx] = [category_index.get(str(c), 0) for c in present]
        bands = items.column("price_band").to_numpy().astype(np.int64)[row[found]]
        item_band[idx] = np.where((bands >= 0) & (bands <= 4), bands + 1, 0)
        if "first_seen" in items.column_names:
            first_seen = _ts_us(items, "first_seen")[row[found]]
            item_age[idx] = age_band((_micros(cutoff) - first_seen) / _DAY_US)
    # A product first bought in training but first_seen after the cutoff cannot happen (first_seen is
    # a minimum over the window), but missing items keep index 0 = "unknown" features.

    # log Q: an item's share of the training examples, i.e. of the rows a batch is drawn from.
    examples_per_item = np.bincount(product_codes, minlength=n_items).astype(np.float64)
    item_log_q = np.zeros(n_items + 1, dtype=np.float32)
    item_log_q[1:] = np.log(examples_per_item / examples_per_item.sum())

    vocab.count_keys, vocab.count_values = purchase_counts(train, vocab)
    history, counts = daily_histories(train, vocab, params.history_len)
    user = vocab.user_index(customers)
    rng = np.random.default_rng(params.seed)
    if params.id_dropout > 0:
        # Trained as an unknown customer: OOV index, and history counts unknown (1), as at serving time.
        dropped = rng.random(len(user)) < params.id_dropout
        user = np.where(dropped, 0, user).astype(np.int32)
        counts = np.where(dropped[:, None], np.minimum(counts, 1), counts)
    x = {
        "user": user.astype(np.int32),
        "history": history.astype(np.int32),
        "history_counts": counts.astype(np.int32),
        "item": vocab.item_index(products),
    }
    # Chronological order is irrelevant once shuffled; keep a deterministic one (by time, then ids).
    order = np.lexsort((products, customers, ts))
    x = {k: v[order] for k, v in x.items()}
    return TrainingData(
        x=x,
        weight=weight[order],
        vocab=vocab,
        categories=categories,
        item_category=item_category,
        item_band=item_band,
        item_age=item_age,
        item_log_q=item_log_q,
        cutoff=cutoff,
        train_interactions=train.num_rows,
        holdout_interactions=holdout,
    )


# -- training ------------------------------------------------------------------------------------------


def fit(data: TrainingData, params: TrainParams, log: Any = None) -> tuple[Any, list[float]]:
    """Build and train the model on ``data``; returns the model and the per-epoch losses."""
    import keras

    from ecom_ml.models.two_tower import build_two_tower

    keras.utils.set_random_seed(params.seed)
    model = build_two_tower(
        n_users=len(data.vocab.customer_ids),
        n_items=len(data.vocab.product_ids),
        n_categories=max(len(data.categories), 1),
        embedding_dim=params.embedding_dim,
        hidden_dim=params.hidden_dim,
        history_len=int(data.x["history"].shape[1]),  # what prepare() built, from the features if not given
        temperature=params.temperature,
        pooling=params.pooling,
        learning_rate=params.learning_rate,
    )
    model.set_catalogue(data.item_category, data.item_band, data.item_age, data.item_log_q)

    class _Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if log is not None:
                loss = (logs or {}).get("loss", float("nan"))
                log(f"epoch {epoch + 1}/{params.epochs}: loss {loss:.4f} ({time.perf_counter() - self.started:.1f} s)")

    history = model.fit(
        data.x,
        sample_weight=data.weight,
        batch_size=min(params.batch_size, len(data.weight)),
        epochs=params.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[_Progress()],
    )
    losses = [float(v) for v in history.history.get("loss", [])]
    if not losses or not all(math.isfinite(v) for v in losses):
        raise RecommenderError(f"training diverged (losses {losses}); lower --learning-rate")
    return model, losses


def save_model_dir(model: Any, vocab: Vocab, meta: dict[str, Any], folder: Path) -> None:
    """Write the three artifact files into ``folder``.

    The ``.keras`` file is an uncompiled copy of the model: Keras would otherwise store Adam's two
    moment slots per weight (two thirds of the bytes), which serving never reads and the nightly
    retrain does not resume from.
    """
    from ecom_ml.models.two_tower import TwoTower

    folder.mkdir(parents=True, exist_ok=True)
    serving = TwoTower.from_config(model.get_config())
    serving.set_weights(model.get_weights())
    serving.save(folder / KERAS_FILE)
    np.savez(
        folder / IDS_FILE,
        customer_ids=vocab.customer_ids,
        product_ids=vocab.product_ids,
        popular=vocab.popular,
        count_keys=vocab.count_keys,
        count_values=vocab.count_values,
    )
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _as_purchases(interactions: Any) -> Any:
    """The lines as given, all counted as purchases (``removed_at`` cleared): for data already cut
    to what was a purchase at a cutoff, so a later cancellation does not remove it a second time."""
    import pyarrow as pa

    if "removed_at" not in interactions.column_names:
        return interactions
    for name in ("removed_at", "refunds"):  # refunds: already subtracted from quantity by the cut
        index = interactions.schema.get_field_index(name)
        if index >= 0:
            field = interactions.schema.field(index)
            interactions = interactions.set_column(index, field, pa.nulls(interactions.num_rows, field.type))
    return interactions


def _check_features(features: dict[str, Any]) -> None:
    for name in ("interactions", "items"):
        if name not in features:
            raise RecommenderError(f"the features have no {name!r} table (found: {', '.join(sorted(features))})")
    interactions = features["interactions"]
    missing = [c for c in ("customer_id", "product_id", "ts", "weight", "order_id", "quantity")
               if c not in interactions.column_names]
    if missing:
        raise RecommenderError(f"the interactions table lacks column(s) {', '.join(missing)}")


def train(request: TrainRequest) -> dict[str, Any]:
    """The registry's trainer: features -> two-stage model -> ``<out>/model/``; returns ``return.json``'s body.

    Stage 1 is the two-tower (``prepare`` / ``fit`` below), trained on the interactions before the
    ranker's earliest labelled window so its scores are leak-free features of every window; stage 2
    is ``ecom_ml.models.ranker.LearnedRanker`` over the candidates of the customer's own items, EASE
    and the two-tower. What ships is the ranker with its precomputed candidates (the two-tower's
    scores are among their features), so serving needs no second model.
    """
    from dataclasses import replace

    import pandas as pd

    from ecom_ml.models.ranker import LearnedRanker, RankerError

    params = TrainParams.from_overrides(dict(request.params))
    log = trainer_log(KIND)
    started = time.perf_counter()
    root, day = resolve_features(request.features, request.day)
    features = read_training_features(root, day)
    read_s = time.perf_counter() - started
    params = resolve_params(features, params)
    _check_features(features)

    t = time.perf_counter()
    train_table, cutoff, holdout = split_train(features["interactions"], day, params.holdout_days)
    if train_table.num_rows < 2:
        raise RecommenderError(
            f"only {train_table.num_rows} interaction(s) before the cutoff {cutoff.isoformat()} "
            f"(day {day}, holdout {params.holdout_days} days): nothing to train on"
        )
    items = features["items"]
    product_ids = items.column("product_id").to_numpy()
    prices = pd.Series(items.column("price").to_numpy(), index=product_ids) if items.num_rows else None
    categories = pd.Series(items.column("category").to_pylist(), index=product_ids) if items.num_rows else None
    retrieval: dict[str, Any] = {}

    def two_tower(before: Any, moment: datetime) -> TwoTowerRecommender | None:
        """Stage 1 on the interactions before ``moment``; None (no retrieval stage) when too few."""
        if not params.retrieval:
            return None
        tower_params = replace(params, holdout_days=0)
        try:
            data = prepare({**features, "interactions": _as_purchases(before)},
                           (moment - timedelta(days=1)).date(), tower_params)
        except RecommenderError as exc:
            log(f"two-tower skipped: {exc}")
            retrieval["skipped"] = str(exc)
            return None
        log(f"two-tower: {len(data.weight):,} examples before {moment.isoformat()}")
        tt = time.perf_counter()
        model, losses = fit(data, tower_params, log)
        retrieval.update(trained_until=moment.isoformat(), examples=int(len(data.weight)), losses=losses,
                         parameters=int(model.count_params()), seconds=round(time.perf_counter() - tt, 3))
        return TwoTowerRecommender(model, data.vocab)

    try:
        ranker = LearnedRanker(train_table, cutoff, params.ranker(), prices=prices, retrieval_factory=two_tower,
                               log=log, categories=categories)
    except RankerError as exc:
        raise RecommenderError(f"{exc} (day {day}, holdout {params.holdout_days} days)") from None
    train_s = time.perf_counter() - t

    import keras

    t = time.perf_counter()
    meta = {
        "format": FORMAT_VERSION,
        "kind": KIND,
        "model": MODEL_NAME,
        "n_customers": int(len(ranker._ids)),
        "n_products": int(len(ranker.index)),
        "n_candidates": int(len(ranker._codes)),
        "cutoff": cutoff.isoformat(),
        "features": {"root": root, "day": day.isoformat()},
        "params": params.to_dict(),
        "retrieval": {k: v for k, v in retrieval.items() if k != "losses"},
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
    }
    written = write_model_dir(request.out, ranker.save, meta)
    export_s = time.perf_counter() - t
    losses = ranker.losses
    return {
        "model_uri": written.uri,
        "artifacts": written.artifacts,
        "features": {
            "root": root,
            "day": day.isoformat(),
            "cutoff": cutoff.isoformat(),
            "holdout_days": params.holdout_days,
        },
        "metrics": {
            "final_loss": losses[-1],
            "first_loss": losses[0],
            "loss_per_epoch": losses,
            "train_examples": int(ranker.train_examples),
            "positive_rate": ranker.positive_rate,
            "label_windows": int(ranker.n_windows),
            "train_interactions": int(train_table.num_rows),
            "holdout_interactions": int(holdout),
            "customers": int(len(ranker._ids)),
            "catalogue_items": int(len(ranker.index)),
            "parameters": int(ranker.model.count_params()),
            **({"retrieval_final_loss": retrieval["losses"][-1], "retrieval_examples": retrieval["examples"]}
               if "losses" in retrieval else {}),
        },
        "model_size_bytes": written.size_bytes,
        "seconds": {
            "read": round(read_s, 3),
            "train": round(train_s, 3),
            "retrieval": retrieval.get("seconds", 0.0),
            "export": round(export_s, 3),
        },
        "backend": keras.backend.backend(),
        "params": params.to_dict(),
    }


# -- serving -------------------------------------------------------------------------------------------


class TwoTowerRecommender:
    """A trained two-tower model behind the evaluation protocol's ``Recommender`` interface.

    Requests carry raw ids; the model sees indices. Rows are scored in chunks sized so that one
    chunk's score matrix over the catalogue stays around 64 MB whatever the catalogue size.
    """

    def __init__(self, model: Any, vocab: Vocab, name: str = TWO_TOWER_NAME, meta: dict[str, Any] | None = None) -> None:
        self.model = model
        self.vocab = vocab
        self.name = name
        self.meta = dict(meta or {})
        self.history_len = int(model.history_len)
        self.n_items = int(model.n_items)
        # Rows per compiled call: a power of two, so that one chunk's (rows x catalogue) scores stay
        # around 64 MB; smaller chunks are padded to the next power of two, so the compiled function
        # sees a handful of shapes instead of retracing for every batch size.
        self._rows_per_chunk = 1 << min(10, max(0, ((1 << 24) // (self.n_items + 1)).bit_length() - 1))
        self._servers: dict[int, Any] = {}  # compiled top-k functions by k
        model.catalogue_embeddings()  # precompute the item tower once, not on the first request

    def _server(self, k: int) -> Any:
        from ecom_ml.models.two_tower import TopKServer

        if k not in self._servers:
            self._servers[k] = TopKServer(self.model, k)
        return self._servers[k]

    def _history_matrix(self, histories: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(histories), self.history_len), dtype=np.int32)
        for i, items in enumerate(histories):
            row = self.vocab.item_index(np.asarray(items, dtype=np.int64)[: self.history_len])
            out[i, : len(row)] = row
        return out

    def recommend(self, customer_ids: np.ndarray, histories: list[np.ndarray], k: int) -> np.ndarray:
        """``(n, k)`` product ids, best first; ``-1`` only where the catalogue has fewer than ``k`` items."""
        customer_ids = np.asarray(customer_ids, dtype=np.int64)
        if len(histories) != len(customer_ids):
            raise ValueError(f"{len(customer_ids)} customers but {len(histories)} histories")
        k = int(k)
        out = np.full((len(customer_ids), k), -1, dtype=np.int64)
        if len(customer_ids) == 0 or k <= 0:
            return out
        kk = min(k, self.n_items)
        users = self.vocab.user_index(customer_ids)
        hist = self._history_matrix(histories)
        modelled = (users > 0) | (hist > 0).any(axis=1)
        rows = np.flatnonzero(modelled)
        for lo in range(0, len(rows), self._rows_per_chunk):
            chunk = rows[lo : lo + self._rows_per_chunk]
            size = 1 << (len(chunk) - 1).bit_length()
            user = np.zeros(size, dtype=np.int32)
            history = np.zeros((size, self.history_len), dtype=np.int32)
            user[: len(chunk)], history[: len(chunk)] = users[chunk], hist[chunk]
            counts = self.vocab.history_counts(user, history)
            indices, _ = self._server(kk).top_k(user, history, counts)
            out[chunk, :kk] = self.vocab.product_ids[indices[: len(chunk)] - 1]
        cold = np.flatnonzero(~modelled)
        if len(cold):
            out[cold, :kk] = self.vocab.popular[:kk]
        return out

    def recommend_one(self, customer_id: int, history: np.ndarray | list[int], k: int) -> np.ndarray:
        """One request (the serving path's latency): ``(k,)`` product ids."""
        return self.recommend(np.array([customer_id], dtype=np.int64), [np.asarray(history, dtype=np.int64)], k)[0]

    def catalogue_scores(self, customer_ids: np.ndarray, history: np.ndarray, counts: np.ndarray,
                         product_ids: np.ndarray) -> np.ndarray:
        """The model's scores of ``product_ids`` for each row, NaN for a product outside its catalogue:
        the retrieval stage's features for the ranker (``ecom_ml.models.ranker.Retrieval``).

        ``history``: ``(n, H)`` product ids, most recent first, ``-1``-padded; ``counts`` aligned (their
        purchase counts as of the ranker's reference time, so a stale model still sees today's counts).
        """
        from keras import ops

        customer_ids = np.asarray(customer_ids, dtype=np.int64)
        n = len(customer_ids)
        out = np.full((n, len(product_ids)), np.nan, dtype=np.float32)
        cols = self.vocab.item_index(np.asarray(product_ids, dtype=np.int64))
        known = cols > 0
        if n == 0 or not known.any():
            return out
        width = min(self.history_len, history.shape[1])
        hist = np.zeros((n, self.history_len), dtype=np.int32)
        cnt = np.zeros((n, self.history_len), dtype=np.int32)
        hist[:, :width] = self.vocab.item_index(np.asarray(history)[:, :width])
        cnt[:, :width] = np.where(hist[:, :width] > 0, np.asarray(counts)[:, :width], 0)
        users = self.vocab.user_index(customer_ids)
        for lo in range(0, n, self._rows_per_chunk):
            hi = min(n, lo + self._rows_per_chunk)
            scores = ops.convert_to_numpy(self.model.serve_scores(users[lo:hi], hist[lo:hi], cnt[lo:hi]))
            out[lo:hi, known] = scores[:, cols[known]]
        return out


def load_recommender(model_dir: str) -> Any:
    """The recommender model kind's loader: ``<out>/model/`` (a path or URI) written by ``train``, as a
    ``ecom_ml.evaluation.protocol.Recommender`` (``ecom_ml.models.ranker.LearnedRanker``)."""
    from ecom_ml.models.ranker import LearnedRanker

    folder = fetch_dir(model_dir)
    meta_path = folder / META_FILE
    if not meta_path.exists():
        raise RecommenderError(f"{model_dir} has no {META_FILE}: not a recommender model folder")
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") != KIND or meta.get("format") != FORMAT_VERSION:
        raise RecommenderError(
            f"{model_dir} holds a {meta.get('kind')!r} model of format {meta.get('format')!r}, "
            f"not a {KIND!r} model of format {FORMAT_VERSION}"
        )
    ranker = LearnedRanker.load(folder, name=meta.get("model", MODEL_NAME))
    ranker.meta = meta
    return ranker


def load_two_tower(model_dir: str) -> TwoTowerRecommender:
    """Load a two-tower folder (format 1: ``save_model_dir``), the retrieval stage on its own."""
    import keras

    from ecom_ml.models import two_tower  # noqa: F401  (registers the class for load_model)

    folder = fetch_dir(model_dir)
    meta_path = folder / META_FILE
    if not meta_path.exists():
        raise RecommenderError(f"{model_dir} has no {META_FILE}: not a recommender model folder")
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") != KIND or meta.get("format") != TWO_TOWER_FORMAT:
        raise RecommenderError(
            f"{model_dir} holds a {meta.get('kind')!r} model of format {meta.get('format')!r}, "
            f"not a {KIND!r} two-tower of format {TWO_TOWER_FORMAT}"
        )
    model = keras.saving.load_model(folder / meta["files"]["keras"], compile=False)
    with np.load(folder / meta["files"]["ids"], allow_pickle=False) as ids:
        vocab = Vocab(
            ids["customer_ids"].astype(np.int64),
            ids["product_ids"].astype(np.int64),
            ids["popular"].astype(np.int64),
            ids["count_keys"].astype(np.int64),
            ids["count_values"].astype(np.int32),
        )
    return TwoTowerRecommender(model, vocab, name=meta.get("model", TWO_TOWER_NAME), meta=meta)


def quiet_tensorflow() -> None:
    """TensorFlow's C++ start-up chatter is noise in task logs; the caller's setting wins."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
