"""What the propensity kind contributes to its training DAG (``ecom_ml.training.steps.ModelSteps``):
the window's order lines from the validated lake as features, and the evaluation of candidate,
champion and baselines at the holdout cutoff (30 days before the run's day ends)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from ecom_ml.errors import EcomError
from ecom_ml.lake import Lake

#: Defaults of the Variables ``ecom_propensity_window_days/_holdout_days/_history_len``: a year of
#: orders (rolling training cutoffs every week over it), a 30-day label window (the holdout), 26
#: weeks of behaviour in the sequence.
SETTING_DEFAULTS = {"window_days": 365, "holdout_days": 30, "history_len": 26}
LATENCY_REQUESTS = 200


class PropensitySteps:
    name = "propensity"
    setting_defaults = SETTING_DEFAULTS

    def build_features(self, lake: Lake, day: date, cfg: Any) -> dict[str, Any]:
        from ecom_ml.ingest.current import window_orders
        from ecom_ml.propensity.features import PropensityParams, build_features, write_features

        params = PropensityParams(day=day, window_days=cfg.window_days, holdout_days=cfg.holdout_days,
                                  history_len=cfg.history_len)
        first, last, tables = window_orders(lake, day, params.window_days)
        features, counts = build_features(tables, params)
        manifest = write_features(lake, params, features, counts)
        doc = params.to_dict()
        return {"rows": manifest.rows, "window": [first.isoformat(), last.isoformat()], "counts": counts,
                "split": {key: doc[key] for key in ("window_days", "holdout_days", "history_len", "holdout_start")},
                "training_cutoffs": len(doc["training_cutoffs"])}

    def holdout_start(self, lake: Lake, day: date) -> datetime:
        from ecom_ml.propensity.features import stored_params

        return stored_params(lake, day).holdout_start

    def window_days(self, lake: Lake, day: date) -> int:
        from ecom_ml.propensity.features import stored_params

        return stored_params(lake, day).window_days

    def evaluate(self, lake: Lake, day: date, candidate_dir: str, champion_dir: str | None) -> dict[str, Any]:
        from ecom_ml.evaluation import measure_latency, model_size_bytes
        from ecom_ml.propensity.evaluation import evaluate_holdout
        from ecom_ml.propensity.features import Facts, holdout_examples, read_features
        from ecom_ml.propensity.model import load_model

        params, tables = read_features(lake, day)
        facts = Facts.from_tables(tables)
        dirs = {"candidate": candidate_dir, "champion": champion_dir}
        models = {role: load_model(path) for role, path in dirs.items() if path is not None}
        out = evaluate_holdout(facts, params, models)
        out.update(day=day.isoformat(), holdout_days=params.holdout_days,
                   holdout_start=params.holdout_start.isoformat())
        for role, model in models.items():
            examples = holdout_examples(facts, params, model.history_len)
            out[role]["cost"] = {"model_bytes": model_size_bytes(dirs[role]),
                                 **measure_latency(single_scores(model, examples), n=LATENCY_REQUESTS)}
        return out

    # -- serving (ecom_ml.serving, ecom_ml.publishing) ------------------------------------------------

    def live_examples(self, lake: Lake, day: date, weeks: int) -> Any:
        """Every customer with an order in ``day``'s window, as of the end of ``day``: the scores the
        CRM reads tomorrow (who buys in the next ``holdout_days``). The label part is empty (future)."""
        from ecom_ml.propensity.features import Facts, examples_at, read_features

        params, tables = read_features(lake, day)
        return examples_at(Facts.from_tables(tables), params.end, params.holdout_days, weeks)

    def serving_signature(self) -> Any:
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema
        from mlflow.types.schema import Array

        return ModelSignature(
            inputs=Schema([ColSpec("long", "customer_id"), ColSpec(Array("double"), "sequence"),
                           ColSpec(Array("double"), "static")]),
            outputs=Schema([ColSpec("long", "customer_id"), ColSpec("double", "probability")]),
        )

    def input_example(self, lake: Lake | None, day: date | None) -> Any:
        """A few customers' inputs: ``sequence`` is the weekly behaviour flattened week by week
        (oldest first, the channels of ``ecom_ml.propensity.features.CHANNELS`` in each week),
        ``static`` the RFM and tenure features (``STATIC``)."""
        import pandas as pd

        from ecom_ml.propensity.features import CHANNELS, STATIC, stored_params

        if lake is not None and day is not None:
            try:
                examples = self.live_examples(lake, day, stored_params(lake, day).history_len)
                return _frame(examples).head(3)
            except EcomError:
                pass
        weeks = SETTING_DEFAULTS["history_len"]
        return pd.DataFrame({"customer_id": [1], "sequence": [[0.0] * (weeks * len(CHANNELS))],
                             "static": [[0.0] * len(STATIC)]})

    def serve(self, model: Any, frame: Any, params: dict[str, Any]) -> Any:
        """The calibrated probability of a purchase in the next ``holdout_days`` per customer."""
        import numpy as np
        import pandas as pd

        from ecom_ml.propensity.features import CHANNELS, STATIC, Examples

        n = len(frame)
        weeks = model.history_len
        try:
            sequence = (np.stack([np.asarray(v, dtype=np.float64) for v in frame["sequence"]]).reshape(
                n, weeks, len(CHANNELS)) if n else np.zeros((0, weeks, len(CHANNELS))))
            static = (np.stack([np.asarray(v, dtype=np.float64) for v in frame["static"]]) if n
                      else np.zeros((0, len(STATIC))))
        except ValueError as exc:
            raise EcomError(f"propensity request: each row needs {weeks * len(CHANNELS)} sequence values "
                            f"({weeks} weeks x {len(CHANNELS)} channels) and {len(STATIC)} static values ({exc})") from None
        ids = np.asarray(frame["customer_id"], dtype=np.int64)
        zeros = np.zeros(n)
        examples = Examples(cutoff=datetime.min, customer_ids=ids, sequence=sequence, static=static, label=zeros,
                            new=zeros.astype(bool), spend=zeros, recency_days=zeros, label_purchases=0)
        return pd.DataFrame({"customer_id": ids, "probability": model.predict(examples)})

    def predictions(self, lake: Lake, day: date, model_dir: str) -> Any:
        """``ml.purchase_propensity``: per customer with an order in the window, the probability of a
        purchase in the ``holdout_days`` after ``day``."""
        import pyarrow as pa

        from ecom_ml.propensity.model import load_model
        from ecom_ml.publishing import PredictionSet

        model = load_model(model_dir)
        out = self.serve(model, _frame(self.live_examples(lake, day, model.history_len)), {})
        rows = pa.table({"customer_id": pa.array(out["customer_id"], pa.int64()),
                         "probability": pa.array(out["probability"], pa.float64())})
        return PredictionSet(PROPENSITY_TABLE, PROPENSITY_COLUMNS, rows, key=("customer_id",),
                             description="probability of a purchase in the next days (calibrated)")


#: ``ml.purchase_propensity``: one row per customer.
PROPENSITY_TABLE = "purchase_propensity"
PROPENSITY_COLUMNS = {"customer_id": "bigint", "probability": "double precision"}


def _frame(examples: Any) -> Any:
    """Examples as the pyfunc model's input rows (see ``PropensitySteps.input_example``)."""
    import pandas as pd

    n = len(examples)
    return pd.DataFrame({"customer_id": examples.customer_ids.astype("int64"),
                         "sequence": list(examples.sequence.reshape(n, -1).astype(float)),
                         "static": list(examples.static.astype(float))})


def single_scores(model: Any, examples: Any) -> Any:
    """One customer's probability per call, cycling through the holdout's customers (for measure_latency)."""
    from dataclasses import replace
    from itertools import cycle

    rows = cycle(range(len(examples)))

    def one() -> Any:
        i = next(rows)
        part = replace(examples, customer_ids=examples.customer_ids[i:i + 1], sequence=examples.sequence[i:i + 1],
                       static=examples.static[i:i + 1], label=examples.label[i:i + 1], new=examples.new[i:i + 1],
                       spend=examples.spend[i:i + 1], recency_days=examples.recency_days[i:i + 1])
        return model.predict(part)

    return one
