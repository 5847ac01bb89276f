"""The nightly pipeline as production runs it, through Airflow's real scheduler (no ``dag.test()``).

One night (see ``tests/nightly.py``): the days before are backfilled, the scheduled ``orders_ingest``
run of the last day publishes the ``orders_validated`` Asset, which triggers ``train_recommender``:
features, the trainer as a real subprocess of the task (under Airflow 3's task supervisor, which
denies task code the metadata DB), evaluation, gate, promotion and publishing. The test then asks the
MLflow registry whether the ``champion`` alias moved to the version that very run registered, and
the orders DB whether ``ml.recommendations`` holds that version's top-50 for the night's day; with
the LocalExecutor it also loads the champion with ``mlflow.pyfunc`` and ``ecom-ml serve`` (``mlflow
models serve`` on the verified version) in fresh processes and checks their answers against the
published rows.

Three ways the deployable stack runs it (each an xdist group of its own, so they run side by side):

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
        assert states == dict.fromkeys(("features", "train", "evaluate", "gate", "approve", "promote", "publish"),
                                       "success"), (
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
        assert any(k.endswith("/ranker.keras") for k in keys), "MLflow's artifacts went to s3://"
        assert any(k.startswith("nightly/models/recommender/") for k in
                   (o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="lake", Prefix="nightly/models/")
                    .get("Contents", []))), "the trainer wrote its model to the s3:// lake"
    moves = registry.history("recommender")
    assert moves[-1]["version"] == champion.version and run_id in moves[-1]["actor"]

    # The champion's predictions reached the shop: ml.recommendations holds this version's set for
    # the night's day, nothing else, and the publication log says the night's run put it there.
    rows, low, high, published_day, customers = _query(
        orders_url, "SELECT count(*), min(model_version), max(model_version), max(day), count(DISTINCT customer_id) "
                    "FROM ml.recommendations")
    assert rows > 0 and low == high == champion.version and published_day == days[-1], (rows, low, high, published_day)
    assert rows == customers * 50, "top-50 for every active customer"
    logged = _query(orders_url, "SELECT model_version, row_count, published_by FROM ml.publications "
                                "WHERE table_name = 'recommendations' ORDER BY publication_id DESC LIMIT 1")
    assert logged[0] == champion.version and logged[1] == rows and run_id in logged[2], logged
    if flavour == "local":
        _served_champion_answers_as_published(overrides, lake_root, days[-1], orders_url)

    # What the night produced is where it should be: every day validated, the night's features.
    lake = Lake(lake_root)
    assert lake.days(VALIDATED, "orders") == days
    assert lake.days(FEATURES, "recommender") == [days[-1]]
    night.timings["flavour"] = flavour  # type: ignore[assignment]
    print(f"night {flavour}: {night.timings}")


def _query(url: str, sql: str) -> tuple:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()
    finally:
        conn.close()


def _served_champion_answers_as_published(env: dict[str, str], lake_root: str, day, orders_url: str) -> None:
    """The night's champion, loaded by MLflow's own tools in fresh processes — ``mlflow.pyfunc.load_model``
    and ``mlflow models serve --env-manager local`` answering ``/invocations`` over HTTP — gives the
    rows ml.recommendations holds for the same customers (their inputs from the function the batch
    uses)."""
    import json
    import os
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    import psycopg2

    from ecom_ml.lake import Lake
    from ecom_ml.localhost import free_port
    from ecom_ml.models.recommender_steps import RecommenderSteps

    frame = RecommenderSteps().batch_inputs(Lake(lake_root), day).head(4)
    ids = [int(c) for c in frame["customer_id"]]
    conn = psycopg2.connect(orders_url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT customer_id, rank, product_id FROM ml.recommendations WHERE customer_id = ANY(%s) "
                    "ORDER BY customer_id, rank", (ids,))
        published = [tuple(r) for r in cur.fetchall()]
    conn.close()
    request = {"dataframe_split": {"columns": ["customer_id", "history"],
                                   "data": [[c, [int(p) for p in h]] for c, h in zip(ids, frame["history"])]},
               "params": {"k": 50}}
    include = str(Path(__file__).resolve().parents[1] / "include")
    # `mlflow models serve` starts its HTTP server as a command found on PATH (uvicorn): the venv's
    # bin first, as an activated environment has it (`make test` runs .venv/bin/python unactivated).
    child_env = {**os.environ, **{k: v for k, v in env.items() if k.startswith(("MLFLOW_", "ECOM_"))},
                 "PYTHONPATH": include, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def rows(records: list[dict]) -> list[tuple]:
        return sorted((int(r["customer_id"]), int(r["rank"]), int(r["product_id"])) for r in records)

    # Through `ecom-ml serve`, as the README says: the verified champion's version, never the alias.
    named = subprocess.run([sys.executable, "-m", "ecom_ml.cli", "serve", "--model", "recommender", "--print-uri"],
                           env=child_env, capture_output=True, text=True, timeout=120)
    assert named.returncode == 0, named.stderr[-3000:]
    uri = named.stdout.strip()
    assert uri.startswith("models:/recommender/"), named.stdout
    loaded = subprocess.run(
        [sys.executable, "-c", "import json, sys, mlflow, pandas as pd; r = json.loads(sys.argv[1]); "
         f"m = mlflow.pyfunc.load_model({uri!r}); "
         "df = pd.DataFrame(r['dataframe_split']['data'], columns=r['dataframe_split']['columns']); "
         "print('ANSWER' + m.predict(df, params=r['params']).to_json(orient='records'))", json.dumps(request)],
        env=child_env, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    answer = next(line for line in loaded.stdout.splitlines() if line.startswith("ANSWER"))
    assert rows(json.loads(answer.removeprefix("ANSWER"))) == published

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ecom_ml.cli", "serve", "--model", "recommender",
                               "--host", "127.0.0.1", "--port", str(port)],
                              env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    up, served = False, None
    try:
        deadline = time.monotonic() + 240
        while not up and server.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                up = True
            except OSError:
                time.sleep(1)
        if up:
            call = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(request).encode(),
                                          headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(call, timeout=120) as response:
                served = json.loads(response.read())["predictions"]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
        output = server.communicate(timeout=30)[0].decode(errors="replace")
    assert up, f"mlflow models serve did not come up (exit {server.returncode}): {output[-3000:]}"
    assert rows(served) == published, output[-3000:]
