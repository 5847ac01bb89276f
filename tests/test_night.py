"""The nightly pipeline as production runs it, through Airflow's real scheduler (no ``dag.test()``).

One night (see ``tests/nightly.py``): the days before are backfilled, the scheduled ``orders_ingest``
run of the last day publishes the ``orders_validated`` Asset, which triggers ``train_recommender``:
features, the trainer as a real subprocess of the task (under Airflow 3's task supervisor, which
denies task code the metadata DB), evaluation, gate and promotion. The test then asks the MLflow
registry whether the ``champion`` alias moved to the version that very run registered.

Three ways the deployable stack runs it:

* ``local``: LocalExecutor, the lake on local disk (``make airflow``);
* ``celery``: a real Celery worker and a Redis broker, the lake on local disk;
* ``celery-s3``: the Celery worker with the lake root *and* MLflow's artifact store on ``s3://``,
  against a local S3 API server (moto's server mode) — the production storage path.
"""

from __future__ import annotations

import uuid

import pytest

from ecom_ml.generator import GeneratorConfig, generate, parse_injections
from nightly import days_ending_yesterday, start_stack

#: 8 generated days of 1,500 orders: enough for the default model to pass its gate with a 2-day holdout
#: (measured on such data: NDCG@10 0.199 against the repeat baseline's 0.179), small enough for CI.
DAYS = 8
ORDERS_PER_DAY = 1500


@pytest.mark.parametrize("flavour", ["local", "celery", "celery-s3"])
def test_a_night_trains_and_promotes_through_the_scheduler(flavour, request, pg_server, scratch_dbs, tmp_path,
                                                           monkeypatch):
    from ecom_ml import registry
    from ecom_ml.db.migrate import migrate
    from ecom_ml.lake import FEATURES, VALIDATED, Lake

    names = scratch_dbs("orders", "airflow", "mlflow")
    orders_url = pg_server.local_url(names["orders"])
    migrate(orders_url)
    days = days_ending_yesterday(DAYS)
    generate(orders_url, GeneratorConfig(start=days[0], days=DAYS, orders_per_day=ORDERS_PER_DAY, seed=3,
                                         customers=None, products=None, injections=parse_injections("")),
             progress=False)
    mlflow_db = pg_server.local_url(names["mlflow"], "postgresql+psycopg2")
    s3 = request.getfixturevalue("s3_server") if flavour == "celery-s3" else {}
    lake_root = "s3://lake/nightly" if s3 else (tmp_path / "lake").as_uri()
    artifacts = "s3://lake/mlflow-artifacts" if s3 else (tmp_path / "mlflow-artifacts").as_uri()
    Lake(lake_root).init()  # lake roots are created on purpose (`ecom-ml lake init`), never by a write
    overrides = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_server.local_url(names["airflow"], "postgresql+psycopg2"),
        "AIRFLOW_CONN_ORDERS_DB": orders_url,
        "ECOM_LAKE_ROOT": lake_root,
        "MLFLOW_TRACKING_URI": mlflow_db,
        "ECOM_MLFLOW_ARTIFACTS": artifacts,
        "ECOM_MODEL_CACHE": str(tmp_path / "model-cache"),
        "ECOM_TASK_RETRIES": "0",
        "ECOM_TRAINING_MODE": "local",
        # One training configuration, set as Variables (the environment form Airflow resolves itself).
        "AIRFLOW_VAR_ECOM_RECOMMENDER_WINDOW_DAYS": str(DAYS),
        "AIRFLOW_VAR_ECOM_RECOMMENDER_HOLDOUT_DAYS": "2",
        **s3,
    }
    queue = None
    if flavour.startswith("celery"):
        queue = f"ecom_night_{uuid.uuid4().hex[:6]}"
        broker = request.getfixturevalue("redis_url")
        overrides.update({
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg_server.local_url(names["airflow"]),
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
        })
    night = start_stack(tmp_path, overrides, celery_queue=queue)
    try:
        run_id = night.run_night(days)
        states = night.task_states("train_recommender", run_id)
        assert states == dict.fromkeys(("features", "train", "evaluate", "gate", "promote"), "success"), (
            states, night.task_log("train_recommender", run_id, "train")[-4000:])
        train_log = night.task_log("train_recommender", run_id, "train")
        queues = {r.queue for r in night.query("SELECT DISTINCT queue FROM task_instance")}
    finally:
        night.stop()

    # The trainer really ran as a subprocess of the task, under the supervisor.
    assert "training recommender locally" in train_log and "trained recommender in" in train_log
    assert "airflow-db-not-allowed" not in train_log
    if queue:
        assert queues == {queue}, "every task went through the test's Celery queue"
        assert "train_recommender" in (night.logs / "celery-worker.log").read_text()

    # The champion is the version this run registered, and its history says the DAG moved it.
    for key, value in overrides.items():
        if key.startswith(("MLFLOW_", "ECOM_MLFLOW", "ECOM_MODEL_CACHE", "AWS_")):
            monkeypatch.setenv(key, value)
    reg = registry.get_registry()
    versions = reg.client.search_model_versions(f"name = 'recommender' and tags.airflow_run_id = '{run_id}'")
    assert len(versions) == 1 and versions[0].tags["gate"] == "passed", versions
    champion = registry.champion("recommender", download=False)
    assert champion is not None and champion.version == int(versions[0].version)
    if s3:
        import boto3

        keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="lake", Prefix="mlflow-artifacts/")
                .get("Contents", [])]
        assert any(k.endswith("/model/ranker.keras") for k in keys), "MLflow's artifacts went to s3://"
        assert any(k.startswith("nightly/models/recommender/") for k in
                   (o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="lake", Prefix="nightly/models/")
                    .get("Contents", []))), "the trainer wrote its model to the s3:// lake"
    moves = registry.history("recommender")
    assert moves[-1]["version"] == champion.version and run_id in moves[-1]["actor"]

    # What the night produced is where it should be: every day validated, the night's features.
    lake = Lake(lake_root)
    assert lake.days(VALIDATED, "orders") == days
    assert lake.days(FEATURES, "recommender") == [days[-1]]
    night.timings["flavour"] = flavour  # type: ignore[assignment]
    print(f"night {flavour}: {night.timings}")
