"""Prices checked against each product's own history, and list prices against their own past.

A bound derived from the day's catalogue (a percentile of the referenced products' list prices) is
wrong twice over: one genuinely expensive product quarantines nothing but lets a 1e9 line through on
a small day, and raising two list prices to 1e9 launders any line. So each line is compared with its
product: the median of its unit prices in the validated lake over the trailing window, in log space
(prices are multiplicative: a wholesale tier at half price is as far as a surcharge at double), with
a robust scale (1.4826 × MAD) that has a floor, because a product that always sold at one price has a
MAD of 0. A product with too few past sales is compared with its list price, and list prices have
their own rule (absolute bounds; change against the product's previous list price in the lake), whose
failures quarantine the product and its lines, so the catalogue can never raise the bar.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ecom_ml.quality.config import QualityConfig
from ecom_ml.quality.frames import sample_rows
from ecom_ml.quality.report import RuleResult

#: 1.4826 × MAD estimates the standard deviation of normally distributed data.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class PriceHistory:
    """The validated past the price rules compare with (built by ``ecom_ml.quality.history``).

    ``lines``: product_id, unit_price (float64) of the lines of orders created in the trailing
    window. ``list_prices``: product_id, price (float64): each product's latest list price before the day.
    """

    lines: pa.Table
    list_prices: pa.Table

    @classmethod
    def empty(cls) -> PriceHistory:
        return cls(pa.table({"product_id": pa.array([], pa.int64()), "unit_price": pa.array([], pa.float64())}),
                   pa.table({"product_id": pa.array([], pa.int64()), "price": pa.array([], pa.float64())}))


def _profiles(history: PriceHistory) -> pd.DataFrame:
    """Per product: sales count, median and robust scale of log unit price (positive prices only)."""
    frame = history.lines.to_pandas()
    frame = frame[frame["unit_price"] > 0]
    if frame.empty:
        return pd.DataFrame(columns=["sales", "median", "mad"], index=pd.Index([], name="product_id"))
    frame = frame.assign(log=np.log(frame["unit_price"].to_numpy(dtype=float)))
    grouped = frame.groupby("product_id")["log"]
    median = grouped.median()
    mad = (frame["log"] - frame["product_id"].map(median)).abs().groupby(frame["product_id"]).median()
    return pd.DataFrame({"sales": grouped.size(), "median": median, "mad": MAD_TO_SIGMA * mad})


def price_outliers(tables: Mapping[str, pa.Table], history: PriceHistory, config: QualityConfig) -> RuleResult:
    """Lines whose unit price is more than ``max_deviation`` robust scales from their product's median."""
    rule = "order_items.unit_price_outlier"
    s = config.rule(rule)
    k, floor, min_sales = s["max_deviation"], s["scale_floor"], s["min_sales"]
    items, products = tables["order_items"], tables["products"]
    description = (f"unit_price within {k:g} robust scales (log price, scale ≥ {floor:g}) of the product's median "
                   f"over the previous {s['window_days']} days; the list price for products with < {min_sales} sales")
    product = items.column("product_id").to_numpy(zero_copy_only=False)
    price = pc.cast(items.column("unit_price"), pa.float64()).to_numpy(zero_copy_only=False)
    profiles = _profiles(history)
    known = profiles[profiles["sales"] >= min_sales]
    idx = pd.Index(known.index)
    pos = idx.get_indexer(product)
    has_history = pos >= 0
    centre = np.full(len(product), np.nan)
    scale = np.full(len(product), floor)
    centre[has_history] = known["median"].to_numpy()[pos[has_history]]
    scale[has_history] = np.maximum(known["mad"].to_numpy()[pos[has_history]], floor)
    # No (or too little) history: the day's list price of the product, checked by products.list_price.
    lists = pd.Series(pc.cast(products.column("price"), pa.float64()).to_numpy(zero_copy_only=False),
                      index=products.column("product_id").to_numpy(zero_copy_only=False))
    lists = lists[~lists.index.duplicated()]
    fallback = pd.Index(lists.index).get_indexer(product)
    use_list = ~has_history & (fallback >= 0)
    list_values = lists.to_numpy()[fallback[use_list]]
    centre[use_list] = np.where(list_values > 0, np.log(np.where(list_values > 0, list_values, 1.0)), np.nan)
    checkable = ~np.isnan(centre) & ~np.isnan(price)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(price > 0, np.log(np.where(price > 0, price, 1.0)), -np.inf)
        deviation = np.abs(logs - centre) / scale
    # A non-positive price is the unit_price_non_negative rule's (or a free line's) business, not an outlier
    # of the distribution; a zero price of a product that sells for money is an outlier (log 0 = -inf).
    bad = checkable & (price >= 0) & (deviation > k)
    positions = np.flatnonzero(bad)
    n_hist, n_list = int((has_history & checkable).sum()), int((use_list & checkable).sum())
    detail = (f"{len(positions):,} line(s) more than {k:g} robust scales from their product's median price "
              f"({n_hist:,} line(s) checked against the product's history, {n_list:,} against its list price, "
              f"{len(product) - n_hist - n_list:,} without a reference)")
    sample = sample_rows(items, positions[: config.sample_rows], config.sample_rows)
    for row, p in zip(sample, positions[: config.sample_rows], strict=False):
        row["reference_price"] = round(float(np.exp(centre[p])), 2)
        row["reference"] = "history" if has_history[p] else "list price"
    return RuleResult(rule=rule, table="order_items", severity=config.severity(rule), success=len(positions) == 0,
                      observed=len(positions), threshold="0", description=description, sample=sample, detail=detail,
                      rows=tuple(int(p) for p in positions))


def list_prices(tables: Mapping[str, pa.Table], history: PriceHistory, config: QualityConfig) -> RuleResult:
    """List prices outside the absolute bounds, or changed by more than ``max_change`` since last seen."""
    rule = "products.list_price"
    s = config.rule(rule)
    products = tables["products"]
    price = pc.cast(products.column("price"), pa.float64()).to_numpy(zero_copy_only=False)
    ids = products.column("product_id").to_numpy(zero_copy_only=False)
    previous = pd.Series(history.list_prices.column("price").to_numpy(zero_copy_only=False),
                         index=history.list_prices.column("product_id").to_numpy(zero_copy_only=False))
    previous = previous[~previous.index.duplicated(keep="last")]
    pos = pd.Index(previous.index).get_indexer(ids)
    before = np.where(pos >= 0, previous.to_numpy()[np.maximum(pos, 0)] if len(previous) else np.nan, np.nan)
    out_of_bounds = (price < s["low"]) | (price > s["high"])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(before > 0, np.maximum(price / before, before / price), np.where(before == 0, 1.0, np.nan))
    jumped = ~np.isnan(ratio) & (ratio > s["max_change"])
    bad = (out_of_bounds | jumped) & ~np.isnan(price)
    positions = np.flatnonzero(bad)
    detail = (f"{len(positions):,} product(s) with a list price outside [{s['low']:,.2f}, {s['high']:,.2f}] "
              f"({int(out_of_bounds.sum()):,}) or changed more than {s['max_change']:g}× against the lake "
              f"({int(jumped.sum()):,})")
    sample = sample_rows(products, positions[: config.sample_rows], config.sample_rows)
    for row, p in zip(sample, positions[: config.sample_rows], strict=False):
        row["previous_price"] = None if np.isnan(before[p]) else round(float(before[p]), 2)
    return RuleResult(rule=rule, table="products", severity=config.severity(rule), success=len(positions) == 0,
                      observed=len(positions), threshold="0",
                      description=f"list price in [{s['low']:,.2f}, {s['high']:,.2f}] and within {s['max_change']:g}× "
                                  "of the product's previous list price in the lake",
                      sample=sample, detail=detail, rows=tuple(int(p) for p in positions))
