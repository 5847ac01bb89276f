"""What the demand kind contributes to its training DAG (``ecom_ml.training.steps.ModelSteps``):
features from the validated lake, and the evaluation of candidate, champion and baselines on the
last weeks before the run's day."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from ecom_ml.errors import EcomError
from ecom_ml.lake import Lake

#: Defaults of the Variables ``ecom_demand_window_days/_holdout_days/_history_len``: a year of
#: weeks, the 4 forecast weeks held out, 13 weeks (a quarter) of lags.
SETTING_DEFAULTS = {"window_days": 364, "holdout_days": 28, "history_len": 13}
LATENCY_REQUESTS = 200


class DemandSteps:
    name = "demand"
    setting_defaults = SETTING_DEFAULTS

    def build_features(self, lake: Lake, day: date, cfg: Any) -> dict[str, Any]:
        from ecom_ml.demand.features import DemandParams, build_features, write_features
        from ecom_ml.ingest.current import current_orders, window

        params = DemandParams(day=day, window_days=cfg.window_days, holdout_days=cfg.holdout_days,
                              history_len=cfg.history_len)
        first, last = window(day, 7 * params.weeks)
        tables = current_orders(lake, first, last)
        if tables["orders"].num_rows == 0:
            raise EcomError(f"no validated orders between {first} and {last} under {lake.root}: run orders_ingest first")
        features, counts = build_features(tables, params)
        manifest = write_features(lake, params, features, counts)
        doc = params.to_dict()
        return {"rows": manifest.rows, "window": [first.isoformat(), last.isoformat()], "counts": counts,
                "split": {key: doc[key] for key in ("window_days", "holdout_days", "history_len", "holdout_start")}}

    def holdout_start(self, lake: Lake, day: date) -> datetime:
        from ecom_ml.demand.features import stored_params

        return stored_params(lake, day).holdout_start

    def window_days(self, lake: Lake, day: date) -> int:
        from ecom_ml.demand.features import stored_params

        return 7 * stored_params(lake, day).weeks

    def evaluate(self, lake: Lake, day: date, candidate_dir: str, champion_dir: str | None) -> dict[str, Any]:
        from ecom_ml.demand.evaluation import evaluate_panel
        from ecom_ml.demand.features import Panel, read_features
        from ecom_ml.demand.model import load_forecaster
        from ecom_ml.evaluation import measure_latency, model_size_bytes

        params, tables = read_features(lake, day)
        panel = Panel.from_tables(params, tables)
        dirs = {"candidate": candidate_dir, "champion": champion_dir}
        models = {role: load_forecaster(path) for role, path in dirs.items() if path is not None}
        out = evaluate_panel(panel, models)
        out.update(day=day.isoformat(), holdout_days=params.holdout_days,
                   holdout_start=params.holdout_start.isoformat())
        for role, model in models.items():
            out[role]["cost"] = {"model_bytes": model_size_bytes(dirs[role]),
                                 **measure_latency(single_forecasts(model, panel), n=LATENCY_REQUESTS)}
        return out


def single_forecasts(model: Any, panel: Any) -> Any:
    """One product's forecast per call, cycling through the panel's products (for measure_latency)."""
    from itertools import cycle

    import numpy as np

    from ecom_ml.demand.features import model_inputs

    anchor = panel.params.train_weeks
    rows = cycle(range(len(panel.product_ids)))

    def one() -> Any:
        row = np.asarray([next(rows)])
        return model.forecast(model_inputs(panel, row, np.asarray([anchor]), model.history_len, model.horizon,
                                                  model.seasonal))

    return one
