"""train_demand end to end on the CPU: generated orders → validated lake → weekly demand features →
the real trainer subprocess (local mode) → evaluation against baselines and champion → gate → promotion.

Real Airflow (`dag.test()`), real PostgreSQL, real MLflow registry (on a throwaway database). The DAG
is the one the factory builds for the recommender too, so the same task ids and param must hold.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest


START = date(2024, 1, 1)
DAYS = 112  # 16 weeks: 12 to train on before the 4-week holdout
LAST = START + timedelta(days=DAYS - 1)
WINDOW = {"AIRFLOW_VAR_ECOM_DEMAND_WINDOW_DAYS": str(DAYS), "AIRFLOW_VAR_ECOM_DEMAND_HISTORY_LEN": "4"}


@pytest.fixture(scope="module")
def pipeline(training_pipeline):
    """A validated lake of 112 generated days and a registry of its own; env for the DAG."""
    return {**training_pipeline(START, DAYS, orders_per_day=150, seed=15), **WINDOW}


def _dags(monkeypatch, env: dict[str, str]):
    from airflow.dag_processing.dagbag import DagBag

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags"))
    assert bag.import_errors == {}
    return bag


def _states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _xcom(run, task_id: str):
    return run.get_task_instance(task_id).xcom_pull(task_ids=task_id)


def test_both_training_dags_come_from_one_factory_with_the_same_shape(monkeypatch):
    from ecom_ml.assets import ORDERS_VALIDATED

    bag = _dags(monkeypatch, {})
    demand, recommender = bag.get_dag("train_demand"), bag.get_dag("train_recommender")
    for dag, model in ((demand, "demand"), (recommender, "recommender")):
        assert set(dag.task_ids) == {"features", "train", "evaluate", "gate", "approve", "promote", "publish"}
        assert set(dag.params) == {"day"}
        assert list(dag.timetable.asset_condition.objects) == [ORDERS_VALIDATED]
        assert model in dag.tags and dag.max_active_runs == 1
        train = dag.get_task("train")
        assert "ecom_ml.train" in train.cmds and train.arguments[:2] == ["--model", model]
        # Registration is retry-safe, so the gate task keeps the DAG's retries (an MLflow outage is
        # retried); a rejected candidate raises AirflowFailException, which is never retried.
        assert dag.get_task("gate").retries == dag.get_task("promote").retries
    assert [t.task_id for t in demand.topological_sort()] == [t.task_id for t in recommender.topological_sort()]


def test_demand_model_beats_the_baselines_and_is_promoted_then_a_leaked_candidate_is_refused(pipeline, monkeypatch, tmp_path):
    import subprocess
    import sys

    from ecom_ml import registry
    from ecom_ml.training.steps import LeakedHoldout, evaluate

    dag = _dags(monkeypatch, pipeline).get_dag("train_demand")
    run = dag.test(run_conf={"day": LAST.isoformat()})
    states = _states(run)
    built, evaluation = _xcom(run, "features"), _xcom(run, "evaluate")
    assert states["evaluate"] == "success", states
    cutoff = datetime.combine(LAST - timedelta(days=27), datetime.min.time(), tzinfo=timezone.utc)
    assert built["split"]["holdout_days"] == 28 and built["split"]["window_days"] == DAYS
    assert datetime.fromisoformat(built["split"]["holdout_start"]) == cutoff
    trained = _xcom(run, "train")
    assert datetime.fromisoformat(trained["features"]["cutoff"]) == cutoff
    # The classical forecasters run where statsforecast is installed; the evaluation says which.
    classical = {"auto_ets", "croston_optimized", "tsb"} if "library" in evaluation["classical"] else set()
    assert set(evaluation["baselines"]) == {"naive_last_week", "moving_average_4w", "moving_average_13w"} | classical
    assert classical or "statsforecast is not installed" in evaluation["classical"]["skipped"]
    candidate = evaluation["candidate"]
    best = min(b["wape"] for b in evaluation["baselines"].values())
    assert candidate["wape"] < best, (candidate["wape"], {k: v["wape"] for k, v in evaluation["baselines"].items()})
    assert 0 < candidate["coverage_p90"] <= 1 and candidate["pinball_p90"] > 0 and candidate["mase"] > 0
    assert {"top100", "rest", "new"} <= set(candidate["slices"])
    assert candidate["cost"]["p99_ms"] > 0 and candidate["cost"]["model_bytes"] > 0
    # The generated holdout has promotions (1-3 days a month, 3 categories at 10-30 % off): the
    # evaluation states the model's estimated change in demand for the discounted product-weeks.
    response = candidate["price_response"]
    assert response["product_weeks"] > 0 and response["mean_relative_price"] < 0.98
    assert response["estimated_change"] == pytest.approx(response["p50_at_plan"] / response["p50_at_usual_price"] - 1)

    out = Path(built["out_uri"].removeprefix("file://"))
    report = json.loads((out / "gate_report.json").read_text())
    names = {c["name"]: c for c in report["checks"]}
    assert names["beats_best_baseline"]["comparison"] == "<="
    assert {"band:coverage_p90:min", "band:coverage_p90:max"} <= set(names)
    assert "(lower is better)" in (out / "gate_report.md").read_text()
    if report["passed"]:
        assert states["promote"] == "success", states
        champion = registry.champion("demand", download=False)
        assert champion is not None and champion.version == _xcom(run, "gate")["version"]
        # Its p50/p90 per product and forecast week are in the orders DB, this version's only.
        assert states["publish"] == "success", states
        import psycopg2

        conn = psycopg2.connect(pipeline["AIRFLOW_CONN_ORDERS_DB"])
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*), count(DISTINCT week_start), min(model_version), max(model_version), "
                        "max(day), bool_and(p90 >= 0 AND p50 >= 0) FROM ml.demand_forecasts")
            rows, weeks, low, high, day, non_negative = cur.fetchone()
        conn.close()
        assert rows == _xcom(run, "publish")["rows"] > 0 and weeks == 4 and day == LAST and non_negative
        assert low == high == champion.version
        # The Models view needs no demand-specific code: the gate says which metric and which way.
        from ecom_ml.ui import models_data

        reg = registry.get_registry()
        assert "demand" in models_data.known_models(reg)
        view = models_data.model_view(reg, "demand")
        assert view.champion.version == champion.version and view.dag_id == "train_demand"
        assert view.primary_metric == "wape" and view.metrics[0] == "wape" and view.higher_is_better is False
        assert view.best_baseline in evaluation["baselines"] and len(view.trend) == 1
        from types import SimpleNamespace

        from ecom_ml.ui import models_html

        links = models_html.Links(url_for=lambda *args, **kwargs: SimpleNamespace(path="/models"))
        html = models_html._model_section(models_data.ModelSection("demand", "train_demand", True, view), links)
        assert '<span data-testid="metric-direction">lower is better</span>' in html
        assert "Metric trend by training day (wape: lower is better)" in html
    else:  # the gate said why; the run fails visibly and nothing is promoted
        assert states["gate"] == "failed" and registry.champion("demand", download=False) is None
        pytest.fail(f"the demand gate rejected the first model: {[c['name'] for c in report['checks'] if not c['passed']]}")

    # The real trainer by hand with a 1-week holdout on features built for 4 weeks: refused unscored.
    leaked = tmp_path / "leaked"
    done = subprocess.run([sys.executable, "-m", "ecom_ml.train", "--model", "demand", "--features",
                           pipeline["ECOM_LAKE_ROOT"], "--day", LAST.isoformat(), "--out", leaked.as_uri(),
                           "--holdout-days", "7", "--epochs", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with pytest.raises(LeakedHoldout) as info:
        evaluate("demand", pipeline["ECOM_LAKE_ROOT"], LAST, {**json.loads((leaked / "return.json").read_text()),
                                                               "out_uri": leaked.as_uri()})
    assert f"holdout starts {cutoff.date().isoformat()}" in str(info.value) and "\n" not in str(info.value)
    assert not (leaked / "evaluation.json").exists()


def test_a_window_shorter_than_the_horizon_is_one_line_naming_the_variable(pipeline, monkeypatch):
    from ecom_ml.errors import EcomError
    from ecom_ml.training.steps import TrainingSettings, build_features

    for key, value in pipeline.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AIRFLOW_VAR_ECOM_DEMAND_WINDOW_DAYS", "35")
    with pytest.raises(EcomError) as info:
        build_features("demand", TrainingSettings.from_airflow("demand"), LAST, "short")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("ecom_demand_window_days=35 gives 5 whole week(s), 1 before the 4-week holdout")
