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


#: Training settings by name: (default, lowest, highest). Set once, as Airflow Variables
#: ``ecom_<model>_<name>``; the features task stores them in the features manifest, and the trainer
#: and the evaluator read them from there, so they cannot disagree.
SETTING_RANGES: dict[str, tuple[int, int, int]] = {
    "window_days": (90, 2, 3660),
    "holdout_days": (7, 1, 366),
    "history_len": (20, 1, 1000),
}


@dataclass(frozen=True)
class TrainingSettings:
    lake_root: str
    window_days: int = SETTING_RANGES["window_days"][0]
    holdout_days: int = SETTING_RANGES["holdout_days"][0]
    history_len: int = SETTING_RANGES["history_len"][0]

    @classmethod
    def from_airflow(cls, model: str = "recommender") -> TrainingSettings:
        """Lake root as for ingestion; window, holdout and history length from the Variables
        ``ecom_<model>_window_days`` / ``…_holdout_days`` / ``…_history_len`` (defaults: the model
        kind's steps' ``setting_defaults`` where it declares them, else the ones above).

        A value that is not a whole number, is out of range, or leaves no day to train on before the
        holdout is one line naming the Variable.
        """
        from airflow.sdk import Variable

        from ecom_ml import settings

        kind_defaults = getattr(steps_for(model), "setting_defaults", {})

        def number(key: str) -> int:
            _, low, high = SETTING_RANGES[key]
            default = kind_defaults.get(key, SETTING_RANGES[key][0])
            name = f"ecom_{model}_{key}"
            raw = Variable.get(name, default=None)
            if raw in (None, ""):
                return default
            try:
                value = int(str(raw).strip())
            except ValueError:
                raise EcomError(f"Airflow Variable {name}={raw!r} is not a whole number") from None
            if not low <= value <= high:
                raise EcomError(f"Airflow Variable {name}={raw!r} is out of range: must be from {low} to {high}")
            return value

        window, holdout = number("window_days"), number("holdout_days")
        if holdout >= window:
            raise EcomError(f"Airflow Variable ecom_{model}_holdout_days={holdout} must be less than "
                            f"ecom_{model}_window_days={window}: the days before the holdout are what a model "
                            f"trains on")
        return cls(
            lake_root=Variable.get("ecom_lake_root", default=None) or settings.load().lake_root,
            window_days=window,
            holdout_days=holdout,
            history_len=number("history_len"),
        )


class LeakedHoldout(EcomError):
    """A candidate was trained on days that its evaluation holds out; it must never be scored."""


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

    def holdout_start(self, lake: Lake, day: date) -> datetime:
        """Where the evaluation holdout of ``day``'s stored features begins (from their manifest)."""
        ...

    def window_days(self, lake: Lake, day: date) -> int:
        """How many days of validated orders ``day``'s stored features cover (from their manifest)."""
        ...

    def evaluate(self, lake: Lake, day: date, candidate_dir: str, champion_dir: str | None) -> dict[str, Any]: ...

    # -- serving: what the champion gives the shop (``ecom_ml.publishing``, ``ecom_ml.serving``) ----
    #
    # ``predictions`` is optional: a kind without it (one being added) trains, gates and promotes
    # as any other, and its publish step logs that it has nothing to publish and succeeds (see
    # ``publish_champion``). ``serving_signature``, ``input_example`` and ``serve`` make every
    # registered version an MLflow pyfunc model; ``predictions`` should call ``serve`` so the
    # tables and ``mlflow models serve`` answer alike.

    def predictions(self, lake: Lake, day: date, model_dir: str) -> Any:
        """The batch predictions of the model in ``model_dir`` as of ``day`` (from that day's stored
        features), as an ``ecom_ml.publishing.PredictionSet``: the table in schema ``ml``, its
        columns and PostgreSQL types, the rows (pyarrow or pandas), the lookup key. The publisher
        adds ``model_version`` and ``day`` to every row."""
        ...

    def serving_signature(self) -> Any:
        """The pyfunc model's ``mlflow.models.ModelSignature`` (inputs, outputs, params)."""
        ...

    def input_example(self, lake: Lake | None, day: date | None) -> Any:
        """A few rows the pyfunc model accepts (pandas), from ``day``'s features when ``lake`` has
        them, else a minimal valid example."""
        ...

    def serve(self, model: Any, frame: Any, params: dict[str, Any]) -> Any:
        """Answer a pyfunc request: ``model`` is what the kind's loader returned, ``frame`` a pandas
        DataFrame matching ``serving_signature``; returns a pandas DataFrame."""
        ...


def steps_for(model: str) -> ModelSteps:
    """The training-DAG steps of the model kind ``model`` (its ``steps`` in ``ecom_ml.models.REGISTRY``);
    an unknown kind is one line listing the known ones."""
    from ecom_ml import models

    return models.get(model).load_steps()


def run_dir(cfg: TrainingSettings, model: str, day: date, run_id: str) -> str:
    """Where one training run writes its model and reports (under the lake root, any storage)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    return f"{cfg.lake_root.rstrip('/')}/{MODELS_DIR}/{model}/dt={day.isoformat()}/run={safe}"


def build_features(model: str, cfg: TrainingSettings, day: date, run_id: str) -> dict[str, Any]:
    lake = Lake(cfg.lake_root)
    built = steps_for(model).build_features(lake, day, cfg)
    return {"day": day.isoformat(), "features_uri": cfg.lake_root, "out_uri": run_dir(cfg, model, day, run_id), **built}


def _day_text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d") if moment.time() == datetime.min.time() else moment.strftime("%Y-%m-%d %H:%M")


def check_not_leaked(model: str, day: date, trained: dict[str, Any], holdout_start: datetime) -> None:
    """Refuse a candidate whose training data reaches into the holdout it is to be scored on.

    The cutoff is the trainer's own record (``return.json`` ``features.cutoff``: it trained on what
    is strictly before it), so a trainer run with another holdout — a stale Variable, a hand-run
    ``--holdout-days``, a refit on everything — is caught whatever the reason.
    """
    from ecom_ml.models import utc_moment

    cutoff = utc_moment((trained.get("features") or {}).get("cutoff"))
    if cutoff is None:
        raise LeakedHoldout(f"{model} {day}: the candidate's return.json names no training cutoff "
                            f"(features.cutoff), so it cannot be shown not to overlap the holdout")
    if cutoff > holdout_start:
        raise LeakedHoldout(
            f"{model} {day}: the candidate was trained on data up to {_day_text(cutoff)} but the evaluation "
            f"holdout starts {_day_text(holdout_start)}: it has seen the days it would be scored on; "
            f"refusing it (trainer and evaluator must use one holdout_days)")


def champion_overlap(champion_dir: Any, holdout_start: datetime) -> str | None:
    """Why the champion cannot be today's regression reference, or None when it can.

    A champion trained on days of today's holdout (after a rollback, or when an older day is
    re-run or backfilled) would be scored on data it has seen: its figure would flatter it and the
    regression check would block honest candidates.
    """
    from ecom_ml.models import training_cutoff

    cutoff = training_cutoff(champion_dir)
    if cutoff is None:
        return "its training cutoff is not recorded in its model.json, so overlap with the holdout cannot be ruled out"
    if cutoff > holdout_start:
        return (f"it was trained on data up to {_day_text(cutoff)}, which overlaps today's holdout from "
                f"{_day_text(holdout_start)}")
    return None


def reference_champion(model: str, holdout_start: datetime) -> tuple[Any, str | None]:
    """The champion to compare today's candidate with, and why it cannot be the reference (or None).

    An unverified champion — its version has no passing gate record, or its alias was moved outside
    ecom-ml (one REST call to MLflow) — is no reference: a version that failed its gate would lower
    (or a stray one distort) the bar a candidate must clear, and a candidate that beats it would
    still be judged against what nobody approved. It is returned undownloaded with its reason, so the
    gate's regression check reads "n/a" with that reason (as for an overlapping champion) and the
    candidate must beat the baselines on its own; promoting it then restores a verified champion.
    """
    from ecom_ml import registry

    check = registry.verify_champion(model)
    if check.version is None:
        return None, None
    if not check.verified:
        return (registry.champion(model, download=False),
                f"it is not verified ({'; '.join(check.problems)}), so it is not a regression reference")
    try:
        champion = registry.verified_champion(model)
    except registry.UnverifiedChampion as exc:  # moved between the check and the read
        return registry.champion(model, download=False), f"it is not a regression reference ({exc})"
    return champion, champion_overlap(champion.path, holdout_start)


def training_window_drift(lake: Lake, steps: ModelSteps, day: date, champion_dir: Any) -> dict[str, Any]:
    """Drift of the inputs over this run's feature window against the champion's training window.

    The same statistics and thresholds as the daily drift check (``ecom_ml.quality.drift``), over
    whole windows of validated orders: the gate report shows whether the candidate learned from a
    shop that looks like the one the champion learned from. ``{"skipped": reason}`` without a
    champion (nothing to compare with) or when its training day is not recorded.
    """
    from ecom_ml.ingest.current import current_orders, window
    from ecom_ml.models import training_day
    from ecom_ml.quality.drift import window_drift

    if champion_dir is None:
        return {"skipped": "no champion yet: nothing to compare the training window with"}
    champion_day = training_day(champion_dir)
    if champion_day is None:
        return {"skipped": "the champion's model.json records no features day"}
    days = steps.window_days(lake, day)
    reference = current_orders(lake, *window(champion_day, days))
    if reference["orders"].num_rows == 0:
        return {"skipped": f"no validated orders in the champion's window ending {champion_day} under {lake.root}"}
    current = current_orders(lake, *window(day, days))
    drift = window_drift(reference, current)
    return {"champion_window_end": champion_day.isoformat(), "window_end": day.isoformat(),
            "window_days": days, **drift}


def evaluate(model: str, lake_root: str, day: date, trained: dict[str, Any]) -> dict[str, Any]:
    """Score the candidate, the champion (when comparable) and the baselines on the holdout the
    features of ``day`` under ``lake_root`` were built with (no setting is read again here)."""
    from ecom_ml.models import write_text

    lake = Lake(lake_root)
    steps = steps_for(model)
    holdout_start = steps.holdout_start(lake, day)
    check_not_leaked(model, day, trained, holdout_start)
    champion, unusable = reference_champion(model, holdout_start)
    trusted = champion is not None and champion.path is not None
    evaluation = steps.evaluate(lake, day, trained["model_uri"],
                                str(champion.path) if trusted and not unusable else None)
    if champion is not None and not unusable:
        evaluation["champion"]["version"] = champion.version
    elif champion is not None:
        evaluation["champion_unusable"] = {"version": champion.version,
                                           "reason": f"champion v{champion.version}: {unusable}"}
        log.warning("%s %s: champion v%s is not today's regression reference: %s", model, day,
                    champion.version, unusable)
    evaluation["candidate_cutoff"] = (trained.get("features") or {}).get("cutoff")
    if champion is not None and not trusted:
        evaluation["drift"] = {"skipped": f"champion v{champion.version}: {unusable}"}
    else:
        evaluation["drift"] = training_window_drift(lake, steps, day, champion.path if champion is not None else None)
    write_text(f"{trained['out_uri'].rstrip('/')}/evaluation.json", json.dumps(evaluation, indent=2, sort_keys=True))
    return evaluation


def gate_and_register(model: str, day: date, run_id: str, trained: dict[str, Any],
                      evaluation: dict[str, Any], approval_mode: str | None = None) -> dict[str, Any]:
    """Register the candidate with its gate report; raise GateFailed (report attached) when it fails.

    A passed result carries ``approval`` (``ecom_ml.approval.decide``: does a person approve it
    first, and why; ``approval_mode`` is the Variable's override of the gate YAML's mode) and
    ``champion_at_gate``, the champion it was compared with, so that an approval given after the
    champion changed can be refused.
    """
    from ecom_ml import registry
    from ecom_ml.approval import decide
    from ecom_ml.gate import GateConfig, evaluate_gate
    from ecom_ml.models import write_text

    config = GateConfig.load(model)
    # The champion the evaluation compared with (re-scored, or set aside as overlapping the holdout).
    champion_at_gate = (evaluation.get("champion") or evaluation.get("champion_unusable") or {}).get("version")
    report = evaluate_gate(config, evaluation["candidate"], evaluation.get("champion"),
                           evaluation["baselines"],
                           champion_unusable=(evaluation.get("champion_unusable") or {}).get("reason"))
    out = trained["out_uri"].rstrip("/")
    write_text(f"{out}/gate_report.json", report.to_json())
    write_text(f"{out}/gate_report.md", report.to_markdown() + _drift_section(evaluation.get("drift")))
    # Keyed by the Airflow run: a retry after MLflow failed half-way reuses the version (or the run)
    # registered by the failed attempt and completes its gate record, instead of leaving an orphan.
    # What is registered is the model folder packaged as an MLflow pyfunc model (ecom_ml.serving).
    from ecom_ml.serving import packaged

    with packaged(model, trained["model_uri"], lake_root=(trained.get("features") or {}).get("root"),
                  day=day) as package:
        candidate = registry.log_candidate(
            model, run_name=f"{model} {day.isoformat()} {run_id}", params=trained.get("params", {}),
            metrics=evaluation["candidate"], artifacts_dir=package,
            tags={"day": day.isoformat(), "airflow_run_id": run_id, "gate": "passed" if report.passed else "failed"},
            key=f"airflow:{model}/{run_id}",
        )
    # The version carries its complete gate record (report files, verdict tags, digest last) before
    # `promote` may move the alias; promote checks that record itself.
    registry.attach_gate_report(candidate, json.loads(report.to_json()))
    result = {"version": candidate.version, "passed": report.passed, "summary": report.summary_line(),
              "report": f"{out}/gate_report.md", "day": day.isoformat(), "champion_at_gate": champion_at_gate,
              "approval": decide(report.to_dict(), config.approval, evaluation.get("drift"), approval_mode)}
    if not report.passed:
        raise GateFailed(f"{model} {day}: gate failed for version {candidate.version}: {report.summary_line()} "
                         f"(report: {out}/gate_report.md)")
    return result


def _drift_section(drift: dict[str, Any] | None) -> str:
    """The gate report's drift section (the training window against the champion's)."""
    if not drift:
        return ""
    if "skipped" in drift:
        return f"\n## Drift of the training window against the champion's\n\nNot computed: {drift['skipped']}.\n"
    from ecom_ml.quality.drift import render_markdown

    return "\n" + render_markdown(drift)


def promote(model: str, gated: dict[str, Any], run_id: str, approved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Move the champion alias to the gated version. Safe to retry at any point: a retry after MLflow
    failed mid-promotion completes the history event and version tags instead of doing nothing.
    ``approved`` is the approval task's result; a person's approval is named in the reason."""
    from ecom_ml import registry

    by = (approved or {}).get("by")
    approval = f"; approved by {by}" if by and by != "gate" else ""
    registry.promote(model, gated["version"], reason=f"gate passed on {gated['day']}: {gated['summary']}{approval}",
                     actor=f"airflow:train_{model}/{run_id}")
    return {"model": model, "champion": gated["version"], "day": gated["day"]}


class NotPublishable(EcomError):
    """The champion's predictions cannot be published (one line: which version, why); the
    previous predictions stay in place."""


def publish_champion(model: str, *, lake_root: str, orders_url: str, actor: str, reason: str,
                     day: date | None = None, expect_version: int | None = None) -> dict[str, Any]:
    """Publish the verified champion's batch predictions into ``ml.<table>`` of the orders DB.

    ``day``: whose features to predict from; default the day the champion was trained on (its
    ``model.json``), so a rollback republishes the set that version published when it was promoted.
    A kind whose steps have no ``predictions`` yet is skipped with a log line (``{"skipped": ...}``):
    it still trains and promotes, it just gives the shop nothing yet. A champion that is not an
    MLflow pyfunc model (registered before ecom-ml packaged models) is refused with
    :class:`NotPublishable` naming it: what the tables hold must be what ``mlflow models serve``
    would answer for that version.
    """
    from ecom_ml import publishing, registry
    from ecom_ml.models import training_day

    steps = steps_for(model)
    if getattr(steps, "predictions", None) is None:
        log.info("%s: the model kind has no batch predictions (its steps define no `predictions`); "
                 "nothing to publish", model)
        return {"model": model, "skipped": "the model kind defines no batch predictions"}
    champion = registry.verified_champion(model)
    if expect_version is not None and champion.version != expect_version:
        log.warning("%s: the champion is v%s, not v%s (moved since): publishing v%s", model, champion.version,
                    expect_version, champion.version)
    if not champion.pyfunc:
        raise NotPublishable(
            f"{model} v{champion.version} is not an MLflow pyfunc model (registered before ecom-ml packaged "
            f"models for MLflow): its predictions are not published and ml tables keep the previous set; "
            f"promote a version trained since")
    day = day or training_day(champion.path)
    if day is None:
        raise NotPublishable(f"{model} v{champion.version}: its model.json records no features day; "
                             f"name the day to publish predictions for")
    predictions = steps.predictions(Lake(lake_root), day, str(champion.path))
    result = publishing.publish(orders_url, model, champion.version, day, predictions, actor=actor, reason=reason)
    log.info("%s", result.line())
    return result.to_dict()
