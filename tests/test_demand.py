"""The demand kind's parts on hand-built data, every expected value computed by hand: weekly
features (net of cancelled/refunded orders, as of the cutoff, clipped negatives counted, calendar),
metrics, baselines, the gate's lower-is-better primary and coverage band, and the one-line errors."""

from __future__ import annotations

from datetime import date, datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from ecom_ml.demand.evaluation import (DemandEvaluationError, baselines, evaluate_panel, forecast_metrics,
                                       naive_scale, pinball, slices)
from ecom_ml.demand.features import (DemandFeatureError, DemandParams, Panel, build_features, model_inputs,
                                     numeric_width)
from ecom_ml.errors import EcomError

TS = pa.timestamp("us", tz="UTC")
# 9 weeks ending Sunday 2024-01-28: week 0 starts Monday 2023-11-27; the 4-week holdout starts 2024-01-01.
PARAMS = DemandParams(day=date(2024, 1, 28), window_days=63, holdout_days=28, history_len=3)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def tables() -> dict[str, pa.Table]:
    orders = [  # order_id, created, status now, updated
        (1, utc(2023, 11, 28, 10), "delivered", utc(2023, 11, 28, 10)),
        (2, utc(2023, 12, 5, 10), "delivered", utc(2023, 12, 5, 10)),
        (3, utc(2023, 12, 12, 10), "cancelled", utc(2024, 1, 3)),  # cancelled after the cutoff
        (4, utc(2023, 12, 13, 10), "refunded", utc(2023, 12, 20)),  # refunded before it
        (5, utc(2023, 12, 19, 10), "delivered", utc(2023, 12, 19, 10)),
        (6, utc(2024, 1, 2, 10), "delivered", utc(2024, 1, 2, 10)),
    ]
    history = [(o, "delivered" if o in (3, 4) else s, c) for o, c, s, _ in orders] + \
              [(o, s, u) for o, _, s, u in orders if o in (3, 4)]
    lines = [  # order, product, quantity, unit price
        (1, 1, 3, 10.0), (1, 2, 1, 5.0), (2, 1, 2, 8.0), (3, 1, 5, 10.0), (4, 2, 4, 5.0),
        (5, 2, -2, 5.0),  # a negative net quantity: clipped to 0 and counted
        (6, 1, 7, 10.0),
    ]
    return {
        "orders": pa.table({"order_id": pa.array([o[0] for o in orders], pa.int64()),
                            "customer_id": pa.array([7] * len(orders), pa.int64()),
                            "status": [o[2] for o in orders], "created_at": pa.array([o[1] for o in orders], TS),
                            "updated_at": pa.array([o[3] for o in orders], TS)}),
        "order_history": pa.table({"order_id": pa.array([h[0] for h in history], pa.int64()),
                                   "status": [h[1] for h in history], "updated_at": pa.array([h[2] for h in history], TS)}),
        "order_items": pa.table({"order_id": pa.array([x[0] for x in lines], pa.int64()),
                                 "product_id": pa.array([x[1] for x in lines], pa.int64()),
                                 "quantity": pa.array([x[2] for x in lines], pa.int32()),
                                 "unit_price": pa.array([x[3] for x in lines], pa.float64())}),
        "products": pa.table({"product_id": pa.array([1, 2, 3], pa.int64()), "category": ["mugs", "toys", "toys"],
                              "price": pa.array([10.0, 5.0, 1.0])}),
    }


def test_weekly_units_are_net_of_cancelled_and_refunded_orders_as_of_the_cutoff():
    built, counts = build_features(tables(), PARAMS)
    panel = Panel.from_tables(PARAMS, built)
    assert PARAMS.holdout_start == utc(2024, 1, 1) and PARAMS.train_weeks == 5
    assert panel.product_ids.tolist() == [1, 2]  # product 3 never sold: not a series
    assert panel.units.tolist() == [[3, 2, 0, 0, 0, 7, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0, 0]]
    # Order 3 was still a sale at the cutoff; holdout weeks have no at-cutoff units at all.
    assert panel.units_at_cutoff[:, :5].tolist() == [[3, 2, 5, 0, 0], [1, 0, 0, 0, 0]]
    assert np.isnan(panel.units_at_cutoff[:, 5:]).all()
    assert panel.known(5).tolist() == [[3, 2, 5, 0, 0], [1, 0, 0, 0, 0]]
    assert panel.rel_price[0, :2].tolist() == [1.0, 0.8] and panel.rel_price[0, 3] == 1.0
    # Order 3 (cancelled after the cutoff) still prices week 2; order 4 (refunded before) does not.
    prices = built["weekly"].column("avg_price").to_pylist()  # rows: product 1 weeks 0-8, product 2 weeks 0-8
    assert prices[2] == 10.0 and prices[9 + 2] is None and panel.rel_price[1, 2] == 1.0
    assert counts == {"products": 2, "weeks": 9, "lines_kept": 5, "lines_not_sold": 2, "negative_clipped": 1,
                      "empty_weeks": 6}
    assert panel.holiday_days.tolist() == [0, 0, 0, 1, 3, 1, 0, 0, 0]  # Dec 24 | Dec 25, 26, 31 | Jan 1
    assert panel.closed_days.tolist() == [6, 6, 5, 6, 7, 6, 7, 7, 7]
    assert panel.week_of_year[0] == 48 and panel.first_week.tolist() == [0, 0]
    # Units before the cutoff as they stood then: Tue 28 Nov 3+1, Tue 5 Dec 2, Tue 12 Dec 5 (cancelled
    # later), Tue 19 Dec -2 (clipped) -> all on Tuesdays.
    assert panel.daily_shape.tolist() == [0, 1, 0, 0, 0, 0, 0]


def test_model_inputs_read_only_what_was_known_before_the_anchor():
    built, _ = build_features(tables(), PARAMS)
    panel = Panel.from_tables(PARAMS, built)
    inputs = model_inputs(panel, np.array([0, 0]), np.array([5, 1]), history_len=3, horizon=4, seasonal=False)
    scale = inputs["scale"][:, 0]
    # lags [5, 0, 0] and [0, 0, 3] (padded); scale 1 + (mean + median) / 2
    assert scale.tolist() == pytest.approx([1 + (5 / 3 + 0) / 2, 1 + (1 + 0) / 2])
    numeric = inputs["numeric"]
    assert numeric[0, :3].tolist() == pytest.approx([5 / scale[0], 0, 0])
    assert numeric[1, :3].tolist() == pytest.approx([0, 0, 3 / scale[1]])
    assert numeric.shape[1] == numeric_width(3, 4, seasonal=False) == 2 * 3 + 4 + 3 + 4 + 4 + 3 + 2 + 2 + 4 + 1 + 3 + 3
    # The forecast weeks' price plan: the category's mean relative price (mugs at 8 of 10 in week 1).
    assert numeric[1, 17:21].tolist() == pytest.approx(np.log([0.8, 1, 1, 1]).tolist())
    assert numeric[0, 21:24].tolist() == pytest.approx([0, 0, 5 / scale[0]])  # the lags sorted
    # Order lines placed in weeks 2-4 before anchor 5: order 3's line counts though it was cancelled
    # later (it was placed); week 5 (the holdout) is never read.
    assert panel.known_lines(5)[0].tolist() == [1, 1, 1, 0, 0]
    assert numeric[0, 33:36].tolist() == pytest.approx([1 / (1 + 1 / 3), 0, 0])
    assert numeric[0, 37] == pytest.approx(np.log1p(5 / 1))  # units per line over the lag window
    assert model_inputs(panel, np.array([0]), np.array([5]), 3, 4, seasonal=True)["numeric"].shape[1] == \
        numeric_width(3, 4, seasonal=True) == 39 + 8


def test_metrics_by_hand():
    actual = np.array([[2.0, 0.0], [4.0, 4.0]])
    p50 = np.array([[1.0, 1.0], [4.0, 2.0]])
    p90 = np.array([[3.0, 1.0], [3.0, 5.0]])
    m = forecast_metrics(actual, p50, p90, scale=2.0)
    assert m["wape"] == pytest.approx(4 / 10)  # |1| + |1| + 0 + |2|
    assert m["bias"] == pytest.approx((8 - 10) / 10)
    assert m["mase"] == pytest.approx((4 / 4) / 2.0)
    assert m["pinball_p50"] == pytest.approx(0.5 * 4 / 10)
    # p90 errors: over by 1 (0.1), over by 1 (0.1), under by 1 (0.9), over by 1 (0.1) -> 1.2
    assert m["pinball_p90"] == pytest.approx(1.2 / 10)
    assert m["coverage_p90"] == pytest.approx(3 / 4)
    assert pinball(np.array([3.0]), np.array([1.0]), 0.9).tolist() == pytest.approx([1.8])


def test_baselines_and_naive_scale_by_hand():
    known = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 0.0, 0.0, 8.0]])
    found = baselines(known, horizon=2)
    assert found["naive_last_week"].tolist() == [[5, 5], [8, 8]]
    assert found["moving_average_4w"].tolist() == [[3.5, 3.5], [2, 2]]
    assert found["moving_average_13w"].tolist() == [[3, 3], [1.6, 1.6]]  # the 5 weeks there are
    assert naive_scale(known) == pytest.approx((4 * 1 + 8) / 8)
    masks = slices(np.array([5.0, 9.0, 1.0]), np.array([False, False, True]), top=1)
    assert masks["top1"].tolist() == [False, True, False] and masks["rest"].tolist() == [True, False, True]


def test_a_holdout_without_sales_is_one_line():
    built, _ = build_features(tables(), PARAMS)
    params = DemandParams(day=date(2024, 1, 28), window_days=63, holdout_days=28, history_len=3)
    panel = Panel.from_tables(params, built)
    empty = Panel(**{**panel.__dict__, "units": np.where(np.arange(9) >= 5, 0.0, panel.units)})
    with pytest.raises(DemandEvaluationError) as info:
        evaluate_panel(empty, {})
    assert str(info.value) == ("demand 2024-01-28: no units sold in the 4-week holdout from 2024-01-01: "
                               "WAPE is undefined, the gate cannot decide")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"window_days": 35}, "ecom_demand_window_days=35 gives 5 whole week(s), 1 before the 4-week holdout; "
                          "training needs at least 5 (a window of at least 63 days)"),
    ({"holdout_days": 10}, "ecom_demand_holdout_days=10: the demand holdout is whole weeks"),
])
def test_bad_settings_are_one_line_naming_the_variable(kwargs, message):
    with pytest.raises(DemandFeatureError) as info:
        DemandParams(day=date(2024, 1, 28), **{"window_days": 364, "holdout_days": 28, **kwargs})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_trainer_parameters_of_another_kind_are_one_line():
    from ecom_ml.demand.model import DemandTrainParams

    with pytest.raises(EcomError) as info:
        DemandTrainParams.from_overrides({"pooling": "mean"})
    assert str(info.value).startswith("the demand model takes no parameter(s) pooling; known: ")
    with pytest.raises(EcomError, match=r"^--holdout-days 10: the demand holdout is whole weeks"):
        DemandTrainParams(holdout_days=10)


def test_the_kind_declares_its_own_setting_defaults(monkeypatch):
    from ecom_ml.training.steps import TrainingSettings

    cfg = TrainingSettings.from_airflow("demand")
    assert (cfg.window_days, cfg.holdout_days, cfg.history_len) == (364, 28, 13)
    rec = TrainingSettings.from_airflow("recommender")
    assert (rec.window_days, rec.holdout_days, rec.history_len) == (90, 7, 20)


def _result(wape: float, coverage: float) -> dict:
    return {"wape": wape, "coverage_p90": coverage, "cost": {"model_bytes": 1000, "p99_ms": 1.0}}


def test_demand_gate_lower_wape_is_better_and_coverage_must_be_in_band():
    from ecom_ml.gate import evaluate_gate

    base = {"moving_average_4w": {"wape": 0.712}, "naive_last_week": {"wape": 0.868}}
    passed = evaluate_gate("demand", _result(0.60, 0.90), None, base)
    assert passed.passed and passed.best_baseline == "moving_average_4w"
    check = next(c for c in passed.checks if c.name == "beats_best_baseline")
    assert check.comparison == "<=" and check.threshold == pytest.approx(0.712 * 0.97)
    assert "(lower is better)" in passed.to_markdown()
    worse = evaluate_gate("demand", _result(0.70, 0.90), None, base)
    assert [c.name for c in worse.failed_checks] == ["beats_best_baseline"]
    padded = evaluate_gate("demand", _result(0.60, 0.97), _result(0.59, 0.9), base)
    assert [c.name for c in padded.failed_checks] == ["band:coverage_p90:max"]
    assert "band:coverage_p90:max 0.9700 > 0.9500" in padded.summary_line()
    short = evaluate_gate("demand", _result(0.60, 0.80), None, base)
    assert [c.name for c in short.failed_checks] == ["band:coverage_p90:min"]
    regressed = evaluate_gate("demand", _result(0.65, 0.90), _result(0.60, 0.9), base)
    assert [c.name for c in regressed.failed_checks] == ["no_regression_vs_champion"]


def test_a_bad_band_is_one_line_naming_the_key(tmp_path):
    from ecom_ml.gate import GateConfig, GateConfigError

    path = tmp_path / "g.yaml"
    path.write_text("model: demand\nprimary_metric: wape\nhigher_is_better: false\nbaseline_margin: 0\n"
                    "champion_tolerance: 0\nslices: {}\nmax_model_bytes: null\nmax_p99_ms: null\n"
                    "bands:\n  coverage_p90: [0.95, 0.85]\n")
    with pytest.raises(GateConfigError) as info:
        GateConfig.load(path)
    assert str(info.value) == (f"gate config {path}: key 'bands.coverage_p90' must be [low, high] with "
                               f"low <= high, got [0.95, 0.85]")


def test_the_trainer_without_features_is_one_line_naming_day_and_lake(tmp_path):
    import subprocess
    import sys

    lake = tmp_path / "lake"
    lake.mkdir()
    done = subprocess.run([sys.executable, "-m", "ecom_ml.train", "--model", "demand", "--features", lake.as_uri(),
                           "--day", "2024-01-01", "--out", (tmp_path / "out").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"ecom-ml train: error: no demand features for 2024-01-01 under {lake.as_uri()}: "
                    f"run the features task first")
    assert not (tmp_path / "out").exists()


def test_weeks_before_the_lakes_first_order_are_missing_history_not_zero_demand():
    from ecom_ml.demand.model import training_examples

    # A 20-week window over a lake whose orders start in week 11.
    params = DemandParams(day=date(2024, 1, 28), window_days=140, holdout_days=28, history_len=3)
    built, _ = build_features(tables(), params)
    panel = Panel.from_tables(params, built)
    assert params.weeks == 20 and panel.first_order_week() == 11  # 2023-11-27 is week 11 of this window
    inputs, targets = training_examples(panel, 3, 4, params.train_weeks, seasonal=False)
    # 16 training weeks: a full 3-week lag window after week 11 leaves no room for 4 targets, so the
    # lag window shrinks to what there is: anchors from 11 + min(3, 16 - 4 - 11) = 12 to 16 - 4 = 12,
    # for the two products sold before week 12.
    assert len(targets) == 2 and targets.tolist() == [[2, 5, 0, 0], [0, 0, 0, 0]]


def test_a_lake_with_less_history_than_the_horizon_is_one_line(tmp_path):
    from ecom_ml import models
    from ecom_ml.demand.features import write_features
    from ecom_ml.lake import Lake

    # A 20-week window, but the lake's orders start 9 weeks before the day: 4 weeks before a 5-week holdout.
    params = DemandParams(day=date(2024, 1, 28), window_days=140, holdout_days=35, history_len=3)
    lake = Lake((tmp_path / "lake").as_uri())
    lake.init()
    write_features(lake, params, *build_features(tables(), params))
    with pytest.raises(EcomError) as info:
        models.get("demand").train(models.TrainRequest(features=lake.root, day=params.day, out=str(tmp_path / "out")))
    assert str(info.value) == ("demand features of 2024-01-28: the lake has orders from 2023-11-27 only, 4 week(s) "
                               "before the 35-day holdout; training needs at least 5 (load more history, or wait)")
    assert not (tmp_path / "out").exists()


def test_a_product_with_one_week_of_history_and_a_week_without_sales_are_forecast_not_dropped(tmp_path):
    """Bad input that loses nothing: product 2 sold in week 0 only (its week-3 line was a negative
    quantity, clipped and counted), week 4 had no order at all; the real trainer learns from the
    lake, and the evaluation forecasts both products, finite, p50 <= p90, non-negative."""
    from ecom_ml import models
    from ecom_ml.demand.features import write_features
    from ecom_ml.lake import Lake

    built, counts = build_features(tables(), PARAMS)
    assert counts["negative_clipped"] == 1 and counts["empty_weeks"] == 6
    panel = Panel.from_tables(PARAMS, built)
    assert panel.closed_days[4] == 7 and panel.units[:, 4].sum() == 0  # a week without any sale
    assert panel.known(5)[1].tolist() == [1, 0, 0, 0, 0]  # one week of history
    lake = Lake((tmp_path / "lake").as_uri())
    lake.init()
    write_features(lake, PARAMS, built, counts)
    kind = models.get("demand")
    done = kind.train(models.TrainRequest(features=lake.root, day=PARAMS.day, out=str(tmp_path / "out"),
                                          params={"epochs": 2, "members": 2}))
    assert done["metrics"]["train_examples"] == 2  # anchor 1 (the only one with 4 target weeks), 2 products
    model = kind.load(done["model_uri"])
    rows = np.arange(2)
    p50, p90 = model.forecast(model_inputs(panel, rows, np.full(2, 5), model.history_len, model.horizon, model.seasonal))
    assert p50.shape == p90.shape == (2, 4)
    assert np.isfinite(p90).all() and (p50 >= 0).all() and (p90 >= p50).all()
    result = evaluate_panel(panel, {"candidate": model}, classical_forecasters=False)
    assert result["products"] == 2 and result["candidate"]["product_weeks"] == 8
    assert result["classical"] == {"skipped": "not asked"}
    # No discounted week in the holdout (mugs at list price): no promotion to estimate.
    assert result["candidate"]["price_response"] == {"product_weeks": 0, "estimated_change": None}


def test_price_response_is_the_forecast_at_the_plan_over_the_forecast_at_the_usual_price():
    from ecom_ml.demand.evaluation import price_response

    built, _ = build_features(tables(), PARAMS)
    panel = Panel.from_tables(PARAMS, built)

    class PriceTaker:
        """Forecasts 10 units a week at the usual price and 10 * price ** -2 at another."""

        horizon, history_len, seasonal = 4, 3, False

        def forecast(self, inputs):
            p50 = 10 * np.exp(-2 * inputs["log_price"].astype(np.float64))
            return p50, p50 * 2

    promoted = np.zeros((2, 4), dtype=bool)
    promoted[0, 0] = True  # product 1, holdout week 5 (sold at list: plan 1)
    flat = price_response(panel, PriceTaker(), np.arange(2), promoted)
    assert flat["estimated_change"] == pytest.approx(0.0) and flat["product_weeks"] == 1
    discounted = Panel(**{**panel.__dict__, "category_price": np.where(np.arange(9) == 5, 0.8, panel.category_price)})
    found = price_response(discounted, PriceTaker(), np.arange(2))  # both products' week 5 at 0.8
    assert found["product_weeks"] == 2 and found["mean_relative_price"] == pytest.approx(0.8)
    assert found["estimated_change"] == pytest.approx(0.8 ** -2 - 1)


def test_weekly_units_count_the_kept_lines_net_of_line_refunds_as_of_the_cutoff():
    """Line refunds: 1 of order 2's 2 units back before the cutoff, 3 of order 6's 7 (a holdout week)
    after it; order 3 refunded in full after the cutoff. Order 4 has no refund rows: its status rules."""
    t = tables()
    items = t["order_items"]
    t["order_items"] = items.append_column("order_item_id", pa.array(range(1, items.num_rows + 1), pa.int64()))
    t["refund_lines"] = pa.table({
        "refund_line_id": pa.array([1, 2, 3], pa.int64()), "order_item_id": pa.array([3, 4, 7], pa.int64()),
        "quantity": pa.array([1, 5, 3], pa.int32()),
        "refunded_at": pa.array([utc(2023, 12, 10), utc(2024, 1, 3), utc(2024, 1, 5)], TS)})
    built, _ = build_features(t, PARAMS)
    panel = Panel.from_tables(PARAMS, built)
    assert panel.units.tolist() == [[3, 1, 0, 0, 0, 4, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0, 0]]
    assert panel.units_at_cutoff[:, :5].tolist() == [[3, 1, 5, 0, 0], [1, 0, 0, 0, 0]]
