"""
### train_recommender — nightly candidate, honest evaluation, gated promotion

`features` → `train` → `evaluate` → `gate` → `promote`

Runs whenever `orders_ingest` publishes a validated day (the `orders_validated` Asset), or by hand
for any day (param `day`).

* **features** builds the recommender's features over a trailing window (default 90 days) of the
  validated lake into `lake/features/recommender/dt=…/`.
* **train** runs `python -m ecom_ml.train --model recommender …`: in a GPU pod through
  `KubernetesPodOperator` when `ECOM_TRAINING_MODE=kubernetes`, else as a local subprocess — the
  same command either way.
* **evaluate** scores the candidate, the current champion and the baselines (popularity,
  co-purchase, repeat purchase) on the same time-based holdout, against the full catalogue, with
  slices and CPU serving cost.
* **gate** registers the candidate in MLflow with its gate report (thresholds in
  `include/ecom_ml/gates/recommender.yaml`) and fails the run visibly when a check fails.
* **promote** moves the `champion` alias to the candidate. `ecom-ml rollback` moves it back.

A run that has not reached a gate verdict `ECOM_TRAINING_DEADLINE_HOURS` (default 6) after it was
queued raises a deadline alert (`ecom_ml.deadlines`).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from ecom_ml.assets import ORDERS_VALIDATED
from ecom_ml.dag_defaults import default_args
from ecom_ml.deadlines import training_deadlines
from ecom_ml.k8s_training import training_operator

MODEL = "recommender"


@dag(
    dag_id="train_recommender",
    schedule=[ORDERS_VALIDATED],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ecom-ml", "training", MODEL],
    default_args=default_args(owner="ml-engineering"),
    deadline=training_deadlines(MODEL),
    params={
        "day": Param(None, type=["null", "string"], format="date",
                     description="Train on the data up to this day (default: the triggering day)"),
    },
)
def train_recommender():
    @task
    def features(params=None, triggering_asset_events=None, data_interval_end=None, run_id=None) -> dict:
        from ecom_ml.training.steps import TrainingSettings, build_features, resolve_day

        events = [event.extra for events in (triggering_asset_events or {}).values() for event in events]
        day = resolve_day((params or {}).get("day"), events, data_interval_end)
        return build_features(MODEL, TrainingSettings.from_airflow(MODEL), day, run_id)

    built = features()
    train = training_operator(
        "train",
        model=MODEL,
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

        return evaluate(MODEL, built["features_uri"], date.fromisoformat(built["day"]),
                        {**trained, "out_uri": built["out_uri"]})

    @task(retries=0)
    def gate(built: dict, trained: dict, evaluation: dict, run_id=None) -> dict:
        from datetime import date

        from airflow.sdk.exceptions import AirflowFailException

        from ecom_ml.training.steps import GateFailed, gate_and_register

        try:
            return gate_and_register(MODEL, date.fromisoformat(built["day"]), run_id,
                                     {**trained, "out_uri": built["out_uri"]}, evaluation)
        except GateFailed as exc:
            raise AirflowFailException(str(exc)) from None

    @task
    def promote(gated: dict, run_id=None) -> dict:
        from ecom_ml.training.steps import promote

        return promote(MODEL, gated, run_id)

    evaluation = evaluate(built, train.output)
    promote(gate(built, train.output, evaluation))


train_recommender()
