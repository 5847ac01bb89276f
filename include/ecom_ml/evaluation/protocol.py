"""The evaluation protocol every recommender (candidate, champion, baseline) goes through.

design.md, "Evaluation, done honestly", implemented once:

* **Time split.** Train on interactions strictly before the cutoff (00:00 UTC of the first holdout
  day), test on the holdout days. Never a random split: a random split lets the model see a
  customer's next week while predicting it.
* **Who is scored.** Every customer with a test purchase. A new customer (no training interaction)
  is scored from an empty history, i.e. by the recommender's cold-start fallback, and counts in the
  average; dropping them would flatter models that cannot serve them.
* **Inputs.** Histories as of the cutoff from ``ecom_ml.features.recommender.histories_as_of``, the
  very function serving uses, so evaluation sees what production sees.
* **Candidates.** Every product seen in training: recommenders rank the full catalogue (no sampled
  negatives); anything they return outside it is counted as a miss and reported
  (``out_of_catalogue``). A test purchase of a product first sold in the holdout stays relevant: no
  recommender can hit it, which is the honest cost of new products.
* **Metrics.** ``ecom_ml.evaluation.metrics`` (Recall@K, NDCG@K), averaged over customers.
* **Slices.** ``new`` / ``returning`` customers (returning = has a training interaction), and
  ``head_items`` / ``tail_items``: head = the fewest most-bought training products that together
  hold ``HEAD_SHARE`` (50%) of training interactions (ties: lower product id); everything else,
  including products unseen in training, is tail. An item slice restricts both the relevant set and
  the hits to that slice's products and averages over the customers with at least one relevant
  product in it (its ``n_customers``); it answers "does the model only ever find the bestsellers?".
* **Repeat and explore** (Li et al., "A Next Basket Recommendation Reality Check", TOIS 2023): the
  same item-slice arithmetic with the customer's own items: ``repeat_items`` = relevant products the
  customer bought before the cutoff, ``explore_items`` = the ones new to them (all of a new
  customer's). Their Recall@K is also a headline metric (``recall_repeat@K``, ``recall_explore@K``):
  a model can beat the repeat baseline overall while finding nothing new, or the reverse, and the
  overall average hides which.
* **Per-customer values.** Every overall metric is also kept per test customer (``per_unit`` in the
  JSON, aligned with the sorted test customers and fingerprinted by their ``digest``), so the gate can
  put a paired bootstrap confidence interval on a difference between two recommenders scored on the
  same holdout (``ecom_ml.evaluation.bootstrap``).
"""

from __future__ import annotations

import hashlib
import math
import time as clock
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from datetime import date, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ecom_ml.errors import EcomError
from ecom_ml.evaluation.metrics import hit_matrix, mean_metrics, per_row_metrics
from ecom_ml.features.recommender import current_purchases, day_start, histories_as_of, purchases_as_of

#: Share of training interactions the head items hold together.
HEAD_SHARE = 0.5
#: Customers per ``recommend`` call during evaluation: large enough to vectorise, small enough for memory.
BATCH_SIZE = 2048

_TS = pa.timestamp("us", tz="UTC")


class EvaluationError(EcomError):
    """The split or a recommender's answer cannot be evaluated (empty holdout, wrong shape, ...)."""


@runtime_checkable
class Recommender(Protocol):
    """Anything that ranks products for a batch of customers.

    ``recommend`` gets aligned customer ids and their histories (product ids, most recent first, as
    of the cutoff / serving time; empty for a new customer) and returns an ``(n, k)`` int64 array of
    product ids, best first. It must answer for every customer, including ones it has never seen
    (from the history, or a cold-start fallback); ``-1`` marks "no product" and simply scores nothing.
    """

    name: str

    def recommend(self, customer_ids: np.ndarray, histories: list[np.ndarray], k: int) -> np.ndarray: ...


# -- the split --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Interactions before ``cutoff`` (train) and in ``[cutoff, end)`` (test)."""

    train: pa.Table
    test: pa.Table
    cutoff: datetime
    end: datetime

    @cached_property
    def catalogue(self) -> np.ndarray:
        """Sorted product ids seen in training: the candidates every recommender ranks."""
        return np.unique(self.train.column("product_id").to_numpy())


def time_split(interactions: pa.Table, end_day: date, holdout_days: int = 7) -> Split:
    """Hold out the ``holdout_days`` days ending with ``end_day`` (inclusive, UTC days); train = all before,
    as of the cutoff where the interactions say when an order was cancelled (``removed_at``)."""
    if holdout_days < 1:
        raise EvaluationError(f"holdout_days must be >= 1, got {holdout_days}")
    cutoff = day_start(end_day - timedelta(days=holdout_days - 1))
    end = day_start(end_day + timedelta(days=1))
    ts = interactions.column("ts").cast(_TS)
    train = interactions.filter(pc.less(ts, pa.scalar(cutoff, _TS)))
    test = interactions.filter(pc.and_(pc.greater_equal(ts, pa.scalar(cutoff, _TS)), pc.less(ts, pa.scalar(end, _TS))))
    if "removed_at" in interactions.column_names:
        # Training sees each order as it stood at the cutoff (a later cancellation is the future);
        # the holdout is judged by today's state (a cancelled order was not a purchase).
        train, test = purchases_as_of(train, cutoff), current_purchases(test)
    return Split(train=train, test=test, cutoff=cutoff, end=end)


def head_items(train: pa.Table, share: float = HEAD_SHARE) -> np.ndarray:
    """Sorted ids of the most-bought training products that together hold ``share`` of interactions."""
    ids, counts = np.unique(train.column("product_id").to_numpy(), return_counts=True)
    if len(ids) == 0:
        return ids
    order = np.lexsort((ids, -counts))
    cumulative = np.cumsum(counts[order])
    n_head = int(np.searchsorted(cumulative, share * cumulative[-1], side="left")) + 1
    return np.sort(ids[order[:n_head]])


# -- the holdout, prepared once per split ---------------------------------------------------------


@dataclass(frozen=True)
class Holdout:
    """Everything about a split that does not depend on the recommender, computed once for all of them."""

    customer_ids: np.ndarray  # sorted test customers
    histories: list[np.ndarray]  # aligned, as of the cutoff; empty for new customers
    returning: np.ndarray  # bool, aligned: has a training interaction
    relevant_rows: np.ndarray  # (customer row, product) pairs, distinct
    relevant_items: np.ndarray
    repeat_relevant: np.ndarray  # aligned with the pairs: the customer bought the product before the cutoff
    n_relevant: np.ndarray  # aligned
    catalogue: np.ndarray  # sorted training product ids
    head: np.ndarray  # sorted head product ids
    cutoff: datetime
    end: datetime
    history_len: int


def prepare_holdout(split: Split, history_len: int = 20) -> Holdout:
    """Test customers, their relevant sets and as-of-cutoff histories, and the item slices."""
    customers = split.test.column("customer_id").to_numpy()
    products = split.test.column("product_id").to_numpy()
    if len(customers) == 0:
        raise EvaluationError(
            f"no test interactions in [{split.cutoff.isoformat()}, {split.end.isoformat()}): nothing to evaluate"
        )
    pairs = np.unique(np.stack([customers, products], axis=1), axis=0)
    customer_ids, rows, n_relevant = np.unique(pairs[:, 0], return_inverse=True, return_counts=True)
    histories = histories_as_of(split.train, split.cutoff, history_len)
    train_customers = split.train.column("customer_id").to_numpy()
    known = np.unique(train_customers)
    return Holdout(
        customer_ids=customer_ids,
        histories=histories.lookup(customer_ids),
        returning=np.isin(customer_ids, known),
        relevant_rows=rows,
        relevant_items=pairs[:, 1],
        repeat_relevant=_bought_before(pairs, train_customers, split.train.column("product_id").to_numpy()),
        n_relevant=n_relevant,
        catalogue=split.catalogue,
        head=head_items(split.train),
        cutoff=split.cutoff,
        end=split.end,
        history_len=history_len,
    )


def _bought_before(pairs: np.ndarray, customers: np.ndarray, products: np.ndarray) -> np.ndarray:
    """Per (customer, product) row of ``pairs``: does the training data have that pair?"""
    if len(customers) == 0:
        return np.zeros(len(pairs), dtype=bool)
    # Dense codes keep the combined key small whatever the id ranges are.
    c_vocab, c_codes = np.unique(np.concatenate([pairs[:, 0], customers]), return_inverse=True)
    p_vocab, p_codes = np.unique(np.concatenate([pairs[:, 1], products]), return_inverse=True)
    keys = c_codes.astype(np.int64) * len(p_vocab) + p_codes
    return np.isin(keys[: len(pairs)], keys[len(pairs) :])


def units_digest(customer_ids: np.ndarray) -> str:
    """A fingerprint of the test customers: per-customer values pair up only under the same digest."""
    return hashlib.sha256(np.ascontiguousarray(customer_ids, dtype=np.int64).tobytes()).hexdigest()[:16]


# -- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalResult:
    """One recommender's figures on one split; ``to_dict()`` is the JSON the gate and reports store."""

    recommender: str
    metrics: dict[str, float]  # recall@K, ndcg@K
    slices: dict[str, dict[str, float | int]]  # new, returning, head_items, tail_items, repeat_items, explore_items
    n_customers: int
    n_catalogue: int
    n_head_items: int
    out_of_catalogue: int  # recommended ids outside the training catalogue (scored as misses)
    cutoff: datetime
    end: datetime
    ks: tuple[int, ...]
    history_len: int
    seconds: float  # wall time of the recommender's scoring
    #: Overall metrics per test customer (aligned with the sorted test customers), for paired bootstraps.
    per_customer: dict[str, np.ndarray] = field(default_factory=dict)
    units_digest: str = ""
    #: The recommender's settings (a tuned baseline's chosen hyper-parameters and how they were chosen).
    params: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(
        default_factory=lambda: {"head_share": HEAD_SHARE, "relevant": "distinct test purchases"}
    )

    def __getitem__(self, metric: str) -> float:
        return self.metrics[metric]

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommender": self.recommender,
            **{name: _json_number(value) for name, value in self.metrics.items()},
            "n_customers": self.n_customers,
            "n_catalogue": self.n_catalogue,
            "n_head_items": self.n_head_items,
            "out_of_catalogue": self.out_of_catalogue,
            "slices": {
                name: {key: _json_number(value) for key, value in values.items()}
                for name, values in self.slices.items()
            },
            "cutoff": self.cutoff.isoformat(),
            "test_end": self.end.isoformat(),
            "ks": list(self.ks),
            "history_len": self.history_len,
            "seconds": round(self.seconds, 3),
            "params": dict(self.params),
            "protocol": dict(self.protocol),
            "per_unit": {
                "unit": "customer",
                "digest": self.units_digest,
                "values": {
                    name: [_json_number(round(float(v), 6)) for v in values]
                    for name, values in self.per_customer.items()
                },
            },
        }


def _json_number(value: float | int) -> float | int | None:
    """NaN (a slice nobody falls into) is not JSON: store null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# -- scoring and evaluating -------------------------------------------------------------------------


def recommend_all(
    recommender: Recommender,
    customer_ids: np.ndarray,
    histories: Sequence[np.ndarray],
    k: int,
    batch_size: int = BATCH_SIZE,
) -> np.ndarray:
    """``(n, k)`` recommendations in batches, checked for shape."""
    parts = []
    for start in range(0, len(customer_ids), batch_size):
        ids = customer_ids[start : start + batch_size]
        answer = np.asarray(recommender.recommend(ids, list(histories[start : start + batch_size]), k))
        if answer.shape != (len(ids), k) or not np.issubdtype(answer.dtype, np.integer):
            raise EvaluationError(
                f"recommender {recommender.name!r} returned {answer.dtype} {answer.shape} for {len(ids)} customers "
                f"at k={k}; expected integer product ids of shape ({len(ids)}, {k})"
            )
        parts.append(answer.astype(np.int64, copy=False))
    return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)


def evaluate(
    recommender: Recommender,
    split: Split,
    ks: tuple[int, ...] = (10, 50),
    history_len: int = 20,
    holdout: Holdout | None = None,
) -> EvalResult:
    """Score ``recommender`` on ``split`` by the protocol in the module doc.

    Pass ``holdout`` (from ``prepare_holdout``) to evaluate several recommenders without recomputing
    the split's relevant sets and histories; ``evaluate_many`` does exactly that.
    """
    holdout = holdout if holdout is not None else prepare_holdout(split, history_len)
    ks = tuple(sorted(set(ks)))
    started = clock.perf_counter()
    recommended = recommend_all(recommender, holdout.customer_ids, holdout.histories, max(ks))
    seconds = clock.perf_counter() - started
    outside = (recommended != -1) & ~np.isin(recommended, holdout.catalogue)
    recommended = np.where(outside, -1, recommended)
    hits = hit_matrix(recommended, holdout.relevant_rows, holdout.relevant_items)
    slices = _slices(hits, recommended, holdout, ks)
    metrics = mean_metrics(hits, holdout.n_relevant, ks)
    for k in ks:  # Li et al.'s headline split of recall, beside the overall figures
        metrics[f"recall_repeat@{k}"] = float(slices["repeat_items"][f"recall@{k}"])
        metrics[f"recall_explore@{k}"] = float(slices["explore_items"][f"recall@{k}"])
    return EvalResult(
        recommender=recommender.name,
        metrics=metrics,
        slices=slices,
        n_customers=len(holdout.customer_ids),
        n_catalogue=len(holdout.catalogue),
        n_head_items=len(holdout.head),
        out_of_catalogue=int(outside.sum()),
        cutoff=holdout.cutoff,
        end=holdout.end,
        ks=ks,
        history_len=holdout.history_len,
        seconds=seconds,
        per_customer=per_row_metrics(hits, holdout.n_relevant, ks),
        units_digest=units_digest(holdout.customer_ids),
        params=dict(getattr(recommender, "params", None) or {}),
    )


def evaluate_many(
    recommenders: Sequence[Recommender], split: Split, ks: tuple[int, ...] = (10, 50), history_len: int = 20
) -> list[EvalResult]:
    """``evaluate`` for each recommender on one shared, once-prepared holdout."""
    holdout = prepare_holdout(split, history_len)
    return [evaluate(r, split, ks, history_len, holdout=holdout) for r in recommenders]


def _slices(hits: np.ndarray, recommended: np.ndarray, holdout: Holdout, ks: tuple[int, ...]) -> dict[str, dict]:
    """Customer slices (same metrics on a subset of rows) and item slices (restricted hits and relevance)."""
    out: dict[str, dict] = {}
    for name, rows in (("new", ~holdout.returning), ("returning", holdout.returning)):
        out[name] = {"n_customers": int(rows.sum()), **mean_metrics(hits[rows], holdout.n_relevant[rows], ks)}
    head_relevant = np.isin(holdout.relevant_items, holdout.head)
    n_head = np.bincount(holdout.relevant_rows[head_relevant], minlength=len(holdout.customer_ids))
    head_recommended = np.isin(recommended, holdout.head)
    for name, in_slice, n_relevant in (
        ("head_items", head_recommended, n_head),
        ("tail_items", ~head_recommended, holdout.n_relevant - n_head),
    ):
        out[name] = {
            "n_customers": int((n_relevant > 0).sum()),
            "n_relevant": int(n_relevant.sum()),
            **mean_metrics(hits & in_slice, n_relevant, ks),
        }
    n_customers = len(holdout.customer_ids)
    for name, in_slice in (("repeat_items", holdout.repeat_relevant), ("explore_items", ~holdout.repeat_relevant)):
        rows, items = holdout.relevant_rows[in_slice], holdout.relevant_items[in_slice]
        n_relevant = np.bincount(rows, minlength=n_customers)
        out[name] = {
            "n_customers": int((n_relevant > 0).sum()),
            "n_relevant": int(n_relevant.sum()),
            **mean_metrics(hit_matrix(recommended, rows, items), n_relevant, ks),
        }
    return out
