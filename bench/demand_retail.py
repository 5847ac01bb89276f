"""Weekly demand on the real Online Retail II 2009-2010 orders: the demand model beside every baseline.

design.md's cleaning: drop rows without a customer, ``C``/``A`` invoices, quantity or price <= 0
and non-product stock codes (the importer's list, ``ecom_ml/importer/online_retail_ii.yaml``).
Day = 2010-12-09 (the file's last), test = the last 28 days (4 weeks ending that day), scored:
products sold in the 13 weeks (91 days) before the cutoff. The orders are built straight from the
CSV (every kept invoice a delivered order), then go through the pipeline's own code: demand
features (``ecom_ml.demand.features``), the registry's trainer (as the nightly ``train`` task runs
it), and the evaluation the ``evaluate`` task runs (``evaluate_panel``). Measured and printed,
never asserted.

Targets (issue 15): product-week WAPE of p50 <= 0.60, p90 coverage 0.85-0.95. design.md's
references at product-week level: last week 0.868, 28-day mean 0.712, 91-day mean 0.736.

Usage: .venv/bin/python bench/demand_retail.py [--epochs N] [--seed N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa

from ecom_ml import models
from ecom_ml.demand.evaluation import evaluate_panel
from ecom_ml.demand.features import DemandParams, Panel, build_features, write_features
from ecom_ml.importer.derive import categorise
from ecom_ml.importer.mapping import load_mapping, normalise_sku
from ecom_ml.lake import Lake

RETAIL = (Path(__file__).resolve().parents[2] / "shared" / "data" / "online_retail_ii_2009_2010"
          / "online_retail_ii_2009_2010.csv.gz")
DAY = date(2010, 12, 9)
REFERENCE_WAPE = {"naive_last_week": 0.868, "moving_average_4w": 0.712, "moving_average_13w": 0.736}
TARGET_WAPE, TARGET_COVERAGE = 0.60, (0.85, 0.95)


def clean_lines(path: Path) -> pd.DataFrame:
    """design.md's cleaning of the raw export (see the module docstring)."""
    mapping = load_mapping()
    raw = pd.read_csv(path, dtype={"Invoice": str, "StockCode": str, "Customer ID": "float64"})
    code = raw["StockCode"].astype(str).map(normalise_sku)
    pattern = mapping.rules.non_product_pattern
    non_product = code.isin(set(mapping.rules.non_product_codes))
    if pattern is not None:
        non_product |= code.map(lambda c: pattern.fullmatch(c) is not None)
    keep = (raw["Customer ID"].notna() & ~raw["Invoice"].str.match(r"^[CA]") & (raw["Quantity"] > 0)
            & (raw["Price"] > 0) & ~non_product)
    lines = raw[keep].assign(code=code[keep])
    print(f"kept {len(lines):,} of {len(raw):,} rows ({lines['Invoice'].nunique():,} invoices, "
          f"{lines['code'].nunique():,} products)")
    return lines


def tables_from(lines: pd.DataFrame) -> dict[str, pa.Table]:
    """Lake-shaped tables (the columns the demand features read)."""
    mapping = load_mapping()
    ts = pd.to_datetime(lines["InvoiceDate"]).dt.tz_localize("UTC")
    codes = sorted(lines["code"].unique())
    product_id = pd.Series(range(1, len(codes) + 1), index=codes)
    invoices = lines.assign(ts=ts).groupby("Invoice").agg(ts=("ts", "min"), customer=("Customer ID", "first"))
    names = lines.groupby("code")["Description"].agg(lambda s: s.dropna().astype(str).iloc[-1] if s.notna().any() else "")
    orders = pa.table({
        "order_id": pa.array(invoices.index.astype("int64")),
        "customer_id": pa.array(invoices["customer"].astype("int64")),
        "status": pa.array(["delivered"] * len(invoices)),
        "created_at": pa.array(invoices["ts"]).cast(pa.timestamp("us", tz="UTC")),
        "updated_at": pa.array(invoices["ts"]).cast(pa.timestamp("us", tz="UTC")),
    })
    items = pa.table({
        "order_id": pa.array(lines["Invoice"].astype("int64")),
        "product_id": pa.array(product_id.reindex(lines["code"]).to_numpy()),
        "quantity": pa.array(lines["Quantity"].astype("int32")),
        "unit_price": pa.array(lines["Price"].astype("float64")),
    })
    products = pa.table({
        "product_id": pa.array(product_id.to_numpy()),
        "category": pa.array(categorise(names.reindex(codes), mapping.categories).astype(str).tolist()),
        "price": pa.array(lines.groupby("code")["Price"].median().reindex(codes).to_numpy()),
    })
    return {"orders": orders, "order_items": items, "products": products}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="trainer epochs (default: the trainer's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    tables = tables_from(clean_lines(RETAIL))
    params = DemandParams(day=DAY, window_days=(DAY - date(2009, 12, 1)).days + 1, holdout_days=28, history_len=13)
    features, counts = build_features(tables, params)
    print(f"features: {counts['products']:,} products x {params.weeks} weeks ({params.train_weeks} before the cutoff "
          f"{params.holdout_start.date()}), {counts['negative_clipped']} negative product-weeks clipped, "
          f"{counts['empty_weeks']} week(s) without sales; {time.perf_counter() - t0:.1f} s")

    with tempfile.TemporaryDirectory(prefix="bench-demand-") as tmp:
        run(Path(tmp), params, features, counts, args.seed, args.epochs, t0)


def run(scratch: Path, params: DemandParams, features: dict, counts: dict, seed: int, epochs: int | None,
        t0: float) -> None:
    """Train through the registry's trainer on a scratch lake and print every forecast's figures."""
    lake = Lake(scratch.joinpath("lake").as_uri())
    lake.init()
    write_features(lake, params, features, counts)
    kind = models.get("demand")
    overrides = {"seed": seed, **({"epochs": epochs} if epochs else {})}
    t1 = time.perf_counter()
    done = kind.train(models.TrainRequest(features=lake.root, day=DAY, out=str(scratch / "out"), params=overrides))
    print(f"trained in {time.perf_counter() - t1:.1f} s on {done['backend']}: {done['metrics']['train_examples']:,} "
          f"examples, {done['metrics']['parameters']:,} parameters, loss {done['metrics']['first_loss']:.3f} -> "
          f"{done['metrics']['final_loss']:.3f}; params {done['params']}")
    panel = Panel.from_tables(params, lake.read("features", "demand", DAY))
    result = evaluate_panel(panel, {"model": kind.load(done["model_uri"])})
    print(f"\n== product-week, {result['products']:,} products sold in the 13 weeks before "
          f"{params.holdout_start.date()}, test {params.holdout_start.date()}..{DAY} (4 weeks)")
    print(f"   {'forecast':<20}{'WAPE':>7}{'ref':>7}{'bias':>8}{'MASE':>7}{'pinball50':>10}{'cov p90':>8}"
          f"{'top100 WAPE':>12}{'rest WAPE':>10}{'new WAPE':>9}")
    rows = [*result["baselines"].items(), ("demand model", result["model"])]
    for name, r in rows:
        ref = REFERENCE_WAPE.get(name)
        cov = r.get("coverage_p90")
        s = r["slices"]
        print(f"   {name:<20}{r['wape']:7.3f}{(f'{ref:.3f}' if ref else '-'):>7}{r['bias']:8.3f}{r['mase']:7.3f}"
              f"{r['pinball_p50']:10.3f}{(f'{cov:.3f}' if cov is not None else '-'):>8}"
              f"{s['top100']['wape']:12.3f}{s['rest']['wape']:10.3f}{s['new']['wape']:9.3f}")
    print("   daily shape (share of pre-cutoff units by weekday): "
          + ", ".join(f"{day} {share:.3f}" for day, share in result["daily_shape"].items()))
    model = result["model"]
    wape_ok = model["wape"] <= TARGET_WAPE
    cov_ok = TARGET_COVERAGE[0] <= model["coverage_p90"] <= TARGET_COVERAGE[1]
    print(f"\n   target WAPE <= {TARGET_WAPE}: {'met' if wape_ok else 'MISSED'} ({model['wape']:.3f}); "
          f"p90 coverage in {TARGET_COVERAGE}: {'met' if cov_ok else 'MISSED'} ({model['coverage_p90']:.3f}); "
          f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
