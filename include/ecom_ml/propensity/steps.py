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
        from ecom_ml.ingest.current import current_orders, window
        from ecom_ml.propensity.features import PropensityParams, build_features, write_features

        params = PropensityParams(day=day, window_days=cfg.window_days, holdout_days=cfg.holdout_days,
                                  history_len=cfg.history_len)
        first, last = window(day, params.window_days)
        tables = current_orders(lake, first, last)
        if tables["orders"].num_rows == 0:
            raise EcomError(f"no validated orders between {first} and {last} under {lake.root}: run orders_ingest first")
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
