"""The nightly default configuration on generated data: candidate vs every baseline, and the gate.

Generates the demo's shop (35 days from 2024-01-01, 1,500 orders/day, seed 7 by default) into a
throwaway database on the project's local PostgreSQL, extracts it with the pipeline's extraction,
builds the recommender features of the last day with the nightly defaults (90-day window, 7-day
holdout), trains the candidate (the recommender kind: two-tower + learned ranker) through the
registry's trainer exactly as the nightly ``train`` task does, then runs the nightly ``evaluate`` step (``RecommenderSteps.evaluate``: candidate
and every baseline on one holdout, with serving cost) and the recommender gate on its output.
Prints each contender's metrics and the gate's checks with their bootstrap intervals. Measured and
printed, never asserted.

``--retrieval`` also trains the candidate with the optional two-tower retrieval stage
(``retrieval=True``) on the same features, scores it on the same holdout and shows the gate's
baseline comparison for it: what the two-tower adds on generated data.

Usage: .venv/bin/python bench/gate_generated.py [--days 35] [--orders-per-day 1500] [--seed 7] [--retrieval]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from ecom_ml import models
from ecom_ml import settings as settings_mod
from ecom_ml.db import scratch_database
from ecom_ml.db.migrate import migrate
from ecom_ml.db.server import start
from ecom_ml.features.recommender import build_features, write_features
from ecom_ml.gate import evaluate_gate
from ecom_ml.generator import GeneratorConfig, generate, parse_injections
from ecom_ml.ingest.extract import extract_day
from ecom_ml.lake import Lake
from ecom_ml.models.recommender_steps import RecommenderSteps
from ecom_ml.training.steps import TrainingSettings

FIRST_DAY = date(2024, 1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--orders-per-day", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--retrieval", action="store_true", help="also train and gate the candidate with the two-tower stage")
    args = parser.parse_args()
    cfg = settings_mod.load()
    start(cfg)
    last = FIRST_DAY + timedelta(days=args.days - 1)
    with scratch_database(cfg, "bench_gate") as name:
        url = cfg.local_url(name)
        migrate(url)
        t0 = time.perf_counter()
        generate(url, GeneratorConfig(start=FIRST_DAY, days=args.days, orders_per_day=args.orders_per_day,
                                      seed=args.seed, customers=None, products=None,
                                      injections=parse_injections("")), progress=False)
        begin = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=timezone.utc)
        tables = extract_day(url, begin, begin + timedelta(days=args.days)).tables
    print(f"generated and extracted {args.days} days in {time.perf_counter() - t0:.1f} s")

    scratch = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    training = TrainingSettings(lake_root=scratch.joinpath("lake").as_uri())
    lake = Lake(training.lake_root)
    lake.init()  # lake roots are created on purpose, never by a write
    features = build_features(tables, last, window_days=training.window_days, history_len=training.history_len)
    write_features(lake, last, features)
    t0 = time.perf_counter()
    done = models.get("recommender").train(models.TrainRequest(features=lake.root, day=last, out=str(scratch / "out"),
                                                               params={"holdout_days": training.holdout_days}))
    print(f"recommender (ranker, defaults) trained in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    evaluation = RecommenderSteps().evaluate(lake, last, done["model_uri"], None)
    print(f"evaluate step (tuning + all baselines + candidate + cost) {time.perf_counter() - t0:.1f} s")
    candidate = evaluation["candidate"]
    print(f"\n{candidate['n_customers']:,} test customers ({candidate['slices']['new']['n_customers']:,} new), "
          f"catalogue {candidate['n_catalogue']:,}, holdout {candidate['cutoff'][:10]}..{last}")
    print(f"{'recommender':<24}{'N@10':>8}{'R@10':>8}{'R@50':>8}{'N@50':>8}{'rep R@10':>9}{'expl R@10':>10}"
          f"{'new R@10':>9}{'ret N@10':>9}  params")
    for name, r in [("candidate (two-stage)", candidate), *evaluation["baselines"].items()]:
        params = {k: v for k, v in r.get("params", {}).items() if k in ("l2", "half_life_days", "weight")}
        print(f"{name:<24}{r['ndcg@10']:8.4f}{r['recall@10']:8.4f}{r['recall@50']:8.4f}{r['ndcg@50']:8.4f}"
              f"{r['recall_repeat@10']:9.4f}{r['recall_explore@10']:10.4f}{r['slices']['new']['recall@10']:9.4f}"
              f"{r['slices']['returning']['ndcg@10']:9.4f}  {params or ''}")
    report = evaluate_gate("recommender", candidate, None, evaluation["baselines"])
    print()
    print(report.summary_line())
    for check in report.checks:
        print(f"  {check.name:<28}{check.result:<6}{check.detail}")
    if args.retrieval:
        _with_retrieval(lake, last, training, evaluation, scratch)


def _with_retrieval(lake: Lake, last: date, training: TrainingSettings, evaluation: dict, scratch: Path) -> None:
    from ecom_ml.evaluation.cost import measure_latency, single_requests
    from ecom_ml.evaluation.protocol import evaluate, prepare_holdout, time_split
    from ecom_ml.features.recommender import read_features

    t0 = time.perf_counter()
    kind = models.get("recommender")
    done = kind.train(models.TrainRequest(features=lake.root, day=last, out=str(scratch / "out-retrieval"),
                                          params={"holdout_days": training.holdout_days, "retrieval": True}))
    print(f"\nwith the two-tower stage: trained in {time.perf_counter() - t0:.1f} s")
    model = kind.load(done["model_uri"])
    features = read_features(lake, last)
    split = time_split(features["interactions"], last, holdout_days=training.holdout_days)
    holdout = prepare_holdout(split, history_len=training.history_len)
    r = evaluate(model, split, history_len=training.history_len, holdout=holdout).to_dict()
    ids = holdout.customer_ids[:200]
    r["cost"] = measure_latency(single_requests(model, ids, holdout.histories[: len(ids)], k=10))
    print(f"two-tower + ranker        {r['ndcg@10']:.4f}  {r['recall@10']:.4f}  R@50 {r['recall@50']:.4f}  "
          f"rep {r['recall_repeat@10']:.4f}  expl {r['recall_explore@10']:.4f}  new {r['slices']['new']['recall@10']:.4f}  "
          f"p99 {r['cost']['p99_ms']:.2f} ms")
    report = evaluate_gate("recommender", r, None, evaluation["baselines"])
    check = next(c for c in report.checks if c.name == "beats_best_baseline")
    print(f"  as candidate: {check.name} {check.result}: {check.detail}")


if __name__ == "__main__":
    main()
