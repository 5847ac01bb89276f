"""Forecast metrics and classical baselines for weekly demand (numpy only, hand-checkable).

All metrics are over product-weeks of the holdout, pooled (a wholesale shop's value is in its big
movers, so errors are weighted by volume, as WAPE is):

* ``wape`` = Σ|y − p50| / Σy; ``bias`` = (Σp50 − Σy) / Σy (positive: over-forecast).
* ``mase`` = mean |y − p50| over the holdout / mean |y_t − y_{t−1}| over the training weeks of the
  same products (the in-sample one-step naive error, pooled over the panel, Hyndman & Koehler 2006).
* ``pinball_p50`` / ``pinball_p90`` = Σ pinball loss at that quantile / Σy, and ``pinball`` their mean;
  a baseline without a p90 has only ``pinball_p50``.
* ``coverage_p90`` = share of product-weeks with y ≤ p90 (0.9 for a calibrated p90).

Baselines (what the shop would do without a model): ``naive_last_week`` (last week repeated),
``moving_average_4w`` and ``moving_average_13w`` (the mean of the last 4 / 13 weeks, each held flat
over the horizon), and the classical forecasters for intermittent demand from statsforecast
(:func:`classical_baselines`): ``auto_ets`` (AutoETS, no season: one year of weeks cannot fit a
yearly one), ``croston_optimized`` and ``tsb`` (Teunter-Syntetos-Babai). statsforecast is an
optional dependency: 2.0.1 is the newest release that resolves with the pinned pandas 3 (2.1 asks
for pandas < 3); where it is not installed the evaluation says so in ``classical`` and runs the
simple baselines only, never a hand-written copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ecom_ml.errors import EcomError

BASELINE_WINDOWS: dict[str, int] = {"naive_last_week": 1, "moving_average_4w": 4, "moving_average_13w": 13}
TOP_PRODUCTS = 100
#: A forecast week whose planned price is this far under the usual price counts as a promotion.
PROMOTION_DISCOUNT = 0.02
#: TSB's smoothing of demand size and of demand probability. statsforecast fits neither; 0.1 is the
#: common textbook choice for weekly intermittent series (slow updates of a sparse signal).
TSB_ALPHA_D = 0.1
TSB_ALPHA_P = 0.1


class DemandEvaluationError(EcomError):
    """The holdout cannot be scored (no sales at all, shapes that disagree)."""


def pinball(actual: np.ndarray, forecast: np.ndarray, q: float) -> np.ndarray:
    """Elementwise pinball (quantile) loss: q·(y−f) when under-forecast, (1−q)·(f−y) when over."""
    diff = np.asarray(actual, dtype=np.float64) - np.asarray(forecast, dtype=np.float64)
    return np.maximum(q * diff, (q - 1) * diff)


def baselines(known: np.ndarray, horizon: int) -> dict[str, np.ndarray]:
    """p50 of each baseline, (P, horizon), from the (P, T) weekly units known at the cutoff.

    A product with fewer than the window's weeks of data is averaged over the weeks there are
    (weeks before the lake window read as 0 would call a new product's demand lower than it is).
    """
    known = np.asarray(known, dtype=np.float64)
    if known.shape[1] == 0:
        raise DemandEvaluationError("no week before the cutoff to compute baselines from")
    out = {}
    for name, window in BASELINE_WINDOWS.items():
        level = known[:, -min(window, known.shape[1]):].mean(axis=1)
        out[name] = np.repeat(level[:, None], horizon, axis=1)
    return out


def classical_baselines(known: np.ndarray, horizon: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(p50 by name, note)``: statsforecast's AutoETS, CrostonOptimized and TSB fitted to each
    product's weekly series (P, T) known at the cutoff, forecasting ``horizon`` weeks.

    Their point forecasts are means, used as p50 like the moving averages. ``note`` says which
    library version ran and how long it took, or why nothing ran (statsforecast not installed).
    Series are fitted one process, one thread (``n_jobs=1``): the nightly worker shares its CPUs.
    """
    import time

    try:
        import statsforecast
        from statsforecast import StatsForecast
        from statsforecast.models import TSB, AutoETS, CrostonOptimized
    except ImportError as exc:
        return {}, {"skipped": f"statsforecast is not installed ({exc}); pin statsforecast==2.0.1 to run "
                               f"auto_ets, croston_optimized and tsb"}
    import pandas as pd

    known = np.asarray(known, dtype=np.float64)
    n, weeks = known.shape
    if n == 0 or weeks < 2:
        return {}, {"skipped": f"{weeks} week(s) before the cutoff: the classical forecasters need at least 2"}
    started = time.perf_counter()
    frame = pd.DataFrame({"unique_id": np.repeat(np.arange(n), weeks), "ds": np.tile(np.arange(weeks), n),
                          "y": known.ravel()})
    models = {"auto_ets": AutoETS(season_length=1, alias="auto_ets"),
              "croston_optimized": CrostonOptimized(alias="croston_optimized"),
              "tsb": TSB(alpha_d=TSB_ALPHA_D, alpha_p=TSB_ALPHA_P, alias="tsb")}
    forecast = StatsForecast(models=list(models.values()), freq=1, n_jobs=1).forecast(df=frame, h=horizon)
    forecast = forecast.sort_values(["unique_id", "ds"])
    out = {name: np.clip(forecast[name].to_numpy(dtype=np.float64).reshape(n, horizon), 0, None) for name in models}
    return out, {"library": f"statsforecast {statsforecast.__version__}",
                 "seconds": round(time.perf_counter() - started, 1)}


def naive_scale(known: np.ndarray) -> float:
    """Mean absolute one-step naive error over the training weeks (MASE's denominator)."""
    known = np.asarray(known, dtype=np.float64)
    if known.shape[1] < 2:
        return float("nan")
    return float(np.abs(np.diff(known, axis=1)).mean())


def forecast_metrics(actual: np.ndarray, p50: np.ndarray, p90: np.ndarray | None = None,
                     scale: float = float("nan")) -> dict[str, float]:
    """The module's metrics of one forecast against the actuals (same shape)."""
    actual = np.asarray(actual, dtype=np.float64)
    p50 = np.asarray(p50, dtype=np.float64)
    total = float(actual.sum())
    if actual.shape != p50.shape:
        raise DemandEvaluationError(f"forecast shape {p50.shape} does not match the actuals {actual.shape}")
    out: dict[str, float] = {"actual_units": total, "forecast_units": float(p50.sum()),
                             "product_weeks": int(actual.size)}
    if total <= 0:
        nan = float("nan")
        out.update(wape=nan, bias=nan, mase=nan, pinball_p50=nan)
    else:
        abs_err = np.abs(actual - p50)
        out["wape"] = float(abs_err.sum() / total)
        out["bias"] = float((p50.sum() - total) / total)
        out["mase"] = float(abs_err.mean() / scale) if scale > 0 else float("nan")
        out["pinball_p50"] = float(pinball(actual, p50, 0.5).sum() / total)
    if p90 is not None:
        p90 = np.asarray(p90, dtype=np.float64)
        out["coverage_p90"] = float((actual <= p90).mean()) if actual.size else float("nan")
        if total > 0:
            out["pinball_p90"] = float(pinball(actual, p90, 0.9).sum() / total)
            out["pinball"] = (out["pinball_p50"] + out["pinball_p90"]) / 2
    return out


def slices(volume: np.ndarray, new: np.ndarray, top: int = TOP_PRODUCTS) -> dict[str, np.ndarray]:
    """Row masks: ``top100`` by volume before the cutoff vs ``rest``, and ``new`` products."""
    volume = np.asarray(volume, dtype=np.float64)
    order = np.argsort(-volume, kind="stable")
    is_top = np.zeros(len(volume), dtype=bool)
    is_top[order[:top]] = True
    return {f"top{top}": is_top, "rest": ~is_top, "new": np.asarray(new, dtype=bool)}


def score(actual: np.ndarray, p50: np.ndarray, p90: np.ndarray | None, scale: float,
          masks: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Overall metrics plus ``slices`` (wape, bias, coverage_p90 and size of each)."""
    result: dict[str, Any] = forecast_metrics(actual, p50, p90, scale)
    result["slices"] = {}
    for name, mask in masks.items():
        part = forecast_metrics(actual[mask], p50[mask], p90[mask] if p90 is not None else None, scale)
        result["slices"][name] = {key: part[key] for key in ("wape", "bias", "coverage_p90", "actual_units")
                                  if key in part}
        result["slices"][name]["products"] = int(mask.sum())
    return result


def price_response(panel: Any, model: Any, rows: np.ndarray, promoted: np.ndarray | None = None) -> dict[str, Any]:
    """The model's estimated change in demand during promotions on the holdout: its p50 with the
    weeks' price plan against its p50 for the same product-weeks at the usual price (plan 1).

    ``promoted`` (len(rows), horizon): the product-weeks to sum over; by default those planned at
    least :data:`PROMOTION_DISCOUNT` under the usual price. ``estimated_change`` = Σ p50(plan) /
    Σ p50(usual) − 1 over them (0.25: a quarter more units); None where no week is promoted.
    """
    from ecom_ml.demand.features import model_inputs, price_plan

    anchor, horizon = panel.params.train_weeks, panel.params.horizon_weeks
    anchors = np.full(len(rows), anchor)
    plan = price_plan(panel, rows, anchors, model.horizon)
    if promoted is None:
        promoted = plan[:, :horizon] <= 1 - PROMOTION_DISCOUNT
    promoted = np.asarray(promoted, dtype=bool)
    out: dict[str, Any] = {"product_weeks": int(promoted.sum()), "estimated_change": None}
    if not promoted.any():
        return out
    at_plan, _ = model.forecast(model_inputs(panel, rows, anchors, model.history_len, model.horizon, model.seasonal, plan))
    usual, _ = model.forecast(model_inputs(panel, rows, anchors, model.history_len, model.horizon, model.seasonal,
                                           np.ones_like(plan)))
    at_plan, usual = at_plan[:, :horizon][promoted], usual[:, :horizon][promoted]
    out.update(mean_relative_price=round(float(plan[:, :horizon][promoted].mean()), 4),
               p50_at_plan=float(at_plan.sum()), p50_at_usual_price=float(usual.sum()),
               estimated_change=float(at_plan.sum() / usual.sum() - 1) if usual.sum() > 0 else None)
    return out


def evaluate_panel(panel: Any, models: Mapping[str, Any], classical_forecasters: bool = True) -> dict[str, Any]:
    """Baselines and every model (``role -> forecaster``) on the holdout weeks of ``panel``.

    Scored: products sold in the 13 weeks before the cutoff (``Panel.active``); actuals are today's
    state of the orders, inputs what was known at the cutoff, and the forecast weeks' price plan
    (``price_response``: what the model makes of the promotions in it). A model whose horizon is shorter than
    the holdout is one line, not a partial score.
    """
    from ecom_ml.demand.features import model_inputs

    params = panel.params
    anchor, horizon = params.train_weeks, params.horizon_weeks
    rows = np.flatnonzero(panel.active(anchor))
    if len(rows) == 0:
        raise DemandEvaluationError(f"demand {params.day}: no product sold in the 13 weeks before the holdout "
                                    f"({params.holdout_start.date()}): nothing to evaluate")
    actual = panel.units[rows, anchor:anchor + horizon]
    if actual.sum() <= 0:
        raise DemandEvaluationError(f"demand {params.day}: no units sold in the {horizon}-week holdout from "
                                    f"{params.holdout_start.date()}: WAPE is undefined, the gate cannot decide")
    known = panel.known(anchor)[rows]
    scale = naive_scale(known)
    volume = known[:, -13:].sum(axis=1)
    masks = slices(volume, panel.new(anchor)[rows])
    history = known[:, panel.first_order_week():]  # weeks before the lake's first order are not zeros
    classical, note = classical_baselines(history, horizon) if classical_forecasters else ({}, {"skipped": "not asked"})
    out: dict[str, Any] = {"products": int(len(rows)), "horizon_weeks": horizon,
                           "daily_shape": dict(zip(("mon", "tue", "wed", "thu", "fri", "sat", "sun"),
                                                   (round(float(v), 4) for v in panel.daily_shape), strict=True)),
                           "baselines": {name: score(actual, p50, None, scale, masks)
                                         for name, p50 in {**baselines(known, horizon), **classical}.items()},
                           "classical": note}
    for role, model in models.items():
        if model.horizon < horizon:
            raise DemandEvaluationError(f"the {role} forecasts {model.horizon} week(s); the holdout has {horizon}")
        p50, p90 = model.forecast(model_inputs(panel, rows, np.full(len(rows), anchor), model.history_len, model.horizon,
                                                  model.seasonal))
        out[role] = score(actual, p50[:, :horizon], p90[:, :horizon], scale, masks)
        out[role]["price_response"] = price_response(panel, model, rows)
    return out
