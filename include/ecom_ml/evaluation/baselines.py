"""The baselines every model is reported beside (design.md): popularity, co-purchase, repeat purchase.

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
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from ecom_ml.evaluation.protocol import Recommender
from ecom_ml.evaluation.ranking import ItemIndex, fill, pad, prune_rows, sparse_top_k
from ecom_ml.features.recommender import Histories, recency_weight, to_micros

#: Rows of the (customers x catalogue) score matrix built at once by the co-purchase baseline.
_SCORE_BATCH = 4096


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


def all_baselines(train: pa.Table, as_of: datetime | None = None) -> list[Recommender]:
    """The three design.md baselines with their default settings, built from ``train``."""
    return [
        PopularityBaseline(train, as_of=as_of),
        CoPurchaseBaseline(train, as_of=as_of),
        RepeatBaseline(train, as_of=as_of),
    ]
