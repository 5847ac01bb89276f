"""The steps of a model's training DAG: features → (train) → evaluate → gate → promote.

Training itself runs elsewhere (a Kubernetes pod or a local subprocess, see ``ecom_ml.k8s_training``);
these functions run in Airflow tasks around it. What differs per model (how features are built,
how a candidate is scored) sits behind ``ModelSteps``; the gate, the registry and the promotion
are the same for every model, which is what keeps the pipeline from being specific to one of them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from ecom_ml.errors import EcomError
from ecom_ml.lake import Lake

log = logging.getLogger(__name__)

MODELS_DIR = "models"


class GateFailed(EcomError):
    """The candidate did not pass its gate; the report is stored with its model version."""


@dataclass(frozen=True)
class TrainingSettings:
    lake_root: str
    window_days: int = 90
    holdout_days: int = 7
    history_len: int = 20

    @classmethod
    def from_airflow(cls) -> TrainingSettings:
        """Lake root as for ingestion; window and holdout from Variables (`ecom_<model>_window_days`…)."""
        from airflow.sdk import Variable

        from ecom_ml import settings

        def number(name: str, default: int) -> int:
            raw = Variable.get(name, default=None)
            if raw in (None, ""):
                return default
            try:
                value = int(raw)
            except ValueError:
                raise EcomError(f"Airflow Variable {name}={raw!r} is not an integer") from None
            if value < 1:
                raise EcomError(f"Airflow Variable {name}={raw!r} must be at least 1")
            return value

        return cls(
            lake_root=Variable.get("ecom_lake_root", default=None) or settings.load().lake_root,
            window_days=number("ecom_recommender_window_days", 90),
            holdout_days=number("ecom_recommender_holdout_days", 7),
            history_len=number("ecom_recommender_history_len", 20),
        )


def resolve_day(param_day: str | None, asset_events: list[dict[str, Any]], data_interval_end: datetime | None) -> date:
    """Which day's data to train on: the `day` param, else the newest triggering Asset event's day,
    else the day that ended at the run's data interval end (a scheduled or manual run)."""
    if param_day:
        try:
            return date.fromisoformat(str(param_day))
        except ValueError:
            raise EcomError(f"DAG param day={param_day!r} is not a date (YYYY-MM-DD)") from None
    days = [date.fromisoformat(e["day"]) for e in asset_events if isinstance(e, dict) and e.get("day")]
    if days:
        return max(days)
    if data_interval_end is None:
        raise EcomError("cannot tell which day to train on: no `day` param, Asset event or data interval")
    return (data_interval_end - timedelta(microseconds=1)).date()


class ModelSteps(Protocol):
    """What a model kind contributes to its training DAG."""

    name: str

    def build_features(self, lake: Lake, day: date, cfg: TrainingSettings) -> dict[str, Any]: ...

    def evaluate(self, lake: Lake, day: date, cfg: TrainingSettings, candidate_dir: str,
                 champion_dir: str | None) -> dict[str, Any]: ...


class RecommenderSteps:
    name = "recommender"

    def build_features(self, lake: Lake, day: date, cfg: TrainingSettings) -> dict[str, Any]:
        from ecom_ml.features.recommender import build_features, write_features
        from ecom_ml.ingest.current import current_orders, window

        first, last = window(day, cfg.window_days)
        tables = current_orders(lake, first, last)
        if tables["orders"].num_rows == 0:
            raise EcomError(f"no validated orders between {first} and {last} under {lake.root}: run orders_ingest first")
        features = build_features(tables, day, window_days=cfg.window_days, history_len=cfg.history_len)
        manifest = write_features(lake, day, features)
        return {"rows": manifest.rows, "window": [first.isoformat(), last.isoformat()]}

    def evaluate(self, lake: Lake, day: date, cfg: TrainingSettings, candidate_dir: str,
                 champion_dir: str | None) -> dict[str, Any]:
        """Candidate, champion and baselines on one time-based holdout, plus serving cost."""
        import numpy as np

        from ecom_ml import models
        from ecom_ml.evaluation import (all_baselines, evaluate, measure_latency, model_size_bytes,
                                        prepare_holdout, single_requests, time_split)
        from ecom_ml.features.recommender import read_features

        features = read_features(lake, day)
        split = time_split(features["interactions"], day, holdout_days=cfg.holdout_days)
        holdout = prepare_holdout(split, history_len=cfg.history_len)
        kind = models.get(self.name)
        candidate = kind.load(candidate_dir)
        contenders = {"candidate": candidate}
        if champion_dir is not None:
            contenders["champion"] = kind.load(champion_dir)
        baselines = all_baselines(split.train)

        def score(recommender: Any) -> dict[str, Any]:
            return evaluate(recommender, split, history_len=cfg.history_len, holdout=holdout).to_dict()

        out: dict[str, Any] = {"day": day.isoformat(), "holdout_days": cfg.holdout_days,
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


STEPS: dict[str, ModelSteps] = {"recommender": RecommenderSteps()}


def steps_for(model: str) -> ModelSteps:
    try:
        return STEPS[model]
    except KeyError:
        raise EcomError(f"no training steps for model {model!r} (known: {', '.join(sorted(STEPS))})") from None


def run_dir(cfg: TrainingSettings, model: str, day: date, run_id: str) -> str:
    """Where one training run writes its model and reports (under the lake root, any storage)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    return f"{cfg.lake_root.rstrip('/')}/{MODELS_DIR}/{model}/dt={day.isoformat()}/run={safe}"


def build_features(model: str, cfg: TrainingSettings, day: date, run_id: str) -> dict[str, Any]:
    lake = Lake(cfg.lake_root)
    built = steps_for(model).build_features(lake, day, cfg)
    return {"day": day.isoformat(), "features_uri": cfg.lake_root, "out_uri": run_dir(cfg, model, day, run_id), **built}


def evaluate(model: str, cfg: TrainingSettings, day: date, trained: dict[str, Any]) -> dict[str, Any]:
    from ecom_ml import registry
    from ecom_ml.models import write_text

    champion = registry.champion(model)
    evaluation = steps_for(model).evaluate(
        Lake(cfg.lake_root), day, cfg, trained["model_uri"], str(champion.path) if champion else None
    )
    if champion is not None:
        evaluation["champion"]["version"] = champion.version
    write_text(f"{trained['out_uri'].rstrip('/')}/evaluation.json", json.dumps(evaluation, indent=2, sort_keys=True))
    return evaluation


def gate_and_register(model: str, day: date, run_id: str, trained: dict[str, Any],
                      evaluation: dict[str, Any]) -> dict[str, Any]:
    """Register the candidate with its gate report; raise GateFailed (report attached) when it fails."""
    from ecom_ml import registry
    from ecom_ml.gate import GateConfig, evaluate_gate
    from ecom_ml.models import write_text

    report = evaluate_gate(GateConfig.load(model), evaluation["candidate"], evaluation.get("champion"),
                           evaluation["baselines"])
    out = trained["out_uri"].rstrip("/")
    write_text(f"{out}/gate_report.json", report.to_json())
    write_text(f"{out}/gate_report.md", report.to_markdown())
    # Keyed by the Airflow run: a retry after MLflow failed half-way reuses the version (or the run)
    # registered by the failed attempt and completes its gate record, instead of leaving an orphan.
    candidate = registry.log_candidate(
        model, run_name=f"{model} {day.isoformat()} {run_id}", params=trained.get("params", {}),
        metrics=evaluation["candidate"], artifacts_dir=trained["model_uri"],
        tags={"day": day.isoformat(), "airflow_run_id": run_id, "gate": "passed" if report.passed else "failed"},
        key=f"airflow:{model}/{run_id}",
    )
    # The version carries its complete gate record (report files, verdict tags, digest last) before
    # `promote` may move the alias; promote checks that record itself.
    registry.attach_gate_report(candidate, json.loads(report.to_json()))
    result = {"version": candidate.version, "passed": report.passed, "summary": report.summary_line(),
              "report": f"{out}/gate_report.md", "day": day.isoformat()}
    if not report.passed:
        raise GateFailed(f"{model} {day}: gate failed for version {candidate.version}: {report.summary_line()} "
                         f"(report: {out}/gate_report.md)")
    return result


def promote(model: str, gated: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Move the champion alias to the gated version. Safe to retry at any point: a retry after MLflow
    failed mid-promotion completes the history event and version tags instead of doing nothing."""
    from ecom_ml import registry

    registry.promote(model, gated["version"], reason=f"gate passed on {gated['day']}: {gated['summary']}",
                     actor=f"airflow:train_{model}/{run_id}")
    return {"model": model, "champion": gated["version"], "day": gated["day"]}
