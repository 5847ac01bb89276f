"""train_recommender end to end on the CPU: generated orders → validated lake → features → the real
trainer subprocess (local mode) → evaluation against champion and baselines → gate → promotion.

Real Airflow (`dag.test()`), real PostgreSQL, real MLflow registry (on a throwaway database).
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from ecom_ml.generator import GeneratorConfig, generate, parse_injections
from ecom_ml.ingest.tasks import IngestConfig, check_quality, extract_to_raw, publish
from ecom_ml.lake import Lake

START = date(2024, 1, 1)
DAYS = 42
LAST = START + timedelta(days=DAYS - 1)


@pytest.fixture(scope="module")
def pipeline(pg_server, scratch_dbs, tmp_path_factory):
    """A validated lake of 42 generated days and a registry of its own; env for the DAG."""
    from ecom_ml.db.migrate import migrate

    names = scratch_dbs("orders", "mlflow")
    orders_url = pg_server.local_url(names["orders"])
    migrate(orders_url)
    generate(orders_url, GeneratorConfig(start=START, days=DAYS, orders_per_day=400, seed=21, customers=None,
                                         products=None, injections=parse_injections("")), progress=False)
    root = tmp_path_factory.mktemp("pipeline")
    lake_root = (root / "lake").as_uri()
    Lake(lake_root).init()  # lake roots are created on purpose, never by a write
    cfg = IngestConfig(lake_root=lake_root, orders_url=orders_url)
    for offset in range(DAYS):
        day = START + timedelta(days=offset)
        begin = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        extract_to_raw(cfg, begin, begin + timedelta(days=1))
        publish(cfg, check_quality(cfg, begin, begin + timedelta(days=1)))
    env = {
        "ECOM_LAKE_ROOT": lake_root,
        "AIRFLOW_CONN_ORDERS_DB": orders_url,
        "MLFLOW_TRACKING_URI": pg_server.local_url(names["mlflow"], "postgresql+psycopg2"),
        "ECOM_MLFLOW_ARTIFACTS": (root / "mlflow-artifacts").as_uri(),
        "ECOM_MODEL_CACHE": str(root / "model-cache"),
        "ECOM_TASK_RETRIES": "0",
        "ECOM_TRAINING_MODE": "local",
    }
    return env


def _dag(monkeypatch, env: dict[str, str]):
    from airflow.dag_processing.dagbag import DagBag

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags"))
    assert bag.import_errors == {}
    return bag.get_dag("train_recommender")


def _states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _xcom(run, task_id: str):
    return run.get_task_instance(task_id).xcom_pull(task_ids=task_id)


def test_first_model_is_promoted_then_a_worse_candidate_is_blocked(pipeline, monkeypatch):
    from ecom_ml import registry

    dag = _dag(monkeypatch, pipeline)
    first = dag.test(run_conf={"day": LAST.isoformat()})
    assert str(first.state) == "success", _states(first)
    evaluation = _xcom(first, "evaluate")
    candidate, baselines = evaluation["candidate"], evaluation["baselines"]
    best_baseline = max(b["ndcg@10"] for b in baselines.values())
    # The signal exists by construction in generated data: the model must beat every baseline.
    assert candidate["ndcg@10"] > best_baseline, (candidate["ndcg@10"], {k: v["ndcg@10"] for k, v in baselines.items()})
    assert set(baselines) == {"popularity_30d", "copurchase_knn20", "repeat"}
    assert candidate["cost"]["p99_ms"] > 0 and candidate["cost"]["model_bytes"] > 0
    gated = _xcom(first, "gate")
    champion = registry.champion("recommender", download=False)
    assert champion is not None and champion.version == gated["version"]
    out = Path(_xcom(first, "features")["out_uri"].removeprefix("file://"))
    report = json.loads((out / "gate_report.json").read_text())
    assert report["passed"] is True
    assert "| check" in (out / "gate_report.md").read_text().lower()

    # A candidate trained on far less history is worse than the champion on the same holdout.
    monkeypatch.setenv("AIRFLOW_VAR_ECOM_RECOMMENDER_WINDOW_DAYS", "9")
    second = dag.test(run_conf={"day": LAST.isoformat()})
    states = _states(second)
    assert states["gate"] == "failed" and states["promote"] == "upstream_failed", states
    assert registry.champion("recommender", download=False).version == champion.version, "the champion must stay"
    out2 = Path(_xcom(second, "features")["out_uri"].removeprefix("file://"))
    blocked = json.loads((out2 / "gate_report.json").read_text())
    assert blocked["passed"] is False
    failed = {c["name"] for c in blocked["checks"] if not c["passed"]}
    assert "no_regression_vs_champion" in failed, failed
    versions = [e for e in registry.history("recommender")]
    assert versions and versions[-1]["version"] == champion.version
