"""What the recommender kind contributes to its training DAG (``ecom_ml.training.steps.ModelSteps``):
features from the validated lake (``ecom_ml.features.recommender``), and the evaluation of candidate,
champion and baselines on the time-based holdout those features were built with."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from ecom_ml.errors import EcomError
from ecom_ml.lake import Lake


class RecommenderSteps:
    name = "recommender"

    def build_features(self, lake: Lake, day: date, cfg: Any) -> dict[str, Any]:
        from ecom_ml.features.recommender import build_features, write_features
        from ecom_ml.ingest.current import current_orders, window

        first, last = window(day, cfg.window_days)
        tables = current_orders(lake, first, last)
        if tables["orders"].num_rows == 0:
            raise EcomError(f"no validated orders between {first} and {last} under {lake.root}: run orders_ingest first")
        features = build_features(tables, day, window_days=cfg.window_days, history_len=cfg.history_len,
                                  holdout_days=cfg.holdout_days)
        manifest = write_features(lake, day, features)
        params = manifest.extra[self.name]
        return {"rows": manifest.rows, "window": [first.isoformat(), last.isoformat()],
                "split": {key: params[key] for key in ("window_days", "holdout_days", "history_len",
                                                       "holdout_start")}}

    def _params(self, lake: Lake, day: date) -> Any:
        from ecom_ml.features.recommender import DATASET, FeatureParams
        from ecom_ml.lake import FEATURES

        manifest = lake.manifest(FEATURES, DATASET, day)
        if manifest is None or self.name not in manifest.extra:
            raise EcomError(f"no {self.name} features for {day} under {lake.root}: run the features task first")
        return FeatureParams.from_dict(manifest.extra[self.name])

    def holdout_start(self, lake: Lake, day: date) -> datetime:
        return self._params(lake, day).holdout_start

    def window_days(self, lake: Lake, day: date) -> int:
        return self._params(lake, day).window_days

    def evaluate(self, lake: Lake, day: date, candidate_dir: str, champion_dir: str | None) -> dict[str, Any]:
        """Candidate, champion and baselines on one time-based holdout, plus serving cost; the split
        (holdout days, history length) is the one the features were built with."""
        import numpy as np

        from ecom_ml import models
        from ecom_ml.evaluation import (all_baselines, evaluate, measure_latency, model_size_bytes,
                                        prepare_holdout, single_requests, time_split)
        from ecom_ml.features.recommender import feature_params, read_features

        features = read_features(lake, day)
        params = feature_params(features)
        split = time_split(features["interactions"], day, holdout_days=params.holdout_days)
        holdout = prepare_holdout(split, history_len=params.history_len)
        kind = models.get(self.name)
        candidate = kind.load(candidate_dir)
        contenders = {"candidate": candidate}
        if champion_dir is not None:
            contenders["champion"] = kind.load(champion_dir)
        baselines = all_baselines(split)

        def score(recommender: Any) -> dict[str, Any]:
            return evaluate(recommender, split, history_len=params.history_len, holdout=holdout).to_dict()

        out: dict[str, Any] = {"day": day.isoformat(), "holdout_days": params.holdout_days,
                               "holdout_start": split.cutoff.isoformat(),
                               "baselines": {b.name: score(b) for b in baselines}}
        ids = np.asarray(holdout.customer_ids)[:200]
        histories = holdout.histories[: len(ids)]
        dirs = {"candidate": candidate_dir, "champion": champion_dir}
        for role, model in contenders.items():
            result = score(model)
            result["cost"] = {"model_bytes": model_size_bytes(dirs[role]),
                              **measure_latency(single_requests(model, ids, histories, k=10))}
            out[role] = result
        return out
