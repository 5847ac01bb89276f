"""The baselines every model is reported beside: design.md's three, and the classical ones a reviewer asks for.

Each is built from a training interactions table (``customer_id``, ``product_id``, ``ts``) alone and
ranks only products seen there (the protocol's catalogue). All three fall back to the same
popularity list, so a new customer gets the same cold-start answer from each, and a gap between them
is what their personal part is worth.

* ``PopularityBaseline``: most-bought products of the last ``recent_days`` before the training data
  ends (interactions = order lines), ties and older products ordered by all-time training counts.
* ``CoPurchaseBaseline``: item-to-item kNN. Cosine similarity of products' customer sets (binary
  customer x product matrix ``X``: ``S = X'X / sqrt(n_i n_j)``, no self-similarity), each product
  keeping its ``k_neighbours`` most similar; a customer's scores are the similarities summed over
  their history. Customer sets rather than baskets: in a gift shop the same customer's next order,
  not the same basket, is what we predict.
* ``RepeatBaseline``: the customer's own past products, most often bought first (count of purchase
  lines; ties: bought more recently first), or, with ``half_life_days``, by recency-weighted count.
  Products in the request's history but not in training (a customer unseen in training, or a
  purchase after it) come next, most recent first; then popularity. In retail this is the baseline to
  beat (design.md: Recall@10 0.287 against 0.135 for popularity on Online Retail II).
* ``EaseBaseline``: EASE item-item weights in closed form (``ecom_ml.evaluation.ease``) over the
  customer's binary purchase row (training purchases plus the request's history), restricted to the
  ``max_items`` most-bought products so the dense inverse stays affordable.
* ``RepeatThenEaseBaseline``: the repeat baseline's own items first, then EASE's ranking of the rest,
  then popularity (design.md: Recall@10 0.290 / NDCG@10 0.298 on Online Retail II).
* ``DecayedFrequencyEaseBaseline``: each of the customer's own products scored by time-decayed purchase
  frequency (one count per order, weight ``0.5 ** (age_days / half_life_days)`` at the reference time,
  divided by the customer's maximum), blended ``weight`` / ``1 - weight`` with EASE scores divided by the
  customer's maximum absolute EASE score; popularity for new customers (design.md: 0.309 / 0.318).
  Own products of a customer known only from the request's history (serving after training) get
  EASE's score alone: their purchase times are not in the history.

The tuned ones take their hyper-parameters as arguments; choosing them on a validation split before
the holdout is ``ecom_ml.evaluation.tuning``'s job (``all_baselines``). Every baseline exposes its
settings as ``params``, which the evaluation stores beside its figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from ecom_ml.evaluation.ease import DEFAULT_MAX_ITEMS, check_max_items, ease_weights, modelled_items
from ecom_ml.evaluation.protocol import EvaluationError
from ecom_ml.evaluation.ranking import ItemIndex, dense_top_k, fill, pad, prune_rows, sparse_top_k
from ecom_ml.features.recommender import Histories, recency_weight, to_micros

#: Rows of the (customers x catalogue) score matrix built at once by the co-purchase baseline.
_SCORE_BATCH = 4096
#: The same for the dense EASE scores (8 bytes x catalogue per row).
_DENSE_BATCH = 1024


def _columns(train: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """customer ids, product ids, epoch-microsecond times of the training interactions."""
    ts = train.column("ts").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return (
        train.column("customer_id").to_numpy().astype(np.int64, copy=False),
        train.column("product_id").to_numpy().astype(np.int64, copy=False),
        ts.to_numpy().astype(np.int64, copy=False),
    )


def _as_of(ts: np.ndarray, as_of: datetime | None) -> int:
    """The reference time in microseconds: given, or just after the last training interaction."""
    if as_of is not None:
        return to_micros(as_of)
    return int(ts.max()) + 1 if len(ts) else 0


def popularity_order(train: pa.Table, recent_days: int = 30, as_of: datetime | None = None) -> np.ndarray:
    """Training product ids, most bought in the last ``recent_days`` first; ties by all-time count, then id."""
    _, products, ts = _columns(train)
    index = ItemIndex(products)
    codes = index.codes(products)
    recent = ts >= _as_of(ts, as_of) - recent_days * 86_400_000_000
    recent_counts = np.bincount(codes[recent], minlength=len(index))
    all_counts = np.bincount(codes, minlength=len(index))
    return index.ids[np.lexsort((index.ids, -all_counts, -recent_counts))]


class _Baseline:
    """Shared by the baselines: the catalogue index and the popularity fallback (as codes)."""

    name = "baseline"

    def __init__(self, train: pa.Table, recent_days: int = 30, as_of: datetime | None = None) -> None:
        self.index = ItemIndex(train.column("product_id").to_numpy())
        self.popular = self.index.codes(popularity_order(train, recent_days, as_of))
        self.params: dict = {"recent_days": recent_days}

    def _answer(self, chosen: np.ndarray, k: int) -> np.ndarray:
        """Own choices (codes, left-aligned) topped up with popularity, as product ids."""
        return self.index.decode(fill(chosen, self.popular, k))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, catalogue={len(self.index)})"


class PopularityBaseline(_Baseline):
    """The same most-popular list for everyone (the cold-start answer of every baseline)."""

    def __init__(self, train: pa.Table, recent_days: int = 30, as_of: datetime | None = None) -> None:
        super().__init__(train, recent_days, as_of)
        self.name = f"popularity_{recent_days}d"

    def recommend(self, customer_ids: np.ndarray, histories: list[np.ndarray], k: int) -> np.ndarray:
        return self._answer(np.full((len(customer_ids), 0), -1, dtype=np.int64), k)


class CoPurchaseBaseline(_Baseline):
    """Item-to-item cosine kNN over customer x product co-occurrence, summed over the history."""

    def __init__(
        self, train: pa.Table, k_neighbours: int = 20, recent_days: int = 30, as_of: datetime | None = None
    ) -> None:
        super().__init__(train, recent_days, as_of)
        self.name = f"copurchase_knn{k_neighbours}"
        self.params["k_neighbours"] = k_neighbours
        customers, products, _ = _columns(train)
        users, rows = np.unique(customers, return_inverse=True)
        bought = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float64), (rows, self.index.codes(products))),
            shape=(len(users), len(self.index)),
        )
        bought.data[:] = 1.0  # duplicates were summed: a customer either bought a product or not
        co = (bought.T @ bought).tocsr()
        norms = np.sqrt(co.diagonal())
        co.setdiag(0.0)
        co.eliminate_zeros()
        inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        cosine = sp.diags(inverse) @ co @ sp.diags(inverse)
        self.similar = prune_rows(cosine, k_neighbours)  # row i: product i's neighbours

    def recommend(self, customer_ids: np.ndarray, histories: list[np.ndarray], k: int) -> np.ndarray:
        parts = []
        for start in range(0, len(histories), _SCORE_BATCH):
            codes = self.index.codes(pad(histories[start : start + _SCORE_BATCH]))
            rows, cols = np.nonzero(codes >= 0)
            own = sp.csr_matrix(
                (np.ones(len(rows)), (rows, codes[rows, cols])), shape=(codes.shape[0], len(self.index))
            )
            own.data[:] = 1.0
            parts.append(self._answer(sparse_top_k(own @ self.similar, k), k))
        return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)


class RepeatBaseline(_Baseline):
    """The customer's own past products first (see module doc), then popularity."""

    def __init__(
        self,
        train: pa.Table,
        half_life_days: float | None = None,
        recent_days: int = 30,
        as_of: datetime | None = None,
    ) -> None:
        super().__init__(train, recent_days, as_of)
        self.name = "repeat" if half_life_days is None else f"repeat_hl{half_life_days:g}d"
        self.params["half_life_days"] = half_life_days
        customers, products, ts = _columns(train)
        if half_life_days is None:
            weight = np.ones(len(ts))
        else:
            weight = recency_weight(ts, _as_of(ts, as_of), half_life_days).astype(np.float64)
        # One row per (customer, product): score and last purchase, then ranked within the customer.
        pair_order = np.lexsort((products, customers))
        c, p, t, w = customers[pair_order], products[pair_order], ts[pair_order], weight[pair_order]
        first = np.r_[True, (c[1:] != c[:-1]) | (p[1:] != p[:-1])] if len(c) else np.zeros(0, dtype=bool)
        starts = np.flatnonzero(first)
        score = np.add.reduceat(w, starts) if len(starts) else np.zeros(0)
        last = np.maximum.reduceat(t, starts) if len(starts) else np.zeros(0, dtype=np.int64)
        c, p = c[starts], p[starts]
        ranked = np.lexsort((p, -last, -score, c))
        customer_ids, first_rows = np.unique(c[ranked], return_index=True)
        # Ragged per-customer lists of product codes, best first (the same container as histories).
        self.own = Histories(customer_ids, np.r_[first_rows, len(ranked)], self.index.codes(p[ranked]))

    def recommend(self, customer_ids: np.ndarray, histories: list[np.ndarray], k: int) -> np.ndarray:
        own = self.own.padded(customer_ids, k)
        recent = self.index.codes(pad(histories, k))
        return self._answer(np.concatenate([own, recent], axis=1), k)


class _CustomerRows:
    """One sparse (customers x catalogue) row per training customer, looked up by customer id."""

    def __init__(self, customer_ids: np.ndarray, matrix: sp.csr_matrix) -> None:
        self.customer_ids = customer_ids  # sorted, aligned with the matrix rows
        self.matrix = matrix.tocsr()

    @classmethod
    def bought(cls, customers: np.ndarray, codes: np.ndarray, n_items: int) -> _CustomerRows:
        """Binary rows: did the customer buy the product (any number of times)?"""
        customer_ids, rows = np.unique(customers, return_inverse=True)
        matrix = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float64), (rows, codes)), shape=(len(customer_ids), n_items)
        )
        matrix.data[:] = 1.0
        return cls(customer_ids, matrix)

    def rows(self, customer_ids: np.ndarray) -> sp.csr_matrix:
        """Rows for ``customer_ids`` (an empty row for a customer unseen in training)."""
        customer_ids = np.asarray(customer_ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.customer_ids, customer_ids), max(len(self.customer_ids) - 1, 0))
        known = (self.customer_ids[pos] == customer_ids) if len(self.customer_ids) else np.zeros(len(customer_ids), bool)
        pick = sp.csr_matrix(
            (np.ones(int(known.sum())), (np.flatnonzero(known), pos[known])),
            shape=(len(customer_ids), len(self.customer_ids)),
        )
        return (pick @ self.matrix).tocsr()


class EaseBaseline(_Baseline):
    """EASE scores of the customer's purchase row (see module doc), then popularity."""

    def __init__(
        self,
        train: pa.Table,
        l2: float = 200.0,
        max_items: int = DEFAULT_MAX_ITEMS,
        recent_days: int = 30,
        as_of: datetime | None = None,
    ) -> None:
        super().__init__(train, recent_days, as_of)
        self.name = "ease"
        max_items = check_max_items(max_items)
        customers, products, _ = _columns(train)
        codes = self.index.codes(products)
        self.bought = _CustomerRows.bought(customers, codes, len(self.index))
        # Popularity for the item cap = customers who bought the product (EASE's Gram diagonal).
        self.items = modelled_items(np.asarray(self.bought.matrix.sum(axis=0)).ravel(), max_items)
        self.weights = ease_weights(self.bought.matrix[:, self.items].tocsr(), l2)
        self.params.update(l2=float(l2), max_items=max_items, modelled_items=len(self.items),
                           catalogue=len(self.index))

    def scores(self, customer_ids: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """``(n, catalogue)`` EASE scores; ``-inf`` for unmodelled products and for customers with no input."""
        own = self.bought.rows(customer_ids)
        codes = self.index.codes(pad(list(histories)))
        rows, cols = np.nonzero(codes >= 0)
        recent = sp.csr_matrix((np.ones(len(rows)), (rows, codes[rows, cols])), shape=own.shape)
        bought = (own + recent).tocsr()
        bought.data[:] = 1.0
        subset = bought[:, self.items]
        out = np.full(bought.shape, -np.inf)
        has_input = np.diff(subset.indptr) > 0
        out[np.ix_(has_input, self.items)] = (subset[has_input] @ self.weights)
        return out

    def recommend(self, customer_ids: np.ndarray, histories: list[np.ndarray], k: int) -> np.ndarray:
        parts = []
        for start in range(0, len(customer_ids), _DENSE_BATCH):
            scores = self.scores(customer_ids[start : start + _DENSE_BATCH], histories[start : start + _DENSE_BATCH])
            parts.append(self._answer(dense_top_k(scores, k), k))
        return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)


def _same_catalogue(*baselines: _Baseline) -> None:
    first = baselines[0].index.ids
    for other in baselines[1:]:
        if not np.array_equal(first, other.index.ids):
            raise EvaluationError(
                f"{type(baselines[0]).__name__} and {type(other).__name__} were built from different training "
                "data (their catalogues differ); build both from the same split"
            )


class RepeatThenEaseBaseline:
    """The customer's own products (the repeat baseline's order), then EASE's ranking, then popularity."""

    name = "repeat_then_ease"

    def __init__(self, repeat: RepeatBaseline, ease: EaseBaseline) -> None:
        _same_catalogue(repeat, ease)
        self.repeat, self.ease = repeat, ease
        self.params = {**ease.params, "repeat_half_life_days": repeat.params["half_life_days"]}

    def recommend(self, customer_ids: np.ndarray, histories: list[np.ndarray], k: int) -> np.ndarray:
        parts = []
        for start in range(0, len(customer_ids), _DENSE_BATCH):
            ids, hist = customer_ids[start : start + _DENSE_BATCH], histories[start : start + _DENSE_BATCH]
            own = self.repeat.own.padded(ids, k)
            recent = self.ease.index.codes(pad(hist, k))
            # k EASE items suffice: at most k of them can already be among the own items.
            extra = dense_top_k(self.ease.scores(ids, hist), k)
            parts.append(self.ease._answer(np.concatenate([own, recent, extra], axis=1), k))
        return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(params={self.params})"


def check_blend(half_life_days: float, weight: float) -> tuple[float, float]:
    """The blend's settings as floats, or one line saying which is out of range."""
    for name, value in (("half_life_days", half_life_days), ("weight", weight)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise EvaluationError(f"decayed-frequency blend {name} must be a number, got {value!r}")
    if half_life_days <= 0:
        raise EvaluationError(f"decayed-frequency blend half_life_days must be > 0, got {half_life_days!r}")
    if not 0 <= weight <= 1:
        raise EvaluationError(f"decayed-frequency blend weight must be in [0, 1], got {weight!r}")
    return float(half_life_days), float(weight)


class DecayedFrequencyEaseBaseline:
    """Time-decayed own-item frequency blended with normalised EASE scores (see module doc)."""

    name = "decayed_frequency_ease"

    def __init__(
        self,
        train: pa.Table,
        ease: EaseBaseline,
        half_life_days: float = 365.0,
        weight: float = 0.7,
        as_of: datetime | None = None,
    ) -> None:
        self.half_life_days, self.weight = check_blend(half_life_days, weight)
        self.ease = ease
        customers, products, ts = _columns(train)
        if not np.array_equal(ItemIndex(products).ids, ease.index.ids):
            raise EvaluationError("DecayedFrequencyEaseBaseline and its EaseBaseline were built from different training data")
        orders = train.column("order_id").to_numpy().astype(np.int64, copy=False)
        # One count per order: the lines of one order (same product twice) are one purchase.
        keys = np.stack([customers, products, orders], axis=1)
        _, first = np.unique(keys, axis=0, return_index=True)
        c, p, t = customers[first], ease.index.codes(products[first]), ts[first]
        decay = recency_weight(t, _as_of(ts, as_of), self.half_life_days).astype(np.float64)
        users, rows = np.unique(c, return_inverse=True)
        freq = sp.csr_matrix((decay, (rows, p)), shape=(len(users), len(ease.index)))  # duplicates summed
        row_max = np.asarray(freq.max(axis=1).todense()).ravel()
        freq = sp.diags(np.divide(1.0, row_max, out=np.zeros_like(row_max), where=row_max > 0)) @ freq
        self.frequency = _CustomerRows(users, freq)
        self.params = {**ease.params, "half_life_days": self.half_life_days, "weight": self.weight}

    def rank(
        self, customer_ids: np.ndarray, histories: Sequence[np.ndarray], k: int, weights: Sequence[float]
    ) -> list[np.ndarray]:
        """Top-``k`` product ids for each blend weight in ``weights`` (EASE scored once for all of them)."""
        for w in weights:
            check_blend(self.half_life_days, w)
        parts: list[list[np.ndarray]] = [[] for _ in weights]
        for start in range(0, len(customer_ids), _DENSE_BATCH):
            ids, hist = customer_ids[start : start + _DENSE_BATCH], histories[start : start + _DENSE_BATCH]
            ease = self.ease.scores(ids, hist)
            finite = np.isfinite(ease)
            scale = np.max(np.abs(np.where(finite, ease, 0.0)), axis=1, keepdims=True)
            ease_norm = np.divide(np.where(finite, ease, 0.0), scale, out=np.zeros_like(ease), where=scale > 0)
            freq = self.frequency.rows(ids).toarray()
            candidate = finite | (freq > 0)
            for i, w in enumerate(weights):
                blended = np.where(candidate, w * freq + (1.0 - w) * ease_norm, -np.inf)
                parts[i].append(self.ease._answer(dense_top_k(blended, k), k))
        empty = np.zeros((0, k), dtype=np.int64)
        return [np.concatenate(p) if p else empty for p in parts]

    def recommend(self, customer_ids: np.ndarray, histories: list[np.ndarray], k: int) -> np.ndarray:
        return self.rank(customer_ids, histories, k, [self.weight])[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(params={self.params})"
