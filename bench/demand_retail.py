"""Weekly demand on the real Online Retail II 2009-2010 orders: the demand model beside every baseline.

design.md's cleaning: drop rows without a customer, ``C``/``A`` invoices, quantity or price <= 0
and non-product stock codes (the importer's list, ``ecom_ml/importer/online_retail_ii.yaml``).
Day = 2010-12-09 (the file's last), test = the last 28 days (4 weeks ending that day), scored:
products sold in the 13 weeks (91 days) before the cutoff.

First the validation month: the same run with day = 2010-11-11 (the 4 weeks before the holdout,
the trainer fitted on the weeks before 2010-10-15). The trainer's settings (members, dropout, which
products train, epochs) were chosen on this month's figures; the holdout is then scored once. The orders are built straight from the
CSV (every kept invoice a delivered order), then go through the pipeline's own code: demand
features (``ecom_ml.demand.features``), the registry's trainer (as the nightly ``train`` task runs
it), and the evaluation the ``evaluate`` task runs (``evaluate_panel``). Measured and printed,
never asserted.

Targets (issue 15): product-week WAPE of p50 <= 0.60, p90 coverage 0.85-0.95. design.md's
references at product-week level: last week 0.868, 28-day mean 0.712, 91-day mean 0.736.

Measured (one run, CPU, TensorFlow, default parameters, seed 0, statsforecast 2.0.1): holdout
(3,100 products) demand model WAPE 0.5998, bias -0.231, MASE 0.830, p90 coverage 0.907 (no price
plan: WAPE 0.600); baselines last week 0.868, 4-week mean 0.712, 13-week mean 0.736, AutoETS 0.795,
CrostonOptimized 0.768, TSB 0.715. Validation month (3,035 products): model 0.630 (bias -0.336,
coverage 0.896), best baseline TSB 0.780. Generated orders: model 0.558 against 0.615 (13-week
mean), promotion response +96.7 % against the generator's +86.0 %. 232 s for the two Online Retail
parts on a shared 2-core machine. Seeds 1 / 2 (``--fast --seed N``): holdout 0.602 / 0.603,
validation month 0.632 / 0.629: the target is met at seed 0 by less than the spread between seeds. The
classical forecasters (statsforecast AutoETS, CrostonOptimized, TSB) run where statsforecast is
installed (2.0.1 with the pinned pandas 3); otherwise the bench says so.

The forecast weeks' price plan is read from the category prices the holdout weeks had (see
``ecom_ml.demand.features.price_plan``); the model is also scored with the plan at 1 (no price
known in advance), so a reader sees how much of the figure the plan is.

Second part, generated orders (``--generated-days``, 0 to skip): the shop generator simulated in
memory (``ecom_ml.generator``, the same days a database run would write), through the same
features, trainer and evaluation. Its promotions have a known effect: a promotion day has
``multiplier`` x the orders and pulls 35 % of browsing into 3 categories at ``discount`` off. The
generator's true change in units of the promoted categories' product-weeks (the promotion day
re-simulated without its promotion, on 20,000 orders either way, for the expectation) is printed
beside the model's estimate (its p50 at the promotion prices vs at the usual price).

Usage: .venv/bin/python bench/demand_retail.py [--epochs N] [--seed N] [--generated-days N]
       [--no-validation] [--fast]   (--fast: no statsforecast baselines, no generated part)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ecom_ml import models
from ecom_ml.demand.evaluation import evaluate_panel, forecast_metrics, price_response
from ecom_ml.demand.features import DemandParams, Panel, build_features, model_inputs, write_features
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


def generated_tables(seed: int, start: date, days: int, orders_per_day: int) -> tuple[dict[str, pa.Table], object]:
    """The generator's days ``start .. start+days-1`` in memory, as lake-shaped tables, and its world."""
    from ecom_ml.generator.catalogue import CATEGORIES
    from ecom_ml.generator.config import ShopParams, default_customers, default_products
    from ecom_ml.generator.days import STATUSES, order_states, plan_lines, plan_orders
    from ecom_ml.generator.timeline import day_start_us
    from ecom_ml.generator.world import build_world

    params = ShopParams(seed, orders_per_day, default_customers(orders_per_day), default_products(orders_per_day), start)
    end = start + timedelta(days=days)
    world = build_world(params, end)
    as_of = day_start_us(end)
    orders, items = [], []
    for offset in range(days):
        placed = plan_orders(world, world.header(start + timedelta(days=offset)))
        lines = plan_lines(world, placed)
        status, updated = order_states(placed, as_of)
        orders.append(pd.DataFrame({"order_id": placed.order_id, "customer_id": placed.customer_id,
                                    "status": np.asarray(STATUSES)[status], "created_at": placed.created_us,
                                    "updated_at": updated}))
        items.append(pd.DataFrame({"order_id": lines.order_id, "product_id": lines.product_id,
                                   "quantity": lines.quantity, "unit_price": lines.unit_cents / 100}))
    o, i = pd.concat(orders), pd.concat(items)
    ts = pa.timestamp("us", tz="UTC")
    cat = world.catalogue
    tables = {
        "orders": pa.table({"order_id": pa.array(o["order_id"], pa.int64()), "customer_id": pa.array(o["customer_id"], pa.int64()),
                            "status": pa.array(o["status"].astype(str)), "created_at": pa.array(o["created_at"], pa.int64()).cast(ts),
                            "updated_at": pa.array(o["updated_at"], pa.int64()).cast(ts)}),
        "order_items": pa.table({"order_id": pa.array(i["order_id"], pa.int64()), "product_id": pa.array(i["product_id"], pa.int64()),
                                 "quantity": pa.array(i["quantity"], pa.int32()), "unit_price": pa.array(i["unit_price"], pa.float64())}),
        "products": pa.table({"product_id": pa.array(np.arange(1, len(cat) + 1), pa.int64()),
                              "category": pa.array([CATEGORIES[c].name for c in cat.category]),
                              "price": pa.array(cat.price_cents / 100, pa.float64())}),
    }
    return tables, world


def category_units(world: object, header: object, orders: int, categories: tuple[int, ...]) -> float:
    """Units of ``categories`` on ``header``'s day (its promotion, or none) re-drawn on ``orders``
    orders of returning customers: enough orders that the ratio of two such days is an expectation."""
    from ecom_ml.generator.days import plan_lines, plan_orders

    lines = plan_lines(world, plan_orders(world, replace(header, orders=orders, new_customers=0)))
    on = np.isin(world.catalogue.category[lines.product_id - 1], categories)
    return float(lines.quantity[on].sum())


def true_promotion_change(world: object, panel: Panel, rows: np.ndarray, sample: int = 20_000) -> tuple[np.ndarray, float, list[str]]:
    """``(promoted, change, notes)``: the holdout's product-weeks of promoted categories (mask over
    ``rows`` x horizon) and the generator's true relative change in their units from the promotions.

    Per promotion day: ``r`` = expected promoted units with the promotion / without it (the day
    simulated on ``sample`` orders with its promotion, multiplier applied, and without). A week's
    counterfactual units = its units less the promotion day's promoted units x (1 - 1/r)."""
    from ecom_ml.generator.catalogue import CATEGORIES

    params = panel.params
    anchor, horizon = params.train_weeks, params.horizon_weeks
    category_index = {c.name: k for k, c in enumerate(CATEGORIES)}
    cats = np.asarray([category_index[str(c)] for c in panel.categories[rows]])
    promoted = np.zeros((len(rows), horizon), dtype=bool)
    actual = panel.units[rows, anchor:anchor + horizon]
    removed = np.zeros_like(actual)
    notes = []
    for h in range(horizon):
        first = params.week_start(anchor + h).date()
        for d in (first + timedelta(days=k) for k in range(7)):
            header = world.header(d)
            if header.promo is None:
                continue
            promo = header.promo
            ratio = (category_units(world, header, round(sample * promo.multiplier), promo.categories)
                     / category_units(world, replace(header, promo=None), sample, promo.categories))
            on = np.isin(cats, promo.categories)
            promoted[on, h] = True
            day_units = _day_units(world, header, panel.product_ids[rows], params.day + timedelta(days=1))
            removed[:, h] += np.where(on, day_units * (1 - 1 / ratio), 0.0)
            notes.append(f"{d} x{promo.multiplier:.2f} orders, -{promo.discount:.0%} on "
                         f"{', '.join(CATEGORIES[c].name for c in promo.categories)}: promoted units x{ratio:.2f} that day")
    base = (actual - removed)[promoted].sum()
    change = float(actual[promoted].sum() / base - 1) if base > 0 else float("nan")
    return promoted, change, notes


def _day_units(world: object, header: object, product_ids: np.ndarray, as_of: date) -> np.ndarray:
    """Units per product (``product_ids`` order) the day sold, orders kept as of ``as_of`` (the
    generated run's end, as the holdout's actuals)."""
    from ecom_ml.generator.days import CANCELLED, REFUNDED, order_states, plan_lines, plan_orders
    from ecom_ml.generator.timeline import day_start_us

    placed = plan_orders(world, header)
    lines = plan_lines(world, placed)
    status, _ = order_states(placed, day_start_us(as_of))
    kept = ~np.isin(status, (CANCELLED, REFUNDED))
    kept_line = kept[np.searchsorted(placed.order_id, lines.order_id)]
    per = np.bincount(lines.product_id[kept_line], weights=lines.quantity[kept_line],
                      minlength=int(max(product_ids.max(), lines.product_id.max())) + 1)
    return per[product_ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="trainer epochs (default: the trainer's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generated-days", type=int, default=182, help="days of generated orders (0: skip that part)")
    parser.add_argument("--generated-orders", type=int, default=300, help="generated orders per day")
    parser.add_argument("--no-validation", action="store_true",
                        help="skip the validation month (the 4 weeks before the holdout, where settings are chosen)")
    parser.add_argument("--fast", action="store_true",
                        help="exploration: no statsforecast baselines, no generated part")
    args = parser.parse_args()

    t0 = time.perf_counter()
    tables = tables_from(clean_lines(RETAIL))
    with tempfile.TemporaryDirectory(prefix="bench-demand-") as tmp:
        if not args.no_validation:
            day = DAY - timedelta(days=28)
            print(f"\n== validation month: day {day}, the trainer fitted on the weeks before {day - timedelta(days=27)}; "
                  f"every setting of the trainer was chosen here, never on the holdout below")
            run(Path(tmp) / "validation", tables, day, {}, args, t0)
        print(f"\n== holdout: day {DAY}, scored once")
        run(Path(tmp) / "holdout", tables, DAY, REFERENCE_WAPE, args, t0)
        if args.generated_days and not args.fast:
            run_generated(Path(tmp) / "generated", args.seed, args.epochs, args.generated_days, args.generated_orders)


def train_and_evaluate(scratch: Path, params: DemandParams, features: dict, counts: dict, seed: int,
                       epochs: int | None, classical: bool = True) -> tuple[Panel, object, dict]:
    """Train through the registry's trainer on a scratch lake; the panel, the model and its evaluation."""
    lake = Lake(scratch.joinpath("lake").as_uri())
    lake.init()
    write_features(lake, params, features, counts)
    kind = models.get("demand")
    overrides = {"seed": seed, **({"epochs": epochs} if epochs else {})}
    t1 = time.perf_counter()
    done = kind.train(models.TrainRequest(features=lake.root, day=params.day, out=str(scratch / "out"), params=overrides))
    print(f"trained in {time.perf_counter() - t1:.1f} s on {done['backend']}: {done['metrics']['train_examples']:,} "
          f"examples, {done['metrics']['parameters']:,} parameters, loss {done['metrics']['first_loss']:.3f} -> "
          f"{done['metrics']['final_loss']:.3f}; params {done['params']}; the trainer's own validation: "
          f"{done['metrics']['validation']}")
    panel = Panel.from_tables(params, lake.read("features", "demand", params.day))
    model = kind.load(done["model_uri"])
    return panel, model, evaluate_panel(panel, {"model": model}, classical_forecasters=classical)


def print_table(result: dict, params: DemandParams, references: dict[str, float]) -> None:
    print(f"\n== product-week, {result['products']:,} products sold in the 13 weeks before "
          f"{params.holdout_start.date()}, test {params.holdout_start.date()}..{params.day} ({params.horizon_weeks} weeks)")
    print(f"   {'forecast':<20}{'WAPE':>7}{'ref':>7}{'bias':>8}{'MASE':>7}{'pinball50':>10}{'cov p90':>8}"
          f"{'top100 WAPE':>12}{'rest WAPE':>10}{'new WAPE':>9}")
    rows = [*result["baselines"].items(), ("demand model", result["model"])]
    for name, r in rows:
        ref = references.get(name)
        cov = r.get("coverage_p90")
        s = r["slices"]
        print(f"   {name:<20}{r['wape']:7.3f}{(f'{ref:.3f}' if ref else '-'):>7}{r['bias']:8.3f}{r['mase']:7.3f}"
              f"{r['pinball_p50']:10.3f}{(f'{cov:.3f}' if cov is not None else '-'):>8}"
              f"{s['top100']['wape']:12.3f}{s['rest']['wape']:10.3f}{s['new']['wape']:9.3f}")
    print(f"   slices: top100 {result['model']['slices']['top100']['products']} products, rest "
          f"{result['model']['slices']['rest']['products']}, new (first sold within 8 weeks) "
          f"{result['model']['slices']['new']['products']}; classical forecasters: {result['classical']}")


def run(scratch: Path, tables: dict, day: date, references: dict[str, float], args: argparse.Namespace,
        t0: float) -> None:
    """Online Retail II up to ``day``: the model beside every baseline on the 4 weeks ending that day."""
    params = DemandParams(day=day, window_days=(day - date(2009, 12, 1)).days + 1, holdout_days=28, history_len=13)
    features, counts = build_features(tables, params)
    print(f"features: {counts['products']:,} products x {params.weeks} weeks ({params.train_weeks} before the cutoff "
          f"{params.holdout_start.date()}), {counts['negative_clipped']} negative product-weeks clipped, "
          f"{counts['empty_weeks']} week(s) without sales; {time.perf_counter() - t0:.1f} s")
    panel, model, result = train_and_evaluate(scratch, params, features, counts, args.seed, args.epochs,
                                              classical=not args.fast)
    print_table(result, params, references)
    print("   daily shape (share of pre-cutoff units by weekday): "
          + ", ".join(f"{day} {share:.3f}" for day, share in result["daily_shape"].items()))
    anchor, horizon = params.train_weeks, params.horizon_weeks
    rows = np.flatnonzero(panel.active(anchor))
    flat = model.forecast(model_inputs(panel, rows, np.full(len(rows), anchor), model.history_len, model.horizon,
                                       model.seasonal, np.ones((len(rows), model.horizon))))
    no_plan = forecast_metrics(panel.units[rows, anchor:anchor + horizon], flat[0][:, :horizon], flat[1][:, :horizon])
    print(f"   demand model with no price plan (every forecast week at the usual price): WAPE {no_plan['wape']:.3f}, "
          f"p90 coverage {no_plan['coverage_p90']:.3f}; price response on the holdout's discounted product-weeks: "
          f"{result['model']['price_response']}")
    m = result["model"]
    if not references:  # the validation month: figures to choose on, no target
        print(f"   validation month: demand model WAPE {m['wape']:.4f}, bias {m['bias']:+.4f}, p90 coverage "
              f"{m['coverage_p90']:.3f}; total {time.perf_counter() - t0:.0f} s")
        return
    wape_ok = m["wape"] <= TARGET_WAPE
    cov_ok = TARGET_COVERAGE[0] <= m["coverage_p90"] <= TARGET_COVERAGE[1]
    print(f"\n   target WAPE <= {TARGET_WAPE}: {'met' if wape_ok else 'MISSED'} ({m['wape']:.4f}, bias {m['bias']:+.4f}); "
          f"p90 coverage in {TARGET_COVERAGE}: {'met' if cov_ok else 'MISSED'} ({m['coverage_p90']:.3f}); "
          f"total {time.perf_counter() - t0:.0f} s")


def run_generated(scratch: Path, seed: int, epochs: int | None, days: int, orders_per_day: int) -> None:
    """Generated orders: the model beside the baselines, and its promotion response beside the truth."""
    t0 = time.perf_counter()
    start = date(2024, 1, 1)
    tables, world = generated_tables(seed + 15, start, days, orders_per_day)
    params = DemandParams(day=start + timedelta(days=days - 1), window_days=days, holdout_days=28, history_len=13)
    features, counts = build_features(tables, params)
    print(f"\n\n== generated orders: {days} days from {start}, {orders_per_day}/day, seed {seed + 15}: "
          f"{tables['orders'].num_rows:,} orders, {counts['products']:,} products x {params.weeks} weeks; "
          f"{time.perf_counter() - t0:.1f} s")
    panel, model, result = train_and_evaluate(scratch, params, features, counts, seed, epochs)
    print_table(result, params, {})
    rows = np.flatnonzero(panel.active(params.train_weeks))
    promoted, truth, notes = true_promotion_change(world, panel, rows)
    estimate = price_response(panel, model, rows, promoted)
    print("   promotions in the holdout: " + ("; ".join(notes) or "none"))
    est = estimate["estimated_change"]
    print(f"   change in demand of the promoted categories' product-weeks ({estimate['product_weeks']} product-weeks, "
          f"mean planned price {estimate.get('mean_relative_price', float('nan')):.3f} of list): model "
          f"{'-' if est is None else f'{est:+.1%}'} (p50 at the promotion prices vs the usual price), generator's true "
          f"value {truth:+.1%}")


if __name__ == "__main__":
    main()
