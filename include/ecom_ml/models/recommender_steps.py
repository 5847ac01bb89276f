"""What the recommender kind contributes to its training DAG (``ecom_ml.training.steps.ModelSteps``):
features from the validated lake (``ecom_ml.features.recommender``), the evaluation of candidate,
champion and baselines on the time-based holdout those features were built with, and serving: the
pyfunc model's signature and ``serve`` (``ecom_ml.serving``) and the batch ``predictions`` published
into ``ml.recommendations`` (``ecom_ml.publishing``), both through the loaded model's public
``recommend`` (``ecom_ml.evaluation.protocol.Recommender``) only."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import numpy as np

from ecom_ml.errors import EcomError
from ecom_ml.lake import Lake


class RecommenderSteps:
    name = "recommender"

    def build_features(self, lake: Lake, day: date, cfg: Any) -> dict[str, Any]:
        from ecom_ml.features.recommender import build_features, write_features
        from ecom_ml.ingest.current import window_orders

        first, last, tables = window_orders(lake, day, cfg.window_days)
        features = build_features(tables, day, window_days=cfg.window_days, history_len=cfg.history_len,
                                  holdout_days=cfg.holdout_days)
        manifest = write_features(lake, day, features)
        params = manifest.extra[self.name]
        return {"rows": manifest.rows, "window": [first.isoformat(), last.isoformat()],
                "split": {key: params[key] for key in ("window_days", "holdout_days", "history_len",
                                                       "holdout_start")}}

    def _params(self, lake: Lake, day: date) -> Any:
        from ecom_ml.features import stored_settings
        from ecom_ml.features.recommender import DATASET, FeatureParams

        return FeatureParams.from_dict(stored_settings(lake, DATASET, day))

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

    # -- serving (ecom_ml.serving, ecom_ml.publishing) ------------------------------------------------

    def batch_inputs(self, lake: Lake, day: date) -> Any:
        """Who gets recommendations as of ``day``, and from what: every active customer (a purchase
        in the window of ``day``'s features, cancellations removed) with their history as of the end
        of ``day`` (product ids, most recent first), the very function evaluation and training use."""
        from datetime import timedelta

        import pandas as pd

        from ecom_ml.features.recommender import (current_purchases, day_start, feature_params, histories_as_of,
                                                  read_features)

        features = read_features(lake, day)
        params = feature_params(features)
        histories = histories_as_of(current_purchases(features["interactions"]), day_start(day + timedelta(days=1)),
                                    params.history_len)
        ids = np.asarray(sorted(histories), dtype=np.int64)
        return pd.DataFrame({"customer_id": ids, "history": histories.lookup(ids)})

    def serving_signature(self) -> Any:
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
        from mlflow.types.schema import Array

        return ModelSignature(
            inputs=Schema([ColSpec("long", "customer_id"), ColSpec(Array("long"), "history")]),
            outputs=Schema([ColSpec("long", "customer_id"), ColSpec("integer", "rank"),
                            ColSpec("long", "product_id"), ColSpec("float", "score")]),
            params=ParamSchema([ParamSpec("k", "long", top_n())]),
        )

    def input_example(self, lake: Lake | None, day: date | None) -> Any:
        import pandas as pd

        if lake is not None and day is not None:
            try:
                frame = self.batch_inputs(lake, day)
                frame = frame[frame["history"].map(len) > 0].head(3)
                if len(frame):
                    return frame.assign(history=frame["history"].map(lambda h: [int(x) for x in h]))
            except EcomError:
                pass
        return pd.DataFrame({"customer_id": [1], "history": [[1]]})

    def serve(self, model: Any, frame: Any, params: dict[str, Any]) -> Any:
        """Top-``k`` per customer as rows (customer_id, rank, product_id, score), best first.

        ``score`` is ``1 / rank``: the recommender protocol returns an ordering, not calibrated
        scores, and a reader that sorts or blends by score gets the model's order."""
        import pandas as pd

        from ecom_ml.evaluation.protocol import recommend_all

        k = int(params.get("k") or top_n())
        if k < 1:
            raise EcomError(f"k={k}: the number of recommendations must be at least 1")
        ids = np.asarray(frame["customer_id"], dtype=np.int64)
        histories = [np.asarray(h if h is not None else [], dtype=np.int64) for h in frame["history"]]
        recommended = recommend_all(model, ids, histories, k)
        ranks = np.tile(np.arange(1, k + 1, dtype=np.int32), len(ids))
        keep = recommended.reshape(-1) != -1
        return pd.DataFrame({"customer_id": np.repeat(ids, k)[keep], "rank": ranks[keep],
                             "product_id": recommended.reshape(-1)[keep],
                             "score": (1.0 / ranks[keep]).astype(np.float32)})

    def predictions(self, lake: Lake, day: date, model_dir: str) -> Any:
        from ecom_ml import models
        from ecom_ml.publishing import PredictionSet

        rows = self.serve(models.get(self.name).load(model_dir), self.batch_inputs(lake, day), {"k": top_n()})
        return PredictionSet(RECOMMENDATIONS_TABLE, RECOMMENDATIONS_COLUMNS, rows.astype({"rank": "int16"}),
                             key=("customer_id", "rank"), description=f"top-{top_n()} recommendations per active customer")


#: ``ml.recommendations``: one row per (active customer, rank).
RECOMMENDATIONS_TABLE = "recommendations"
RECOMMENDATIONS_COLUMNS = {"customer_id": "bigint", "rank": "smallint", "product_id": "bigint", "score": "real"}
DEFAULT_TOP_N = 50


def top_n() -> int:
    """How many recommendations per customer are published: ``ECOM_RECOMMENDER_TOP_N`` (default 50)."""
    import os

    raw = os.environ.get("ECOM_RECOMMENDER_TOP_N", "").strip()
    if not raw:
        return DEFAULT_TOP_N
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise EcomError(f"ECOM_RECOMMENDER_TOP_N={raw!r} must be a whole number from 1 to 1000")
    return int(raw)
