"""Publishing speed: top-50 recommendations for 200,000 customers (10,000,000 rows) into ``ml``.

In a throwaway database on the project's local PostgreSQL (migrated, so schema ``ml`` exists),
times in one run:
  (a) the project's publish (``ecom_ml.publishing.publish``: binary COPY built by numpy into a new
      table, its index, then the swap) — twice, so the second swap replaces a live 10M-row table
      while a reader thread keeps querying it; reported: load rows/s (COPY + index + ANALYZE),
      the swap's time under the ACCESS EXCLUSIVE lock, and the slowest reader query around it;
  (b) the baseline: the same rows as CSV (pyarrow → CSV buffer → ``COPY … (FORMAT csv)``) into a
      plain table, no index, on ``--baseline-rows`` rows.
Targets: >= 500,000 rows/s and a swap under 100 ms.

Usage: .venv/bin/python bench/publish.py [--customers 200000] [--k 50] [--baseline-rows 2000000]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import time
from datetime import date
from typing import Any

import numpy as np
import psycopg2

from ecom_ml import settings as settings_mod
from ecom_ml.db import scratch_database
from ecom_ml.db.migrate import migrate
from ecom_ml.publishing import PredictionSet, publish

COLUMNS = {"customer_id": "bigint", "rank": "smallint", "product_id": "bigint", "score": "real"}
TARGET_ROWS_S = 500_000
TARGET_SWAP_MS = 100.0


def synthetic(customers: int, k: int, seed: int) -> object:
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    n = customers * k
    return pa.table({
        "customer_id": np.repeat(np.arange(1, customers + 1, dtype=np.int64), k),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int16), customers),
        "product_id": rng.integers(1, 50_000, n, dtype=np.int64),
        "score": np.tile((1.0 / np.arange(1, k + 1)).astype(np.float32), customers),
    })


def reader(url: str, stop: Any, out: Any) -> None:
    """A shop's reader (its own process, as a shop's would be): one customer's recommendations, over
    and over; sends back (wall-clock start, seconds) per query."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    cur = conn.cursor()
    rng = np.random.default_rng(0)
    latencies = []
    while not stop.is_set():
        began = time.time()
        cur.execute("SELECT product_id FROM ml.recommendations WHERE customer_id = %s ORDER BY rank",
                    (int(rng.integers(1, 200_000)),))
        cur.fetchall()
        latencies.append((began, time.time() - began))
        time.sleep(0.002)
    conn.close()
    out.put(latencies)


def csv_baseline(url: str, rows: object) -> float:
    import pyarrow.csv as pacsv

    conn = psycopg2.connect(url)
    began = time.perf_counter()
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE ml.baseline_csv (customer_id bigint, rank smallint, product_id bigint, "
                    "score real, model_version integer, day date)")
        buffer = io.BytesIO()
        table = rows.append_column("model_version", __import__("pyarrow").array(np.full(rows.num_rows, 1, np.int32)))
        table = table.append_column("day", __import__("pyarrow").array([date(2024, 1, 1)] * rows.num_rows))
        pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=False))
        buffer.seek(0)
        cur.copy_expert("COPY ml.baseline_csv FROM STDIN WITH (FORMAT csv)", buffer, size=1 << 20)
    seconds = time.perf_counter() - began
    conn.close()
    return rows.num_rows / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200_000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--baseline-rows", type=int, default=2_000_000)
    args = parser.parse_args()
    cfg = settings_mod.load()
    with scratch_database(cfg, "bench_publish") as name:
        url = cfg.local_url(name)
        migrate(url)
        rows = synthetic(args.customers, args.k, 1)
        spec = PredictionSet("recommendations", COLUMNS, rows, key=("customer_id", "rank"))
        first = publish(url, "recommender", 1, date(2024, 1, 1), spec, actor="bench")
        second_rows = synthetic(args.customers, args.k, 2)
        context = multiprocessing.get_context("spawn")
        stop, queue = context.Event(), context.Queue()
        process = context.Process(target=reader, args=(url, stop, queue), daemon=True)
        process.start()
        time.sleep(1.0)
        began = time.time()
        second = publish(url, "recommender", 2, date(2024, 1, 2),
                         PredictionSet("recommendations", COLUMNS, second_rows, key=("customer_id", "rank")),
                         actor="bench")
        swap_window = (began + second.copy_s, time.time())
        time.sleep(0.3)
        stop.set()
        latencies = queue.get(timeout=60)
        process.join()
        around = [lat for began, lat in latencies if swap_window[0] - 0.05 <= began <= swap_window[1]]
        conn = psycopg2.connect(url)
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), min(model_version), max(model_version) FROM ml.recommendations")
            count, low, high = cur.fetchone()
        conn.close()
        assert count == rows.num_rows and low == high == 2, (count, low, high)
        baseline = csv_baseline(url, rows.slice(0, args.baseline_rows))
    rate = second.rows_per_s
    import os

    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"rows: {rows.num_rows:,} ({args.customers:,} customers x top-{args.k})")
    print(f"publish v1 (no live table): load {first.copy_s:.2f} s = {first.rows_per_s:,.0f} rows/s, "
          f"swap {first.lock_s * 1000:.1f} ms")
    print(f"publish v2 (replacing v1, reader running): load {second.copy_s:.2f} s = {rate:,.0f} rows/s "
          f"(target >= {TARGET_ROWS_S:,}: {'met' if rate >= TARGET_ROWS_S else 'NOT met'}), "
          f"swap transaction {second.swap_s * 1000:.1f} ms, under lock {second.lock_s * 1000:.1f} ms "
          f"(target < {TARGET_SWAP_MS:.0f} ms: {'met' if second.lock_s * 1000 < TARGET_SWAP_MS else 'NOT met'})")
    for label, result in (("v1", first), ("v2", second)):
        phases = result.extra
        print(f"  {label} phases: COPY {phases['copy_s']:.2f} s = {result.rows / phases['copy_s']:,.0f} rows/s, "
              f"index {phases['index_s']:.2f} s, ANALYZE {phases['analyze_s']:.2f} s")
    print(f"reader: {len(latencies):,} queries, slowest around the swap "
          f"{max(around) * 1000 if around else float('nan'):.1f} ms, median overall "
          f"{np.median([lat for _, lat in latencies]) * 1000:.2f} ms")
    print(f"baseline CSV COPY (pyarrow -> CSV -> COPY, no index, {min(args.baseline_rows, rows.num_rows):,} rows): "
          f"{baseline:,.0f} rows/s; binary publish incl. index = {rate / baseline:.2f}x")


if __name__ == "__main__":
    main()
