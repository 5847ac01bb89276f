"""Drift of the inputs the models use, against a reference: one statistic per input type.

Inputs (``drift_inputs``): per line the unit price, quantity and category, and whether its product
is new (created within ``NEW_PRODUCT_DAYS`` before the order); per order the basket size (lines); per
*customer* (of the orders compared) the country and whether the customer is new (created no more than
a day before the order). Country and newness are properties of the customer, and one wholesale
customer placing five orders in a day is one draw, not five: counted per order, a single Swedish
customer's busy day made the country mix "drift" significantly (measured on the real year). Numeric inputs are binned
on the *reference's* quantiles (so every bin holds about the same share of the reference, and a
heavy tail such as wholesale quantities does not collapse into one bin) and compared with the
population stability index (PSI; 0.1 is a small, 0.25 a significant shift) and the Jensen-Shannon
distance; categorical inputs and shares with the Jensen-Shannon distance (base 2, in [0, 1]) over the
reference's most frequent values plus "other". scipy computes the divergences.

A day of a small shop holds a few dozen orders, and the divergence of a few dozen draws from the
very same distribution is not small (the country mix of 40 orders moves by chance). So an input
drifts only when the effect is large (statistic above its threshold) *and* unlikely to be chance:
a two-sample Kolmogorov-Smirnov test (numeric) or a chi-square test of homogeneity (categorical)
below ``drift.significance`` in ``quality.yaml``. On training windows (thousands of rows) the test is
always significant for a real shift, and the effect size decides.

Two callers: the daily check (a day against its trailing open validated days) and training
(``window_drift``: the new feature window against the champion's training window).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import chi2_contingency, ks_2samp

from ecom_ml.quality.config import QualityConfig
from ecom_ml.quality.report import RuleResult

#: A product created within this many days before an order counts as new.
NEW_PRODUCT_DAYS = 30
#: Proportions are floored at this before PSI (an empty bin would make it infinite).
EPSILON = 1e-4

NUMERIC = ("unit_price", "quantity", "basket_size")
CATEGORICAL = ("category_mix", "country_mix", "new_customer_share", "new_product_share")
INPUTS = NUMERIC + CATEGORICAL


class DriftInputError(ValueError):
    """The tables given to drift cannot provide the inputs (a missing table or column)."""


def drift_inputs(tables: Mapping[str, pa.Table], order_filter: pa.ChunkedArray | None = None) -> dict[str, np.ndarray]:
    """The model inputs of ``tables`` (the lake's four tables), optionally only for orders where the mask holds."""
    try:
        orders, items = tables["orders"], tables["order_items"]
        customers, products = tables["customers"], tables["products"]
    except KeyError as exc:
        raise DriftInputError(f"drift: table {exc.args[0]} missing") from None
    if order_filter is not None:
        orders = orders.filter(order_filter)
    items = items.filter(pc.is_in(items.column("order_id"), value_set=orders.column("order_id")))
    o = orders.select(["order_id", "customer_id", "country", "created_at"]).to_pandas()
    i = items.select(["order_id", "product_id", "quantity", "unit_price"]).to_pandas()
    c = customers.select(["customer_id", "created_at"]).to_pandas().drop_duplicates("customer_id", keep="last")
    p = products.select(["product_id", "category", "created_at"]).to_pandas().drop_duplicates("product_id", keep="last")
    i = i.merge(o[["order_id", "created_at"]], on="order_id", how="left")
    i = i.merge(p.rename(columns={"created_at": "product_created"}), on="product_id", how="left")
    o = o.merge(c.rename(columns={"created_at": "customer_created"}), on="customer_id", how="left")
    # One row per customer (its first order here); guest orders (no customer) count one each.
    o = o.sort_values(["created_at", "order_id"], kind="stable")
    per_customer = o[o["customer_id"].isna() | ~o["customer_id"].duplicated()]
    new_customer = (per_customer["created_at"] - per_customer["customer_created"]).dt.total_seconds() < 86400
    new_product = (i["created_at"] - i["product_created"]).dt.total_seconds() < NEW_PRODUCT_DAYS * 86400
    basket = i.groupby("order_id").size()
    return {
        "unit_price": i["unit_price"].astype(float).to_numpy(),
        "quantity": i["quantity"].astype(float).to_numpy(),
        "basket_size": basket.to_numpy(dtype=float),
        "category_mix": i["category"].fillna("(none)").astype(str).to_numpy(),
        "country_mix": per_customer["country"].fillna("(none)").astype(str).to_numpy(),
        "new_customer_share": np.where(new_customer.fillna(False), "new", "returning"),
        "new_product_share": np.where(new_product.fillna(False), "new", "established"),
    }


@dataclass(frozen=True)
class Drift:
    """One input's drift: the configured statistic's value and both statistics for the record."""

    input: str
    statistic: str
    value: float | None
    psi: float | None
    js: float | None
    reference_n: int
    current_n: int
    summary: str
    #: Of the KS (numeric) or chi-square (categorical) test: how likely a difference this large is by chance.
    p_value: float | None = None

    def drifted(self, threshold: float, significance: float) -> bool:
        return (self.value is not None and self.value > threshold
                and self.p_value is not None and self.p_value < significance)

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "statistic": self.statistic, "value": self.value, "psi": self.psi,
                "js": self.js, "p_value": self.p_value, "reference_n": self.reference_n,
                "current_n": self.current_n, "summary": self.summary}


def _psi(ref: np.ndarray, cur: np.ndarray) -> float:
    r, c = np.maximum(ref, EPSILON), np.maximum(cur, EPSILON)
    return float(np.sum(rel_entr(c, r) + rel_entr(r, c)))


def _js(ref: np.ndarray, cur: np.ndarray) -> float:
    return float(jensenshannon(ref, cur, base=2))


def numeric_drift(name: str, ref: np.ndarray, cur: np.ndarray, bins: int, statistic: str) -> Drift:
    ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if len(ref) == 0 or len(cur) == 0:
        return Drift(name, statistic, None, None, None, len(ref), len(cur), "no values to compare")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1))[1:-1])
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1) / len(ref)
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1) / len(cur)
    psi, js = _psi(r, c), _js(r, c)
    p_value = float(ks_2samp(ref, cur).pvalue)
    summary = f"median {np.median(cur):,.2f} vs {np.median(ref):,.2f}; {len(edges) + 1} quantile bins"
    return Drift(name, statistic, psi if statistic == "psi" else js, psi, js, len(ref), len(cur), summary, p_value)


def categorical_drift(name: str, ref: np.ndarray, cur: np.ndarray, top: int, statistic: str) -> Drift:
    if len(ref) == 0 or len(cur) == 0:
        return Drift(name, statistic, None, None, None, len(ref), len(cur), "no values to compare")
    values, counts = np.unique(ref, return_counts=True)
    keep = list(values[np.argsort(-counts, kind="stable")[:top]])
    def counts_of(x: np.ndarray) -> np.ndarray:
        known = np.isin(x, keep)
        return np.array([np.sum(x == v) for v in keep] + [np.sum(~known)], dtype=float)

    rc, cc = counts_of(ref), counts_of(cur)
    r, c = rc / len(ref), cc / len(cur)
    psi, js = _psi(r, c), _js(r, c)
    table = np.vstack([rc, cc])[:, (rc + cc) > 0]
    p_value = float(chi2_contingency(table).pvalue) if table.shape[1] > 1 else 1.0
    lead = int(np.argmax(np.abs(c - r)))
    label = keep[lead] if lead < len(keep) else "other"
    summary = f"largest change: {label} {c[lead]:.1%} vs {r[lead]:.1%}"
    return Drift(name, statistic, psi if statistic == "psi" else js, psi, js, len(ref), len(cur), summary, p_value)


def compare(reference: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray], config: QualityConfig
            ) -> list[Drift]:
    """Every input's drift, with the statistic ``quality.yaml`` names for it."""
    out = []
    for name in INPUTS:
        statistic = config.rule(f"drift.{name}")["statistic"]
        if name in NUMERIC:
            out.append(numeric_drift(name, reference[name], current[name], config.drift.bins, statistic))
        else:
            out.append(categorical_drift(name, reference[name], current[name], config.drift.top_categories, statistic))
    return out


def concat_inputs(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts]) if parts else np.array([]) for name in INPUTS}


def drift_results(current: Mapping[str, np.ndarray], reference: Sequence[Mapping[str, np.ndarray]],
                  config: QualityConfig, why_none: str = "") -> list[RuleResult]:
    """The ``drift.*`` rules of one day: each input against the concatenated reference days."""
    results = []
    enough = len(reference) >= config.drift.min_reference_days
    drifts = compare(concat_inputs(reference), current, config) if enough and len(current["unit_price"]) else []
    by_input = {d.input: d for d in drifts}
    for name in INPUTS:
        rule = f"drift.{name}"
        s = config.rule(rule)
        statistic = "PSI" if s["statistic"] == "psi" else "Jensen-Shannon distance"
        description = (f"{statistic}: {name.replace('_', ' ')} against {len(reference)} previous open day(s); "
                       f"drifts when above the threshold and significant (p < {config.drift.significance:g})")
        base = {"rule": rule, "table": "drift", "severity": config.severity(rule), "description": description,
                "threshold": f"≤ {s['threshold']:g}"}
        d = by_input.get(name)
        if d is None or d.value is None:
            if not enough:
                reason = why_none or (f"no reference: {len(reference)} open day(s) in the previous "
                                      f"{config.drift.window_days} days (need {config.drift.min_reference_days})")
            else:
                reason = "no orders created in the day"
            results.append(RuleResult(success=None, observed=None, detail=f"not evaluated: {reason}", **base))
            continue
        results.append(RuleResult(success=not d.drifted(s["threshold"], config.drift.significance),
                                  observed=round(d.value, 4),
                                  detail=f"PSI {d.psi:.3f}, JS {d.js:.3f}, p {d.p_value:.2g}; {d.summary}", **base))
    return results


def window_drift(reference_tables: Mapping[str, pa.Table], current_tables: Mapping[str, pa.Table],
                 config: QualityConfig | None = None) -> dict[str, Any]:
    """Drift of a training window against another (e.g. the champion's training window), as JSON.

    Both arguments are the lake's four tables as ``ecom_ml.ingest.current.current_orders`` returns
    them. The result, for ``evaluation.json``::

        {"inputs": {"unit_price": {"statistic": "psi", "value": 0.03, "psi": ..., "js": ...,
                                   "threshold": 0.25, "drifted": false, ...}, ...},
         "drifted": ["country_mix"], "severity": {"country_mix": "warning"}}
    """
    config = config or QualityConfig.load()
    drifts = compare(drift_inputs(reference_tables), drift_inputs(current_tables), config)
    inputs, drifted = {}, []
    for d in drifts:
        s = config.rule(f"drift.{d.input}")
        flag = d.drifted(s["threshold"], config.drift.significance)
        inputs[d.input] = {**d.to_dict(), "threshold": s["threshold"], "severity": config.severity(f"drift.{d.input}"),
                           "drifted": flag}
        if flag:
            drifted.append(d.input)
    return {"inputs": inputs, "drifted": drifted}


def render_markdown(drift: Mapping[str, Any]) -> str:
    """The drift section of a gate report, from ``window_drift``'s result."""
    lines = ["## Drift of the training window against the champion's", "",
             "| Input | Statistic | Value | Threshold | Drifted | Detail |", "| --- | --- | --- | --- | --- | --- |"]
    for name, d in drift.get("inputs", {}).items():
        value = "" if d.get("value") is None else f"{d['value']:.4f}"
        lines.append(f"| {name} | {d['statistic']} | {value} | {d['threshold']:g} | "
                     f"{'**yes**' if d.get('drifted') else 'no'} | {d.get('summary', '')} |")
    return "\n".join(lines) + "\n"
