"""Batched ranking building blocks shared by the baselines (and free for any model to use).

Every recommender in this project answers ``(n, k)`` product ids at a time, so the common steps
(product id <-> dense code, top-k of a sparse score matrix, "own items first, then fill up with the
fallback list") are vectorised here once instead of being re-written with per-customer loops in each
recommender. ``-1`` marks "no item" throughout (product ids are positive).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from ecom_ml.features.recommender import rank_in_runs

EMPTY = -1


class ItemIndex:
    """Dense codes ``0..n-1`` for a set of product ids (sorted), and back."""

    def __init__(self, product_ids: np.ndarray) -> None:
        self.ids = np.unique(np.asarray(product_ids, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def codes(self, product_ids: np.ndarray) -> np.ndarray:
        """Code per id, ``-1`` for ids outside the index (any shape)."""
        ids = np.asarray(product_ids, dtype=np.int64)
        if len(self.ids) == 0:
            return np.full(ids.shape, EMPTY, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return np.where(self.ids[pos] == ids, pos, EMPTY)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Product id per code, ``-1`` kept as ``-1``."""
        codes = np.asarray(codes, dtype=np.int64)
        if len(self.ids) == 0:
            return np.full(codes.shape, EMPTY, dtype=np.int64)
        return np.where(codes >= 0, self.ids[np.maximum(codes, 0)], EMPTY)


def pad(rows: Sequence[np.ndarray], width: int | None = None) -> np.ndarray:
    """Ragged rows -> ``(n, width)`` int64 matrix, ``-1``-padded and truncated to ``width``."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max(initial=0)) if width is None else width
    out = np.full((len(rows), width), EMPTY, dtype=np.int64)
    if lengths.sum() == 0 or width == 0:
        return out
    values = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows])
    row = np.repeat(np.arange(len(rows)), lengths)
    col = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = col < width
    out[row[keep], col[keep]] = values[keep]
    return out


def unique_left(matrix: np.ndarray) -> np.ndarray:
    """Per row: drop ``-1`` and repeated entries, keep first occurrences in order, shift left, pad ``-1``."""
    matrix = np.asarray(matrix, dtype=np.int64)
    n, width = matrix.shape
    if width == 0:
        return matrix.copy()
    earlier = np.tril(np.ones((width, width), dtype=bool), k=-1)  # earlier[j, i]: column i is before j
    repeated = ((matrix[:, :, None] == matrix[:, None, :]) & earlier[None]).any(axis=2)
    keep = (matrix != EMPTY) & ~repeated
    order = np.argsort(~keep, axis=1, kind="stable")  # kept entries first, original order kept
    out = np.take_along_axis(matrix, order, axis=1)
    out[~np.take_along_axis(keep, order, axis=1)] = EMPTY
    return out


def fill(chosen: np.ndarray, fallback: np.ndarray, k: int) -> np.ndarray:
    """``k`` codes per row: the row's own (``-1``-padded, left-aligned) choices, then ``fallback``'s
    items in its order that the row has not chosen yet. ``-1`` remains only if both run out.
    """
    chosen = unique_left(chosen)[:, :k]
    if chosen.shape[1] < k:
        chosen = np.pad(chosen, ((0, 0), (0, k - chosen.shape[1])), constant_values=EMPTY)
    candidates = np.asarray(fallback, dtype=np.int64)[: 2 * k]  # at most k of them can be taken already
    if len(candidates) < k:
        candidates = np.pad(candidates, (0, k - len(candidates)), constant_values=EMPTY)
    taken = (candidates[None, :, None] == chosen[:, None, :]).any(axis=2)
    order = np.argsort(taken, axis=1, kind="stable")  # untaken candidates first, in fallback order
    free = np.take_along_axis(np.broadcast_to(candidates, taken.shape), order, axis=1)
    free = np.where(np.take_along_axis(taken, order, axis=1), EMPTY, free)[:, :k]
    have = (chosen != EMPTY).sum(axis=1)
    slot = np.arange(k)[None, :] - have[:, None]
    filler = np.take_along_axis(free, np.maximum(slot, 0), axis=1)
    return np.where(slot < 0, chosen, filler)


def sparse_top_k(scores: sp.csr_matrix, k: int) -> np.ndarray:
    """``(n_rows, k)`` column indices of each row's ``k`` largest *positive* entries, best first.

    Ties go to the lower column index, so results are reproducible; rows with fewer positive entries
    are ``-1``-padded. Works on the sparse structure only, never densifying the row.
    """
    scores = sp.csr_matrix(scores)
    rows, cols, values = _sorted_entries(scores)
    out = np.full((scores.shape[0], k), EMPTY, dtype=np.int64)
    rank = rank_in_runs(rows)
    keep = (rank < k) & (values > 0)
    out[rows[keep], rank[keep]] = cols[keep]
    return out


def prune_rows(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep each row's ``k`` largest entries (ties: lower column), the rest set to zero."""
    matrix = sp.csr_matrix(matrix)
    rows, cols, values = _sorted_entries(matrix)
    keep = rank_in_runs(rows) < k
    return sp.csr_matrix((values[keep], (rows[keep], cols[keep])), shape=matrix.shape)


def _sorted_entries(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored entries ordered by row, then value descending, then column."""
    matrix.sum_duplicates()
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    cols = matrix.indices.astype(np.int64)
    values = matrix.data
    order = np.lexsort((cols, -values, rows))
    return rows[order], cols[order], values[order]




def dense_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """``(n_rows, k)`` column indices of each row's ``k`` largest *finite* scores, best first.

    ``-inf`` (or NaN) marks "not a candidate"; rows with fewer candidates are ``-1``-padded. Ties go
    to the lower column index, so results are reproducible whatever ``argpartition`` does inside.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n, width = scores.shape
    out = np.full((n, k), EMPTY, dtype=np.int64)
    if n == 0 or width == 0 or k == 0:
        return out
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    take = min(k, width)
    # The k-th best score per row; everything strictly better is in, ties at the boundary by column.
    part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
    rows, cols = np.nonzero((scores >= kth) & np.isfinite(scores))
    values = scores[rows, cols]
    order = np.lexsort((cols, -values, rows))
    rows, cols = rows[order], cols[order]
    rank = rank_in_runs(rows)
    keep = rank < k
    out[rows[keep], rank[keep]] = cols[keep]
    return out
