"""What the demand kind contributes to its training DAG (``ecom_ml.training.steps.ModelSteps``):
features from the validated lake, the evaluation of candidate, champion and baselines on the
last weeks before the run's day, and serving: the pyfunc model's ``serve`` (``ecom_ml.serving``) and
the batch forecast of the weeks after the day published into ``ml.demand_forecasts``."""

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
        from ecom_ml.ingest.current import window_orders

        params = DemandParams(day=day, window_days=cfg.window_days, holdout_days=cfg.holdout_days,
                              history_len=cfg.history_len)
        first, last, tables = window_orders(lake, day, 7 * params.weeks)
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

    # -- serving (ecom_ml.serving, ecom_ml.publishing) ------------------------------------------------

    def batch_inputs(self, lake: Lake, day: date, model: Any) -> tuple[Any, Any]:
        """The forecaster's inputs for every product of ``day``'s features, forecasting the weeks
        after the window (the live forecast: all known weeks are history), and the panel."""
        import numpy as np
        import pandas as pd

        from ecom_ml.demand.features import Panel, model_inputs, read_features

        params, tables = read_features(lake, day)
        panel = Panel.from_tables(params, tables)
        rows = np.arange(len(panel.product_ids))
        anchor = params.weeks
        inputs = model_inputs(panel, rows, np.full(len(rows), anchor), model.history_len, model.horizon,
                              model.seasonal)
        frame = pd.DataFrame({"product_id": inputs["product_id"], "category": inputs["category"].astype(str),
                              "scale": inputs["scale"][:, 0].astype(np.float64),
                              "numeric": list(inputs["numeric"].astype(np.float64)),
                              "log_price": list(inputs["log_price"].astype(np.float64))})
        return frame, panel

    def serving_signature(self) -> Any:
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema
        from mlflow.types.schema import Array

        return ModelSignature(
            inputs=Schema([ColSpec("long", "product_id"), ColSpec("string", "category"), ColSpec("double", "scale"),
                           ColSpec(Array("double"), "numeric"), ColSpec(Array("double"), "log_price")]),
            outputs=Schema([ColSpec("long", "product_id"), ColSpec("integer", "horizon_week"),
                            ColSpec("double", "p50"), ColSpec("double", "p90")]),
        )

    def input_example(self, lake: Lake | None, day: date | None) -> Any:
        """A few rows of the forecaster's own inputs (``ecom_ml.demand.features.model_inputs``)."""
        import pandas as pd

        from ecom_ml.demand.features import numeric_width

        if lake is not None and day is not None:
            try:
                from ecom_ml.demand.features import stored_params

                params = stored_params(lake, day)

                class _Shape:  # the input width depends only on these, not on a trained network
                    history_len, horizon, seasonal = params.history_len, params.horizon_weeks, False

                frame, _ = self.batch_inputs(lake, day, _Shape)
                return frame.head(3).assign(numeric=lambda f: f["numeric"].map(list),
                                            log_price=lambda f: f["log_price"].map(list))
            except EcomError:
                pass
        width = numeric_width(13, 4, False)
        return pd.DataFrame({"product_id": [1], "category": ["unknown"], "scale": [1.0], "numeric": [[0.0] * width],
                             "log_price": [[0.0] * 4]})

    def serve(self, model: Any, frame: Any, params: dict[str, Any]) -> Any:
        """p50 and p90 of units per product for each of the model's forecast weeks (1 = next week)."""
        import numpy as np
        import pandas as pd

        numeric = np.stack([np.asarray(v, dtype=np.float32) for v in frame["numeric"]]) if len(frame) else \
            np.zeros((0, 0), dtype=np.float32)
        inputs = {"numeric": numeric, "scale": np.asarray(frame["scale"], dtype=np.float32)[:, None],
                  "category": np.asarray(frame["category"], dtype=object),
                  "product_id": np.asarray(frame["product_id"], dtype=np.int64)}
        if "log_price" in frame:  # the forecast weeks' planned prices (log of price / usual price)
            inputs["log_price"] = (np.stack([np.asarray(v, dtype=np.float32) for v in frame["log_price"]])
                                   if len(frame) else np.zeros((0, model.horizon), dtype=np.float32))
        p50, p90 = model.forecast(inputs)
        horizon = p50.shape[1] if p50.ndim == 2 else 0
        return pd.DataFrame({"product_id": np.repeat(inputs["product_id"], horizon),
                             "horizon_week": np.tile(np.arange(1, horizon + 1, dtype=np.int32), len(frame)),
                             "p50": np.clip(p50.reshape(-1), 0, None), "p90": np.clip(p90.reshape(-1), 0, None)})

    def predictions(self, lake: Lake, day: date, model_dir: str) -> Any:
        """``ml.demand_forecasts``: per product and forecast week, p50 and p90 of units. The weeks are
        the features' 7-day weeks continued past ``day``: the first starts the day after it."""
        import pyarrow as pa

        from ecom_ml.demand.model import load_forecaster
        from ecom_ml.publishing import PredictionSet

        model = load_forecaster(model_dir)
        frame, panel = self.batch_inputs(lake, day, model)
        out = self.serve(model, frame, {})
        starts = [panel.params.week_start(panel.params.weeks + h - 1).date() for h in range(1, model.horizon + 1)]
        week_start = pa.array([starts[h - 1] for h in out["horizon_week"]], pa.date32())
        rows = pa.table({"product_id": pa.array(out["product_id"], pa.int64()), "week_start": week_start,
                         "p50": pa.array(out["p50"], pa.float64()), "p90": pa.array(out["p90"], pa.float64())})
        return PredictionSet(FORECASTS_TABLE, FORECASTS_COLUMNS, rows, key=("product_id", "week_start"),
                             description="weekly demand forecast per product (p50, p90 of units)")


#: ``ml.demand_forecasts``: one row per (product, forecast week).
FORECASTS_TABLE = "demand_forecasts"
FORECASTS_COLUMNS = {"product_id": "bigint", "week_start": "date", "p50": "double precision",
                     "p90": "double precision"}


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
