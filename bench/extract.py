"""Extraction speed: the project's COPY → Arrow → Parquet against the COPY ceiling and pandas.

Creates one day of ~2,000,000 order lines in a throwaway database on the project's local
PostgreSQL, then times in one run:
  (a) COPY … TO STDOUT (FORMAT binary) of the same four result sets into nothing (the ceiling),
  (b) the project's extraction of that day into a lake partition (Parquet),
  (c) pandas.read_sql of the same queries → Parquet.
Prints the ratios ceiling/project and ceiling/pandas (as speed fractions of the ceiling) and the
peak memory of (b), which runs in a child process so its high-water mark is its own.

Usage: .venv/bin/python bench/extract.py [--lines 2000000]
"""

from __future__ import annotations

import argparse
import io
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

import psycopg2

from ecom_ml import settings as settings_mod
from ecom_ml.db.migrate import migrate
from ecom_ml.db.server import start

DAY = datetime(2024, 3, 1, tzinfo=timezone.utc)
DB = "bench_extract"


def build(admin_url: str, url: str, lines: int) -> None:
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {DB}")
    conn.close()
    migrate(url)
    orders = lines * 2 // 5  # 2.5 lines per order on average
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            """INSERT INTO customers (customer_id, external_ref, country, created_at, updated_at)
               SELECT g, 'C' || g, 'United Kingdom', %(d)s - interval '400 days', %(d)s - interval '400 days'
               FROM generate_series(1, 200000) g""",
            {"d": DAY},
        )
        cur.execute(
            """INSERT INTO products (product_id, sku, name, category, price, created_at, updated_at)
               SELECT g, 'SKU' || g, 'Product ' || g, 'cat' || (g %% 30), round((1 + random() * 50)::numeric, 2),
                      %(d)s - interval '400 days', %(d)s - interval '400 days'
               FROM generate_series(1, 20000) g""",
            {"d": DAY},
        )
        # The day itself between a day before and a day after, so the extraction has to pick its rows out.
        cur.execute(
            """INSERT INTO orders (order_id, external_ref, customer_id, status, country, created_at, updated_at)
               SELECT g, 'G' || g, 1 + (g * 7919) %% 200000,
                      CASE WHEN g %% 50 = 0 THEN 'cancelled' ELSE 'delivered' END, 'United Kingdom',
                      %(d)s - interval '1 day' + (g::float / %(n)s) * interval '3 days',
                      %(d)s - interval '1 day' + (g::float / %(n)s) * interval '3 days'
               FROM generate_series(1::bigint, %(n)s) g""",
            {"d": DAY, "n": orders * 3},
        )
        cur.execute(
            """INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price)
               SELECT o, l, 1 + ((o * 31 + l * 17) %% 20000), 1 + (o + l) %% 4, round((1 + ((o * l) %% 5000) / 100.0)::numeric, 2)
               FROM generate_series(1::bigint, %(n)s) o, generate_series(1, 1 + (o %% 4)::int) l""",
            {"n": orders * 3},
        )
        cur.execute("ANALYZE")


def ceiling(url: str) -> float:
    from ecom_ml.ingest import extract as ex

    class Null(io.RawIOBase):
        def write(self, b):  # noqa: D401 - file protocol
            return len(b)

    t0 = time.perf_counter()
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(
            """CREATE TEMP TABLE day_orders AS
               SELECT order_id FROM orders WHERE created_at >= %(s)s AND created_at < %(e)s
               UNION SELECT order_id FROM orders WHERE updated_at >= %(s)s AND updated_at < %(e)s""",
            {"s": DAY, "e": DAY + timedelta(days=1)},
        )
        for query in ex._queries().values():
            plain = query.replace("(extract(epoch FROM ", "(").replace(") * 1000000)::bigint", ")")
            cur.copy_expert(f"COPY ({plain}) TO STDOUT (FORMAT binary)", Null(), size=1 << 20)
    conn.rollback()
    conn.close()
    return time.perf_counter() - t0


def project(url: str) -> tuple[float, int, dict]:
    """Run the project's extraction in a child process; return seconds, peak RSS (bytes), rows."""
    code = (
        "import json, sys, time, tempfile; from datetime import datetime, timedelta, timezone\n"
        "from ecom_ml.ingest.extract import extract_day\nfrom ecom_ml.lake import Lake, RAW\n"
        f"day = datetime({DAY.year}, {DAY.month}, {DAY.day}, tzinfo=timezone.utc)\n"
        "t = time.perf_counter()\n"
        "ex = extract_day(sys.argv[1], day, day + timedelta(days=1))\n"
        "Lake('file://' + tempfile.mkdtemp()).write(RAW, 'orders', day.date(), ex.tables)\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'rows': ex.rows}))\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["seconds"], max(peak, before) * 1024, result["rows"]


def with_pandas(url: str) -> float:
    import pandas as pd
    import sqlalchemy as sa

    from ecom_ml.ingest import extract as ex

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    out = tempfile.mkdtemp()
    t0 = time.perf_counter()
    with engine.connect() as conn:
        conn.exec_driver_sql(
            f"""CREATE TEMP TABLE day_orders AS
               SELECT order_id FROM orders WHERE created_at >= '{DAY.isoformat()}' AND created_at < '{(DAY + timedelta(days=1)).isoformat()}'
               UNION SELECT order_id FROM orders WHERE updated_at >= '{DAY.isoformat()}' AND updated_at < '{(DAY + timedelta(days=1)).isoformat()}'"""
        )
        for name, query in ex._queries().items():
            plain = query.replace("(extract(epoch FROM ", "(").replace(") * 1000000)::bigint", ")")
            pd.read_sql(sa.text(plain), conn).to_parquet(f"{out}/{name}.parquet")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2_000_000, help="order lines in the extracted day")
    parser.add_argument("--reuse", action="store_true", help="keep and reuse the bench database between runs")
    args = parser.parse_args()
    cfg = settings_mod.load()
    start(cfg)
    url = cfg.local_url(DB)
    print(f"building {args.lines:,} order lines for {DAY.date()} (+1 day either side) in {DB} ...", flush=True)
    if not (args.reuse and _exists(cfg)):
        build(cfg.local_url("postgres"), url, args.lines)
    t_ceiling = ceiling(url)
    t_project, peak, rows = project(url)
    t_pandas = with_pandas(url)
    print(f"rows extracted: {rows}")
    print(f"(a) COPY binary to nowhere (ceiling): {t_ceiling:6.2f} s")
    print(f"(b) ecom-ml COPY csv -> Arrow -> Parquet: {t_project:6.2f} s   peak RSS {peak / 2**30:.2f} GiB (target < 1.5)")
    print(f"(c) pandas.read_sql -> Parquet:          {t_pandas:6.2f} s")
    print(f"speed vs ceiling: project {t_ceiling / t_project:.2f} (target >= 0.5), pandas {t_ceiling / t_pandas:.2f}")
    if not args.reuse:
        conn = psycopg2.connect(cfg.local_url("postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.close()


def _exists(cfg: settings_mod.Settings) -> bool:
    with psycopg2.connect(cfg.local_url("postgres")) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,))
        return cur.fetchone() is not None


if __name__ == "__main__":
    main()
