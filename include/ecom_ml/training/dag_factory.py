"""One function builds every model kind's training DAG: ``features`` → ``train`` → ``evaluate`` →
``gate`` → ``approve`` → ``promote`` → ``publish``.

``publish`` (the champion's batch predictions into ``ml.<table>`` of the orders DB, see
``ecom_ml.publishing``) is a task of this DAG after ``promote`` rather than a DAG scheduled on a
``<model>_champion`` Asset: the night's run then shows, in one grid row, whether the shop got the
new model's output; a failed publish fails *that* run (retried like every task, alerted by the same
failure callback, the previous set left in place) instead of a second DAG whose run nobody
connects to the promotion; and there is no Asset event to lose between two DAGs. A rollback is not a
DAG run: ``ecom-ml rollback`` republishes itself (``ecom_ml.registry``).

``approve`` asks a person only when the gate's approval policy says so (``ecom_ml.approval``,
``ecom_ml.approval_operator``); otherwise it returns at once.

What differs per model kind is declared elsewhere, never here: the kind itself (trainer, loader,
parameters, features and evaluation steps) in ``ecom_ml.models.REGISTRY``, its thresholds in
``ecom_ml/gates/<model>.yaml`` and its settings as the Variables
``ecom_<model>_window_days/_holdout_days/_history_len``. So a new model
kind is its own folder, a registry entry, a gate file and a two-line DAG file; the task ids, the
``day`` param, the schedule on the ``orders_validated`` Asset, the deadline alert, the retries and
the failure alerts are the same for all of them, which is what lets the Models view, the alerts,
the deadline callback and ``ecom-ml rollback/history`` work for every kind without per-model code.

Parse-time cost: only the Airflow SDK, the (import-light) model registry and the task defaults are
imported here; every step imports its heavy modules inside the task.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, Param, dag, task

from ecom_ml.approval_operator import PromotionApproval
from ecom_ml.assets import ORDERS_VALIDATED
from ecom_ml.dag_defaults import default_args
from ecom_ml.deadlines import training_deadlines
from ecom_ml.k8s_training import training_operator

#: Task ids of every training DAG (alerts, the deadline callback and the tests rely on them).
TASK_IDS = ("features", "train", "evaluate", "gate", "approve", "promote", "publish")
START_DATE = pendulum.datetime(2024, 1, 1, tz="UTC")


def dag_id(model: str) -> str:
    return f"train_{model}"


def training_dag(model: str, *, doc_md: str, owner: str = "ml-engineering") -> DAG:
    """The training DAG of the model kind ``model`` (a name in ``ecom_ml.models.REGISTRY``).

    ``doc_md`` is the DAG file's docstring: the page people read in the Airflow UI. An unknown
    model kind fails the DAG file's import with one line listing the known kinds.
    """
    from ecom_ml import models

    kind = models.get(model)

    @dag(
        dag_id=dag_id(kind.name),
        schedule=[ORDERS_VALIDATED],
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        doc_md=doc_md,
        tags=["ecom-ml", "training", kind.name],
        default_args=default_args(owner=owner),
        deadline=training_deadlines(kind.name),
        params={
            "day": Param(None, type=["null", "string"], format="date",
                         description="Train on the data up to this day (default: the triggering day)"),
        },
    )
    def training() -> None:
        name = kind.name

        @task
        def features(params: Any = None, triggering_asset_events: Any = None, data_interval_end: Any = None,
                     run_id: Any = None) -> dict:
            from ecom_ml.training.steps import TrainingSettings, build_features, resolve_day

            events = [event.extra for events in (triggering_asset_events or {}).values() for event in events]
            day = resolve_day((params or {}).get("day"), events, data_interval_end)
            return build_features(name, TrainingSettings.from_airflow(name), day, run_id)

        built = features()
        train = training_operator(
            "train",
            model=name,
            features_uri="{{ ti.xcom_pull(task_ids='features')['features_uri'] }}",
            out_uri="{{ ti.xcom_pull(task_ids='features')['out_uri'] }}",
            extra_args=["--day", "{{ ti.xcom_pull(task_ids='features')['day'] }}"],
            retries=1,
        )
        built >> train

        @task
        def evaluate(built: dict, trained: dict) -> dict:
            from datetime import date

            from ecom_ml.training.steps import evaluate

            return evaluate(name, built["features_uri"], date.fromisoformat(built["day"]),
                            {**trained, "out_uri": built["out_uri"]})

        # A rejected candidate raises AirflowFailException (never retried); anything else (MLflow
        # unreachable) is retried: registration is safe to retry at any point.
        @task
        def gate(built: dict, trained: dict, evaluation: dict, run_id: Any = None) -> dict:
            from datetime import date

            from airflow.sdk import Variable
            from airflow.sdk.exceptions import AirflowFailException

            from ecom_ml.approval import check_mode
            from ecom_ml.training.steps import GateFailed, gate_and_register

            variable = f"ecom_{name}_approval"
            raw = Variable.get(variable, default=None)
            mode = check_mode(raw, f"Airflow Variable {variable}") if raw not in (None, "") else None
            try:
                features = {"root": built["features_uri"], **(trained.get("features") or {})}
                return gate_and_register(name, date.fromisoformat(built["day"]), run_id,
                                         {**trained, "out_uri": built["out_uri"], "features": features}, evaluation,
                                         approval_mode=mode)
            except GateFailed as exc:
                raise AirflowFailException(str(exc)) from None

        @task
        def promote(gated: dict, approved: dict, run_id: Any = None) -> dict:
            from ecom_ml.training.steps import promote

            return promote(name, gated, run_id, approved)

        # The champion's predictions into the orders DB. Retried like any task (publishing is
        # idempotent: it replaces the whole set); a failure leaves the previous set and alerts.
        @task
        def publish(built: dict, promoted: dict, run_id: Any = None) -> dict:
            from datetime import date

            from airflow.sdk import Connection

            from ecom_ml.ingest.tasks import libpq_url
            from ecom_ml.training.steps import publish_champion

            return publish_champion(name, lake_root=built["features_uri"],
                                    orders_url=libpq_url(Connection.get("orders_db")),
                                    actor=f"airflow:train_{name}/{run_id}",
                                    reason=f"promoted v{promoted['champion']} on {promoted['day']}",
                                    day=date.fromisoformat(promoted["day"]), expect_version=promoted["champion"])

        evaluation = evaluate(built, train.output)
        gated = gate(built, train.output, evaluation)
        # A person approves first only when the gate asks (ecom_ml.approval): a Required Action in
        # the UI; a rejection skips promote and publish, no answer in time fails this task (and alerts).
        approve = PromotionApproval(task_id="approve", model=name, retries=0)
        gated >> approve
        publish(built, promote(gated, approve.output))

    return training()
