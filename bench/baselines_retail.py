"""Recommendation baselines on the real Online Retail II 2009-2010 orders, beside design.md's figures.

Imports the shared file into a throwaway database on the project's local PostgreSQL, pulls the
orders back out with the pipeline's own extraction (current state, lake schema), builds the
recommender interactions with the feature code, and applies the evaluation protocol of design.md:
test = 2010-11-09..2010-12-09, train = everything before. Prints Recall@10 / NDCG@10 (and @50, the
slices, cost) of every baseline of the evaluation (``ecom_ml.evaluation.all_baselines``: popularity,
co-purchase, repeat, and EASE, repeat-then-EASE and the decayed-frequency + EASE blend with their
hyper-parameters chosen on the 31 days before the test window) next to design.md's reference
figures, with the repeat / explore recall split (Li et al. 2023) and the chosen hyper-parameters.
Measured and printed, never asserted: the references were taken with a slightly different cleaning
(see --all-orders).

The project's interactions count what the customer kept: a linked ``C`` invoice line is a refund of
the order line(s) it takes back (``refund_lines``), a line refunded in full is left out and the kept
rest of the order stays (before line-level refunds every line of such an order was dropped; the
bench prints both counts, ``refund_report``). design.md's recipe only drops the ``C`` rows
themselves. ``--all-orders`` evaluates a second time with every order's lines, the closer match to
the recipe.

``--model`` also trains the project's recommender (the two-stage model: own items, EASE and the
two-tower as candidates, then the learned ranker; ``ecom_ml.models.recommender``) on the same
training split, through the registry's trainer exactly as the pipeline runs it, and scores it on
the same holdout, so its figures on real data stand beside the baselines, with its training time
(wall clock, on this machine's CPU cores) and top-10 latency.

``--retrieval`` trains the recommender with its optional two-tower retrieval stage as well
(``retrieval=True``), to show what the two-tower adds on real data. ``--ranker`` also trains the
learned ranker directly (``ecom_ml.models.ranker`` with its default settings, outside the trainer).

Usage: .venv/bin/python bench/baselines_retail.py [--all-orders] [--model] [--retrieval] [--ranker] [--keep]
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import psycopg2
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from ecom_ml import settings as settings_mod
from ecom_ml.db.migrate import migrate
from ecom_ml.db.server import start
from ecom_ml.evaluation.tuning import all_baselines
from ecom_ml.evaluation.cost import measure_latency, single_requests
from ecom_ml.evaluation.protocol import EvalResult, evaluate_many, prepare_holdout, time_split
from ecom_ml.features.recommender import build_features
from ecom_ml.importer import import_file
from ecom_ml.ingest.extract import extract_day

DB = "bench_baselines_retail"
RETAIL = Path(__file__).resolve().parents[2] / "shared" / "data" / "online_retail_ii_2009_2010" / "online_retail_ii_2009_2010.csv.gz"
FIRST_DAY, TEST_FIRST, TEST_LAST = date(2009, 12, 1), date(2010, 11, 9), date(2010, 12, 9)
#: design.md, "Reference figures": (Recall@10, NDCG@10) on this file with this protocol (None: not given).
REFERENCE = {"popularity_30d": (0.135, None), "copurchase_knn20": (0.184, None), "repeat": (0.287, None),
             "ease": (0.238, None), "repeat_then_ease": (0.290, 0.298), "decayed_frequency_ease": (0.309, 0.318)}
REFERENCE_FACTS = "1,614 test customers, 82% returning, catalogue 3,951"


def _admin(cfg: settings_mod.Settings, sql: str) -> None:
    conn = psycopg2.connect(cfg.local_url("postgres"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def load_tables(cfg: settings_mod.Settings) -> dict[str, pa.Table]:
    """Import the file into a fresh database and extract every order in its current state."""
    url = cfg.local_url(DB)
    _admin(cfg, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    _admin(cfg, f'CREATE DATABASE "{DB}"')
    migrate(url)
    t0 = time.perf_counter()
    result = import_file(url, RETAIL, progress=False)
    print(f"imported {result.order_lines:,} order lines, {result.orders:,} orders in {time.perf_counter() - t0:.1f} s")
    begin = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=timezone.utc)
    end = datetime(2010, 12, 10, tzinfo=timezone.utc)
    return extract_day(url, begin, end).tables


def refund_report(tables: dict[str, pa.Table]) -> None:
    """Customers' order lines of the year the interactions keep now (line-level refunds) and before
    (the order-level rule: every line of a cancelled or refunded order dropped), in today's state."""
    from ecom_ml.features.recommender import current_purchases, interactions_from_orders

    begin = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=timezone.utc)
    end = datetime(2010, 12, 10, tzinfo=timezone.utc)
    line_level = interactions_from_orders(tables, begin, end, 30.0)
    order_level = interactions_from_orders({k: v for k, v in tables.items() if k != "refund_lines"}, begin, end, 30.0)
    kept_now, kept_before = current_purchases(line_level), current_purchases(order_level)
    total = line_level.num_rows
    from ecom_ml.ingest.refunds import refunded_before

    still = line_level.filter(pa.compute.is_null(line_level.column("removed_at")))
    partly = int((refunded_before(still.column("refunds"), None) > 0).sum())
    refunds = tables["refund_lines"]
    print(f"refund lines: {refunds.num_rows:,} ({int(refunds.column('quantity').to_numpy().sum()):,} units)")
    print(f"clean lines (customers' order lines): {total:,}")
    print(f"  kept before (order-level status rule): {kept_before.num_rows:,}, dropped {total - kept_before.num_rows:,}")
    print(f"  kept now (line-level refunds):         {kept_now.num_rows:,}, dropped {total - kept_now.num_rows:,} "
          f"(refunded in full or cancelled); {partly:,} kept lines partly refunded")


def _all_orders(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """The same tables with every order counted as delivered (design.md's cleaning recipe)."""
    orders = tables["orders"]
    status = pa.array(["delivered"] * orders.num_rows, pa.string())
    return {**tables, "orders": orders.set_column(orders.schema.get_field_index("status"), "status", status)}


def train_model(features: dict[str, pa.Table], holdout_days: int, retrieval: bool = False) -> object:
    """Train the recommender kind on everything before the holdout, as the nightly `train` task would."""
    import tempfile

    from ecom_ml import models
    from ecom_ml.features.recommender import write_features
    from ecom_ml.lake import Lake

    scratch = Path(tempfile.mkdtemp(prefix="bench-retail-"))
    lake = Lake(scratch.joinpath("lake").as_uri())
    lake.init()
    write_features(lake, TEST_LAST, features)
    kind = models.get("recommender")
    t0 = time.perf_counter()
    done = kind.train(models.TrainRequest(features=lake.root, day=TEST_LAST, out=str(scratch / "out"),
                                          params={"holdout_days": holdout_days, "retrieval": retrieval}))
    m, sec = done["metrics"], done["seconds"]
    print(f"   recommender ({done['params'].get('retrieval') and 'two-tower + ' or ''}ranker) trained in "
          f"{time.perf_counter() - t0:.1f} s wall, {os.cpu_count()} CPU cores (two-tower stage {sec.get('retrieval', 0):.1f} s, "
          f"{m.get('retrieval_examples', 0):,} examples; ranker {m['train_examples']:,} examples from "
          f"{m['label_windows']} windows), model {done['model_size_bytes'] / 2**20:.1f} MiB")
    return kind.load(done["model_uri"])


def train_ranker(features: dict[str, pa.Table], split) -> object:
    """The learned ranker on everything before the holdout, with the items' prices as a feature."""
    import pandas as pd

    from ecom_ml.models.ranker import LearnedRanker

    items = features["items"]
    ids = items.column("product_id").to_numpy()
    prices = pd.Series(items.column("price").to_numpy(), index=ids)
    categories = pd.Series(items.column("category").to_pylist(), index=ids)
    return LearnedRanker(split.train, split.cutoff, prices=prices, categories=categories, verbose=True)


def run(tables: dict[str, pa.Table], label: str, with_model: bool = False, with_ranker: bool = False,
        with_retrieval: bool = False) -> None:
    window_days = (TEST_LAST - FIRST_DAY).days + 1
    holdout_days = (TEST_LAST - TEST_FIRST).days + 1
    t0 = time.perf_counter()
    features = build_features(tables, TEST_LAST, window_days=window_days)
    interactions = features["interactions"]
    split = time_split(interactions, TEST_LAST, holdout_days=holdout_days)
    t1 = time.perf_counter()
    baselines = all_baselines(split)
    t2 = time.perf_counter()
    holdout = prepare_holdout(split)
    contenders = [*baselines, train_model(features, holdout_days)] if with_model else list(baselines)
    if with_retrieval:
        contenders.append(train_model(features, holdout_days, retrieval=True))
        contenders[-1].name = "two_tower_then_ranker"
    if with_ranker:
        contenders.append(train_ranker(features, split))
    results = evaluate_many(contenders, split)
    t3 = time.perf_counter()
    first = results[0]
    returning = first.slices["returning"]["n_customers"] / first.n_customers
    print(f"\n== {label}: {interactions.num_rows:,} interactions; train {split.train.num_rows:,} before "
          f"{split.cutoff.date()}, test {split.test.num_rows:,} in {TEST_FIRST}..{TEST_LAST}")
    print(f"   {first.n_customers:,} test customers, {returning:.0%} returning, catalogue {first.n_catalogue:,}, "
          f"{first.n_head_items} head items   (design.md: {REFERENCE_FACTS})")
    print(f"   features+split {t1 - t0:.2f} s, baselines built {t2 - t1:.2f} s, evaluated {t3 - t2:.2f} s")
    _table(results)
    _intervals(results, len(baselines))
    for r in results:
        if "tuning" in r.params:
            p = {k: v for k, v in r.params.items() if k in ("l2", "half_life_days", "weight", "modelled_items")}
            t = r.params["tuning"]
            print(f"   {r.recommender}: chosen {p} on validation {t['validation_test'][0]}..{t['validation_test'][1]} "
                  f"({t['validation_customers']:,} customers, {t['metric']} {t['value']:.4f})")
    sample = holdout.customer_ids[:: max(1, len(holdout.customer_ids) // 200)]
    histories = [holdout.histories[i] for i in np.searchsorted(holdout.customer_ids, sample)]
    print("   latency, one request top-10 (CPU): " + "; ".join(
        f"{b.name} p50 {lat['p50_ms']:.2f} ms p99 {lat['p99_ms']:.2f} ms"
        for b in contenders
        for lat in [measure_latency(single_requests(b, sample, histories), n=200)]
    ))


def _intervals(results: list[EvalResult], n_baselines: int) -> None:
    """Paired bootstrap 95% interval (1,000 resamples, seed 0, as the gate) of NDCG@10 differences:
    the best baseline vs the repeat baseline, and every other contender vs the best baseline."""
    from ecom_ml.evaluation.bootstrap import paired_bootstrap

    baselines = results[:n_baselines]
    best = max(baselines, key=lambda r: r["ndcg@10"])
    repeat = next(r for r in baselines if r.recommender == "repeat")
    pairs = [(best, repeat)] + [(r, best) for r in results[n_baselines:]]
    for a, b in pairs:
        ci = paired_bootstrap(a.per_customer["ndcg@10"], b.per_customer["ndcg@10"])
        print(f"   NDCG@10 {a.recommender} - {b.recommender}: {ci.estimate:+.4f}, 95% interval "
              f"[{ci.low:+.4f}, {ci.high:+.4f}] over {ci.n_units:,} customers")


def _table(results: list[EvalResult]) -> None:
    head = (f"   {'recommender':<24}{'R@10':>7}{'ref':>7}{'N@10':>7}{'ref':>7}{'R@50':>7}{'N@50':>7}"
            f"{'rep R@10':>9}{'expl R@10':>10}{'new R@10':>9}{'ret R@10':>9}{'ret N@10':>9}{'head R@10':>10}{'tail R@10':>10}")
    print(head)
    for r in results:
        ref_recall, ref_ndcg = REFERENCE.get(r.recommender, (None, None))
        s = r.slices
        print(f"   {r.recommender:<24}{r['recall@10']:7.3f}{(f'{ref_recall:.3f}' if ref_recall else '-'):>7}"
              f"{r['ndcg@10']:7.3f}{(f'{ref_ndcg:.3f}' if ref_ndcg else '-'):>7}"
              f"{r['recall@50']:7.3f}{r['ndcg@50']:7.3f}{r['recall_repeat@10']:9.3f}{r['recall_explore@10']:10.3f}"
              f"{s['new']['recall@10']:9.3f}{s['returning']['recall@10']:9.3f}{s['returning']['ndcg@10']:9.3f}"
              f"{s['head_items']['recall@10']:10.3f}{s['tail_items']['recall@10']:10.3f}")



def real_tables(*, keep: bool) -> dict[str, pa.Table]:
    """The shared file imported into the throwaway ``DB`` and extracted as the pipeline does (the
    database dropped afterwards unless ``keep``); also used by ``bench/refunds_retail.py``."""
    if not RETAIL.exists():
        raise SystemExit(f"the shared Online Retail II file is missing at {RETAIL}")
    cfg = settings_mod.load()
    start(cfg)
    try:
        return load_tables(cfg)
    finally:
        if not keep:
            _admin(cfg, f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all-orders", action="store_true", help="also evaluate with cancelled/refunded orders kept")
    parser.add_argument("--model", action="store_true", help="also train and score the two-tower recommender")
    parser.add_argument("--ranker", action="store_true", help="also train and score the learned ranker directly")
    parser.add_argument("--retrieval", action="store_true", help="also train the recommender with the two-tower stage")
    parser.add_argument("--keep", action="store_true", help=f"keep the {DB} database afterwards")
    args = parser.parse_args()
    tables = real_tables(keep=args.keep)
    refund_report(tables)
    run(tables, "project interactions (lines refunded in full and cancelled orders left out)", with_model=args.model,
        with_ranker=args.ranker, with_retrieval=args.retrieval)
    if args.all_orders:
        run(_all_orders(tables), "every order's lines (design.md's cleaning recipe)", with_ranker=args.ranker)


if __name__ == "__main__":
    main()
