"""What a model costs to serve: CPU latency of one request and the size of what gets shipped.

The gate weighs these against quality (design.md: a better model that costs ten times more to serve
is not automatically better), so they are measured the same way for candidate, champion and
baselines: single requests (top-10 for one customer, the serving shape, not a throughput batch), on
CPU, after a warm-up so one-off costs (lazy imports, graph tracing, caches) do not count as latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from itertools import cycle
from os import PathLike
from typing import Any

import numpy as np

from ecom_ml.evaluation.protocol import Recommender


def measure_latency(recommend_one: Callable[[], Any], n: int = 200, warmup: int = 20) -> dict[str, float]:
    """Wall time of ``n`` sequential calls after ``warmup`` unmeasured ones: ``p50_ms``, ``p99_ms``, ``mean_ms``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    for _ in range(warmup):
        recommend_one()
    samples = np.empty(n, dtype=np.float64)
    for i in range(n):
        started = time.perf_counter_ns()
        recommend_one()
        samples[i] = (time.perf_counter_ns() - started) / 1e6
    return {
        "p50_ms": float(np.percentile(samples, 50)),
        "p99_ms": float(np.percentile(samples, 99)),
        "mean_ms": float(samples.mean()),
        "n": n,
    }


def single_requests(
    recommender: Recommender, customer_ids: np.ndarray, histories: Sequence[np.ndarray], k: int = 10
) -> Callable[[], np.ndarray]:
    """A zero-argument call that serves the next customer in turn, one at a time (for ``measure_latency``).

    Cycling through real customers, rather than repeating one, keeps short and long histories and
    known and unknown customers in the sample, as in production.
    """
    if len(customer_ids) == 0:
        raise ValueError("need at least one customer to measure latency on")
    requests = cycle(list(zip(np.asarray(customer_ids, dtype=np.int64).tolist(), histories, strict=True)))

    def recommend_one() -> np.ndarray:
        customer_id, history = next(requests)
        return recommender.recommend(np.array([customer_id], dtype=np.int64), [history], k)

    return recommend_one


def model_size_bytes(path: str | PathLike[str]) -> int:
    """Total bytes of a saved model: one file, or every file under a directory, local or any fsspec URI."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(path))
    if not fs.exists(root):
        raise FileNotFoundError(f"no model at {path}")
    if fs.isdir(root):
        return int(sum(info["size"] or 0 for info in fs.find(root, detail=True).values() if info["type"] == "file"))
    return int(fs.size(root))
