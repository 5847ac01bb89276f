"""Ranking metrics, defined once so every figure in the project compares (design.md, "Evaluation").

* relevant set of a customer: the distinct products they bought in the test window, repeat
  purchases of things bought before included;
* Recall@K = hits in the top K / min(K, |relevant|): a customer with 3 relevant products can reach 1.0
  at K=10, and one with 80 is not doomed to 0.125;
* NDCG@K: binary gains, discount 1/log2(rank + 1), ideal DCG over min(K, |relevant|) hits in the top
  positions.

Everything is per customer and vectorised over an ``(n, K)`` hit matrix; averaging (over all test
customers, new ones included) is the caller's, so slices reuse the same functions.
"""

from __future__ import annotations

import numpy as np


def hit_matrix(recommended: np.ndarray, relevant_rows: np.ndarray, relevant_items: np.ndarray) -> np.ndarray:
    """``(n, K)`` booleans: is ``recommended[i, j]`` relevant for row ``i``?

    ``relevant_rows[m]`` / ``relevant_items[m]`` list the (row, product) relevant pairs. A product a
    recommender repeats within one row counts once (its first position), so a list of ten copies of
    one relevant item cannot earn ten hits; ``-1`` (no item) never hits.
    """
    recommended = np.asarray(recommended, dtype=np.int64)
    n, width = recommended.shape
    flat = recommended.ravel()
    vocab, codes = np.unique(np.concatenate([flat, np.asarray(relevant_items, dtype=np.int64)]), return_inverse=True)
    size = len(vocab)
    rec_keys = np.repeat(np.arange(n, dtype=np.int64), width) * size + codes[: flat.size]
    rel_keys = np.asarray(relevant_rows, dtype=np.int64) * size + codes[flat.size :]
    hits = np.isin(rec_keys, rel_keys) & (flat != -1)
    first = np.zeros(flat.size, dtype=bool)
    first[np.unique(rec_keys, return_index=True)[1]] = True
    return (hits & first).reshape(n, width)


def _check(hits: np.ndarray, k: int) -> None:
    if k < 1 or hits.shape[1] < k:
        raise ValueError(f"need at least k={k} recommendations per customer, got {hits.shape[1]}")


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-row hits in the top ``k`` / min(k, |relevant|); NaN where a row has nothing relevant."""
    _check(hits, k)
    n_relevant = np.asarray(n_relevant)
    denominator = np.minimum(k, n_relevant).astype(np.float64)
    found = hits[:, :k].sum(axis=1).astype(np.float64)
    return np.divide(found, denominator, out=np.full(len(found), np.nan), where=denominator > 0)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-row binary-gain NDCG@k, ideal over min(k, |relevant|) hits; NaN where nothing is relevant."""
    _check(hits, k)
    n_relevant = np.asarray(n_relevant)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hits[:, :k].astype(np.float64) @ discount
    ideal_hits = np.minimum(k, n_relevant)
    ideal = np.r_[0.0, np.cumsum(discount)][ideal_hits]
    return np.divide(dcg, ideal, out=np.full(len(dcg), np.nan), where=ideal_hits > 0)


def per_row_metrics(hits: np.ndarray, n_relevant: np.ndarray, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``recall@K`` and ``ndcg@K`` per row (NaN where a row has nothing relevant).

    Kept per customer by the evaluation so that a difference between two recommenders can get a
    paired confidence interval over customers (``ecom_ml.evaluation.bootstrap``), not just a mean.
    """
    out: dict[str, np.ndarray] = {}
    for k in ks:
        for name, metric in (("recall", recall_at_k), ("ndcg", ndcg_at_k)):
            out[f"{name}@{k}"] = metric(hits, n_relevant, k)
    return out


def mean_metrics(hits: np.ndarray, n_relevant: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """``recall@K`` and ``ndcg@K`` averaged over the rows with something relevant (NaN if none)."""
    scored = np.asarray(n_relevant) > 0
    return {
        name: float(values[scored].mean()) if scored.any() else float("nan")
        for name, values in per_row_metrics(hits, n_relevant, ks).items()
    }
